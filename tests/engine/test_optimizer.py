"""SOLVER.OPTIMIZER (d2_anchorfree/engine/optimizer.py): SGD stays detectron2's, AdamW gets
detectron2's parameter groups, its betas / eps / decoupled weight decay from the config (checked
against a hand-computed first step), clipping on top, and bad values are refused by key."""
import pytest
import torch
from torch import nn

from detectron2.solver import build_optimizer as detectron2_build_optimizer

from d2_anchorfree.engine import AnchorFreeTrainer
from d2_anchorfree.engine.optimizer import build_optimizer, check_optimizer_config

from conftest import load_cfg


class TinyNet(nn.Module):
    """A conv (weight + bias) and a BatchNorm: detectron2's groups give them different decays."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.norm = nn.BatchNorm2d(3)


def solver_cfg(**solver):
    cfg = load_cfg("configs/tiny/Base-Tiny.yaml")
    cfg.defrost()
    for key, value in solver.items():
        node = cfg.SOLVER
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_sgd_is_detectron2s_optimizer():
    cfg = solver_cfg(CLIP_GRADIENTS__ENABLED=False)
    net = TinyNet()
    ours, theirs = build_optimizer(cfg, net), detectron2_build_optimizer(cfg, net)
    assert type(ours) is type(theirs) is torch.optim.SGD
    assert [(g["lr"], g["weight_decay"], g["momentum"]) for g in ours.param_groups] == \
        [(g["lr"], g["weight_decay"], g["momentum"]) for g in theirs.param_groups]


def test_adamw_first_step_by_hand():
    """Adam's first step with bias correction moves each weight by lr * g / (|g| + eps)
    (m_hat = g, v_hat = g^2), after the decoupled decay p *= 1 - lr * wd (torch's AdamW order);
    the BatchNorm's weight and bias get SOLVER.WEIGHT_DECAY_NORM (0) instead."""
    lr, wd, eps = 0.002, 0.05, 1e-3
    cfg = solver_cfg(OPTIMIZER="AdamW", BASE_LR=lr, WEIGHT_DECAY=wd, WEIGHT_DECAY_NORM=0.0,
                     MOMENTUM=0.8, ADAMW__BETA2=0.99, ADAMW__EPS=eps, CLIP_GRADIENTS__ENABLED=False)
    torch.manual_seed(0)
    net = TinyNet()
    for p in net.parameters():
        p.grad = torch.randn_like(p) * 1e-3  # about eps: the eps term is visible
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = build_optimizer(cfg, net)
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["betas"] for g in opt.param_groups} == {(0.8, 0.99)}
    opt.step()
    for name, p in net.named_parameters():
        decay = 0.0 if name.startswith("norm.") else wd
        g = p.grad
        expected = before[name] * (1 - lr * decay) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7, msg=name)


def test_trainer_clips_adamw_gradients():
    cfg = solver_cfg(OPTIMIZER="AdamW", CLIP_GRADIENTS__ENABLED=True, CLIP_GRADIENTS__CLIP_TYPE="value",
                     CLIP_GRADIENTS__CLIP_VALUE=1e-4)
    net = TinyNet()
    opt = AnchorFreeTrainer.build_optimizer(cfg, net)
    assert isinstance(opt, torch.optim.AdamW) and type(opt).__name__ == "AdamWWithGradientClip"
    for p in net.parameters():
        p.grad = torch.full_like(p, 5.0)
    opt.step()
    assert all(float(p.grad.abs().max()) <= 1e-4 for p in net.parameters())


def test_trainer_without_clipping_builds_plain_adamw():
    cfg = solver_cfg(OPTIMIZER="AdamW", CLIP_GRADIENTS__ENABLED=False)
    assert type(AnchorFreeTrainer.build_optimizer(cfg, TinyNet())) is torch.optim.AdamW


@pytest.mark.parametrize("key,value,match", [
    ("OPTIMIZER", "Adam", r"SOLVER.OPTIMIZER = 'Adam'.*\['SGD', 'AdamW'\]"),
    ("NESTEROV", True, "SOLVER.NESTEROV = True"),
    ("ADAMW__BETA2", 1.0, "SOLVER.ADAMW.BETA2 = 1.0"),
    ("ADAMW__EPS", 0.0, "SOLVER.ADAMW.EPS = 0.0"),
])
def test_bad_values_name_the_key(key, value, match):
    settings = {"OPTIMIZER": "AdamW", key: value}
    cfg = solver_cfg(**settings)
    with pytest.raises(ValueError, match=match):
        check_optimizer_config(cfg)
    with pytest.raises(ValueError, match=match):
        build_optimizer(cfg, TinyNet())


def test_nesterov_allowed_with_sgd():
    check_optimizer_config(solver_cfg(NESTEROV=True))


def test_trainer_rejects_an_unknown_clip_type_with_adamw():
    cfg = solver_cfg(OPTIMIZER="AdamW", CLIP_GRADIENTS__ENABLED=True, CLIP_GRADIENTS__CLIP_TYPE="full_model")
    with pytest.raises(ValueError, match="SOLVER.CLIP_GRADIENTS.CLIP_TYPE = 'full_model'"):
        AnchorFreeTrainer.build_optimizer(cfg, TinyNet())
