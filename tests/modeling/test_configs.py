"""Every YAML under configs/ builds a model, trains one step (incl. an image with no objects)
with gradients reaching every parameter, and runs one inference, on the CPU."""
import glob
import os

import pytest

from conftest import REPO, load_cfg, slow_unless_tiny, train_step_and_predict

CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def test_configs_are_found():
    assert any("FCOS_R_50_FPN_1x" in c for c in CONFIGS) and any("tiny" in c for c in CONFIGS)


@pytest.mark.parametrize("config_file", slow_unless_tiny(CONFIGS))  # fast tier: the tiny configs
def test_config_trains_one_step_and_predicts(config_file):
    # Small inputs keep R-50 configs fast; COCO-size NUM_CLASSES is kept as configured.
    cfg = load_cfg(config_file, "INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 160)
    train_step_and_predict(cfg)
