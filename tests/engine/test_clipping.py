"""Per-parameter gradient clipping in batched calls (d2_anchorfree/engine/clipping.py) gives the
gradients of detectron2's per-parameter clipper bit for bit, and the trainer's optimizer steps
to the same weights as detectron2's ``build_optimizer``."""
import math

import pytest
import torch

from detectron2.config import CfgNode
from detectron2.solver import build_optimizer
from detectron2.solver.build import _create_gradient_clipper

from d2_anchorfree.engine import AnchorFreeTrainer
from d2_anchorfree.engine.clipping import add_gradient_clipping, clip_gradients_per_parameter

from conftest import load_cfg


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern, so that NaN == NaN."""
    return t.contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


def make_params(seed: int, dtype=torch.float32):
    """Tensors of assorted shapes whose gradients range over 1e-20..1e20 in norm, with an exact
    zero gradient, a missing one, a NaN and an inf."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32, 3, 3), (64,), (1,), (5, 7), (300,), (8, 8, 1, 1), (2, 3, 4), (128, 64, 3, 3)]
    params = []
    for i, shape in enumerate(shapes * 3):
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))
        scale = 10.0 ** float(torch.randint(-20, 21, (1,), generator=g))
        p.grad = torch.randn(shape, generator=g, dtype=dtype) * scale
        params.append(p)
    params[3].grad.zero_()
    params[4].grad = None
    params[5].grad.view(-1)[0] = math.nan
    params[6].grad.view(-1)[-1] = -math.inf
    return params


def clip_cfg(clip_type, value, norm_type=2.0):
    return CfgNode({"ENABLED": True, "CLIP_TYPE": clip_type, "CLIP_VALUE": value, "NORM_TYPE": norm_type})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip_type,value,norm_type", [
    ("norm", 10.0, 2.0), ("norm", 1e-3, 2.0), ("norm", 10.0, 1.0), ("norm", 10.0, 3.0),
    ("norm", 10.0, math.inf), ("value", 0.5, 2.0), ("value", 1e10, 2.0)])
def test_same_gradients_as_detectron2_bit_for_bit(dtype, clip_type, value, norm_type):
    detectron2_clipper = _create_gradient_clipper(clip_cfg(clip_type, value, norm_type))
    for seed in range(4):
        ours, theirs = make_params(seed, dtype), make_params(seed, dtype)
        clip_gradients_per_parameter(ours, clip_type, value, norm_type)
        for p in theirs:
            if p.grad is not None or clip_type == "norm":  # clip_grad_value_ of torch 2.13 fails without a gradient
                detectron2_clipper(p)
        for a, b in zip(ours, theirs):
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                assert torch.equal(bits(a.grad), bits(b.grad))


def test_unknown_clip_type_is_refused():
    with pytest.raises(ValueError, match="CLIP_TYPE = 'full_model'"):
        clip_gradients_per_parameter(make_params(0), "full_model", 1.0)
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        add_gradient_clipping(torch.optim.SGD(make_params(0), lr=0.1), clip_cfg("full_model", 1.0))


def test_trainer_optimizer_steps_like_detectron2():
    """AnchorFreeTrainer.build_optimizer vs detectron2's build_optimizer on the same model: the same
    parameter groups, and the same weights after steps with clipped (large) gradients."""
    cfg = load_cfg("configs/GFL/GFL_tiny_R_18_cpu.yaml", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.1)
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED
    torch.manual_seed(0)
    model = AnchorFreeTrainer.build_model(cfg)
    twin = AnchorFreeTrainer.build_model(cfg)
    twin.load_state_dict(model.state_dict())
    ours, theirs = AnchorFreeTrainer.build_optimizer(cfg, model), build_optimizer(cfg, twin)
    assert type(ours).__name__ == type(theirs).__name__ == "SGDWithGradientClip"
    assert [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in theirs.param_groups]
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn(p.shape, generator=g) * 10
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
