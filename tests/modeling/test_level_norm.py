"""BatchNorm in the heads is per FPN level (``MODEL.DENSE.NORM "BN"``): the convs are shared by the
levels, their statistics are not (detectron2's RetinaNet head, MMDetection's RTMDetSepBNHead)."""
import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec

from d2_anchorfree.layers.level_norm import PerLevelNorm, level_norm
from d2_anchorfree.layers.max_filter import MaxFiltering3D
from d2_anchorfree.modeling.heads.defcn_head import DeFCNHead
from d2_anchorfree.modeling.heads.fcos_head import FCOSHead
from d2_anchorfree.modeling.heads.gfl_head import GFLHead
from d2_anchorfree.modeling.heads.tood_head import TOODHead
from d2_anchorfree.modeling.heads.towers import conv_tower
from d2_anchorfree.modeling.heads.vfnet_head import VFNetHead

SHAPES = [ShapeSpec(channels=32, stride=8), ShapeSpec(channels=32, stride=16), ShapeSpec(channels=32, stride=32)]


def _levels(seed=0):
    """Three levels whose statistics differ a lot (as FPN levels' do): scale 1, 10 and 0.1 around
    means 0, 3 and -1."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 32, 32, 32, generator=g), torch.randn(2, 32, 16, 16, generator=g) * 10 + 3,
            torch.randn(2, 32, 8, 8, generator=g) * 0.1 - 1]


def test_per_level_norm_keeps_each_levels_statistics():
    norm = PerLevelNorm("BN", 32, 3)
    for m in norm.norms:
        m.momentum = None  # cumulative average: after one batch, the running mean is its mean
    feats = _levels()
    for level, x in enumerate(feats):
        norm(x, level)
    for level, x in enumerate(feats):
        torch.testing.assert_close(norm.norms[level].running_mean, x.mean(dim=(0, 2, 3)))
        torch.testing.assert_close(norm.norms[level].running_var, x.var(dim=(0, 2, 3), unbiased=True))


def test_level_norm_is_shared_for_group_norm_and_single_levels():
    assert isinstance(level_norm("GN", 32, 5), nn.GroupNorm)  # no running statistics: shared, as in the papers
    assert isinstance(level_norm("BN", 32, 1), nn.BatchNorm2d)
    assert level_norm("", 32, 5) is None
    per_level = level_norm("BN", 32, 5)
    assert isinstance(per_level, PerLevelNorm) and len(per_level.norms) == 5
    with pytest.raises(ValueError, match="num_levels must be >= 1, got 0"):
        PerLevelNorm("BN", 32, 0)


def test_bn_tower_state_dict_has_one_norm_per_level_gn_keys_unchanged():
    bn = conv_tower(32, 2, "BN", num_levels=2)
    assert sorted(k for k in bn.state_dict() if k.endswith("weight")) == [
        "0.weight", "1.norms.0.weight", "1.norms.1.weight", "3.weight", "4.norms.0.weight", "4.norms.1.weight"]
    gn = conv_tower(32, 2, "GN", num_levels=2)  # the converters' and older checkpoints' keys
    assert sorted(gn.state_dict()) == ["0.weight", "1.bias", "1.weight", "3.weight", "4.bias", "4.weight"]


HEADS = {
    "FCOS": lambda: FCOSHead(input_shape=SHAPES, num_classes=2, num_convs=2, norm="BN"),
    "GFL": lambda: GFLHead(input_shape=SHAPES, num_classes=2, num_convs=2, norm="BN"),
    "VFNet": lambda: VFNetHead(input_shape=SHAPES, num_classes=2, num_convs=2, norm="BN"),
    "TOOD": lambda: TOODHead(input_shape=SHAPES, num_classes=2, num_convs=2, norm="BN"),
    "DeFCN+3DMF": lambda: DeFCNHead(input_shape=SHAPES, num_classes=2, num_convs=2, norm="BN", max_filter=(3, 2)),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_bn_head_evaluates_as_it_trained(name):
    """After one training-mode pass with cumulative BN averages, every BatchNorm's running
    statistics are those of the batch it saw, so the eval-mode outputs equal the training-mode
    ones (up to the unbiased/biased variance factor). One BatchNorm shared by the levels would
    normalize every level at eval time with a mixture of the three levels' statistics, whose
    scales differ by 100x here, and fail this."""
    torch.manual_seed(0)
    head = HEADS[name]()
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    for m in bns:
        m.momentum = None
    with torch.no_grad():
        for m in head.modules():  # spread the predictions out of the init's near-constant values
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.1)
        feats = _levels()
        head.train()
        trained = head(feats)
        head.eval()
        evaluated = head(feats)
    for key in evaluated:
        for level, (a, b) in enumerate(zip(trained[key], evaluated[key])):
            torch.testing.assert_close(b, a, rtol=0.05, atol=0.05 * a.abs().max().item() + 1e-4,
                                       msg=lambda m: f"{name} {key} level {level}: {m}")


def test_max_filter_bn_is_per_level():
    mf = MaxFiltering3D(32, 3, 2, "BN", num_levels=3)
    assert isinstance(mf.norm, PerLevelNorm) and len(mf.norm.norms) == 3
    assert isinstance(MaxFiltering3D(32, 3, 2, "GN", num_levels=3).norm, nn.GroupNorm)
    out = mf(_levels())
    assert [o.shape for o in out] == [x.shape for x in _levels()]
