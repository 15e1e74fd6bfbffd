"""``d2af analyze``: fvcore's counts through the inference graph, checked against a hand count of
the head's tower convolutions, and the command's output and errors."""
import re

import torch

from detectron2.modeling import build_model

from conftest import REPO, load_cfg

from d2_anchorfree.cli import analyze

TINY = "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"


def test_one_more_tower_conv_adds_its_hand_counted_flops():
    # 400x400 is padded to 416x416 (size divisibility 32): levels of 52, 26, 13, 7 and 4 cells a
    # side (strides 8-128). One more 3x3 conv 64 -> 64 in each of the two towers, on every level,
    # no norm: 2 * 64 * 64 * 9 * (52^2 + 26^2 + 13^2 + 7^2 + 4^2) multiply-adds.
    totals = []
    for convs in (2, 3):
        model = build_model(load_cfg(TINY, "MODEL.DENSE.NORM", "", "MODEL.DENSE.NUM_CONVS", convs))
        totals.append(analyze.flop_analysis(model, (400, 400)).total())
    assert totals[1] - totals[0] == 2 * 64 * 64 * 9 * (52 ** 2 + 26 ** 2 + 13 ** 2 + 7 ** 2 + 4 ** 2)


def test_command_prints_parameters_flops_and_activations(capsys):
    argv = ["--config-file", f"{REPO}/{TINY}", "--tasks", "parameter", "flop", "activation", "--size", "256x320",
            "MODEL.DEVICE", "cpu"]
    assert analyze.main(argv) == 0
    out = capsys.readouterr().out
    model = build_model(load_cfg(TINY))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert f"FCOS: {millions:.2f} M parameters" in out
    gflops = float(re.search(r"at 256x320: ([0-9.]+) GFLOPs", out).group(1))
    with torch.no_grad():
        assert abs(gflops - analyze.flop_analysis(model, (256, 320)).total() / 1e9) < 0.01 and gflops > 1
    assert re.search(r"at 256x320: [0-9.]+ M activations", out)


def test_bad_size_is_an_error_naming_it(capsys):
    assert analyze.main(["--config-file", f"{REPO}/{TINY}", "--size", "12"]) == 1
    assert "--size must be HxW with positive integers" in capsys.readouterr().err
