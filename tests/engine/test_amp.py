"""Mixed precision (SOLVER.AMP): one autocast training step of every tiny config gives the fp32
step's losses within a stated tolerance, the losses are computed in float32 under autocast, and
the loss functions return float32 for low-precision inputs. The CUDA variants (float16 with
detectron2's AMPTrainer and its grad scaler; bfloat16 where detectron2's AMPTrainer takes
``precision``) skip on machines without CUDA."""
import contextlib
import glob
import os

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, load_cfg, make_batch

from d2_anchorfree import compat
from d2_anchorfree.modeling.heads.gfl_head import distribution_to_distance
from d2_anchorfree.modeling.geometry import paired_iou
from d2_anchorfree.modeling.losses import focal_loss_with_labels, iou_loss
from d2_anchorfree.modeling.losses.distribution_focal import distribution_focal_loss
from d2_anchorfree.modeling.losses.quality_focal import quality_focal_loss
from d2_anchorfree.modeling.losses.varifocal import varifocal_loss

TINY_CONFIGS = sorted(os.path.relpath(p, REPO)
                      for p in glob.glob(os.path.join(REPO, "configs", "*", "*_tiny_R_18_cpu.yaml")))
# bfloat16 keeps 8 significant bits (relative rounding 2^-9 per op). Measured on one step of
# each tiny config (R-18 + FPN + head in bf16, losses in fp32): at most 0.34% relative on our
# detectors, 1.1% on detectron2's RetinaNet (loss_box_reg, 0.099). Stated bound: 2% relative
# + 0.005 absolute. A loss computed in bf16 end to end is caught by the dtype checks.
CPU_BF16_RTOL, CPU_BF16_ATOL = 0.02, 0.005
# float16 keeps 11 significant bits: tighter.
CUDA_FP16_RTOL, CUDA_FP16_ATOL = 0.03, 0.01

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available (AMP on GPU)")


def one_step_losses(cfg, device: str, dtype=None):
    """Losses of one training forward of ``cfg``'s model (seeded) on ``make_batch``, under
    ``torch.autocast(device, dtype)`` when ``dtype`` is given; also backpropagates.

    Returns:
        (losses dict, dtype of the head's first output tensor, every grad finite).
    """
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    model.train()
    head_dtypes = []
    model.head.register_forward_hook(
        lambda m, i, out: head_dtypes.append(next(t for t in _tensors(out)).dtype))
    autocast = torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with EventStorage(), autocast:
        losses = model(make_batch(128, 160))
    sum(losses.values()).backward()
    grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return losses, head_dtypes[0], grads_finite


def _tensors(out):
    """The tensors of a head output (dicts of per-level lists, nested lists / tuples / named tuples)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)
    elif isinstance(out, (list, tuple)):
        for o in out:
            if o is not None:
                yield from _tensors(o)


def assert_losses_close(ref, amp, rtol, atol):
    assert ref.keys() == amp.keys()
    for name in ref:
        assert amp[name].dtype == torch.float32, f"{name} is {amp[name].dtype} under autocast"
        assert torch.isfinite(amp[name]), (name, amp[name])
        r, a = ref[name].item(), amp[name].item()
        assert abs(a - r) <= atol + rtol * abs(r), f"{name}: fp32 {r:.5f} vs autocast {a:.5f}"


def test_tiny_configs_are_found():
    assert len(TINY_CONFIGS) >= 5, TINY_CONFIGS


@pytest.mark.slow  # bf16 CPU kernels: 5-40 s per config on 2 busy cores
@pytest.mark.parametrize("config_file", TINY_CONFIGS)
def test_cpu_bf16_autocast_step_matches_fp32(config_file):
    cfg = load_cfg(config_file)
    ref, ref_head_dtype, _ = one_step_losses(cfg, "cpu")
    amp, amp_head_dtype, grads_finite = one_step_losses(cfg, "cpu", torch.bfloat16)
    assert ref_head_dtype == torch.float32
    assert amp_head_dtype == torch.bfloat16  # autocast really ran the network in bf16
    assert grads_finite
    assert_losses_close(ref, amp, CPU_BF16_RTOL, CPU_BF16_ATOL)


@requires_cuda
@pytest.mark.parametrize("config_file", TINY_CONFIGS)
def test_cuda_fp16_autocast_step_matches_fp32(config_file):
    cfg = load_cfg(config_file, "MODEL.DEVICE", "cuda")
    ref, _, _ = one_step_losses(cfg, "cuda")
    amp, head_dtype, grads_finite = one_step_losses(cfg, "cuda", torch.float16)
    assert head_dtype == torch.float16 and grads_finite
    assert_losses_close(ref, amp, CUDA_FP16_RTOL, CUDA_FP16_ATOL)


@requires_cuda
@pytest.mark.parametrize("precision", ["float16", pytest.param("bfloat16", marks=pytest.mark.d2main)])
@pytest.mark.parametrize("config_file", TINY_CONFIGS)
def test_cuda_amp_trainer_steps(config_file, precision):
    """detectron2's AMPTrainer (grad scaler) runs two steps of every tiny config on CUDA."""
    if precision == "bfloat16" and not compat.amp_trainer_takes_precision():
        pytest.skip("this detectron2's AMPTrainer autocasts to float16 only (v0.6)")
    from detectron2.engine import AMPTrainer
    from detectron2.solver import build_optimizer

    cfg = load_cfg(config_file, "MODEL.DEVICE", "cuda")
    torch.manual_seed(0)
    model = build_model(cfg)
    batches = iter([make_batch(128, 160, seed=s) for s in range(2)])
    loop = AMPTrainer(model, batches, build_optimizer(cfg, model))
    compat.set_amp_precision(loop, precision)
    with EventStorage() as storage:
        for it in range(2):
            storage.iter = it
            loop.iter = it
            loop.run_step()
    total = storage.history("total_loss").latest()
    assert total == total and abs(total) < float("inf")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_set_amp_precision_rejects_unknown_precision():
    with pytest.raises(ValueError, match="float8"):
        compat.set_amp_precision(object(), "float8")


# --- The loss functions compute in float32 whatever the input dtype (autocast gives bf16/fp16).

def _low(x):
    """``x`` rounded to bfloat16, and that rounded value back in float32 (the exact reference)."""
    low = x.to(torch.bfloat16)
    return low, low.float()


def test_losses_return_float32_for_bfloat16_inputs():
    g = torch.Generator().manual_seed(0)
    logits, logits32 = _low(torch.randn(50, 3, generator=g) * 3)
    labels = torch.randint(0, 4, (50,), generator=g)
    valid = torch.ones(50, dtype=torch.bool)
    targets = torch.rand(50, 3, generator=g) * (torch.rand(50, 3, generator=g) > 0.7)
    dfl_logits, dfl_logits32 = _low(torch.randn(40, 9, generator=g))
    dfl_target = torch.rand(40, generator=g) * 8
    cases = {
        "focal": (focal_loss_with_labels(logits, labels, valid, 0.25, 2.0),
                  focal_loss_with_labels(logits32, labels, valid, 0.25, 2.0)),
        "varifocal": (varifocal_loss(logits, targets), varifocal_loss(logits32, targets)),
        "quality_focal": (quality_focal_loss(logits, targets), quality_focal_loss(logits32, targets)),
        "distribution_focal": (distribution_focal_loss(dfl_logits, dfl_target),
                               distribution_focal_loss(dfl_logits32, dfl_target)),
        "distribution_to_distance": (distribution_to_distance(dfl_logits[:36].reshape(9, 36), 8),
                                     distribution_to_distance(dfl_logits32[:36].reshape(9, 36), 8)),
    }
    for name, (low, ref) in cases.items():
        assert low.dtype == torch.float32, f"{name} returned {low.dtype} for bfloat16 input"
        torch.testing.assert_close(low, ref, rtol=1e-6, atol=1e-6, msg=name)


def test_iou_losses_float32_for_float16_boxes_beyond_float16_range():
    # 300 x 300 px boxes: areas of 90,000 px^2 overflow float16 (max 65,504) if computed in it.
    a = torch.tensor([[0.0, 0.0, 300.0, 300.0]], dtype=torch.float16)
    b = torch.tensor([[0.0, 0.0, 300.0, 150.0]], dtype=torch.float16)
    iou = paired_iou(a, b)
    assert iou.dtype == torch.float32
    torch.testing.assert_close(iou, torch.tensor([0.5]))
    assert torch.isfinite(iou_loss(a, b, "giou"))


def test_losses_under_cpu_autocast_are_float32():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(20, 3, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = torch.nn.functional.linear(logits, torch.eye(3))  # bf16 under autocast
        assert low.dtype == torch.bfloat16
        out = focal_loss_with_labels(low, torch.randint(0, 4, (20,), generator=g),
                                     torch.ones(20, dtype=torch.bool), 0.25, 2.0)
    assert out.dtype == torch.float32
