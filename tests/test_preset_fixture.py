"""Every preset computes exactly what it computed before the composable-detector redesign.

``fixtures/presets_before_redesign.pt`` holds, per case, the losses of one training step and the
eval-mode detections of a fixed batch, recorded by ``fixtures/make_preset_fixture.py`` with the
five hand-written meta-architectures (commit d17675c). The same cases are rebuilt here with the
current code (weights from the key-seeded ``fixture_weights``, so construction order does not
matter) and must match bit for bit.
"""
import os

import pytest
import torch

from conftest import REPO, load_cfg
from fixtures.make_preset_fixture import CASES_OLD, COMMON_OLD, run_case

FIXTURE = os.path.join(REPO, "tests", "fixtures", "presets_before_redesign.pt")

# name -> (config file, overrides in the current keys)
CASES = dict(CASES_OLD)
COMMON = COMMON_OLD
# Loss names of the current code for the recorded ones.
LOSS_NAMES = {}


@pytest.fixture(scope="module")
def recorded():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_preset_matches_pre_redesign_numbers(name, recorded):
    config, overrides = CASES[name]
    got = run_case(load_cfg(config, *COMMON, *overrides))
    want = recorded[name]
    got_losses = {LOSS_NAMES.get(k, k): v for k, v in got["losses"].items()}
    want_losses = {LOSS_NAMES.get(k, k): v for k, v in want["losses"].items()}
    assert sorted(got_losses) == sorted(want_losses)
    for key, value in want_losses.items():
        assert torch.equal(got_losses[key], value), (key, got_losses[key].item(), value.item())
    for got_det, want_det in zip(got["detections"], want["detections"]):
        assert len(want_det["scores"]) > 0
        for field in ("boxes", "scores", "classes"):
            assert torch.equal(got_det[field], want_det[field]), field
