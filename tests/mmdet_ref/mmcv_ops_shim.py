"""A torchvision-backed stand-in for ``mmcv.ops`` (mmcv-lite 2.1.0 ships no compiled ops).

mmdet 3.3.0 imports ``mmcv.ops`` (nms, deformable convs, RoI ops, ...) at import time, and
mmcv-lite's own ``mmcv/ops/__init__.py`` fails on the missing ``mmcv._ext``. :func:`install`
puts this module's replacement into ``sys.modules['mmcv.ops']`` *before* mmdet is imported:

* implemented with torchvision, with mmcv 2.1.0's signatures, defaults and return values
  (read from mmcv/ops/nms.py, deform_conv.py, modulated_deform_conv.py of the mmcv-lite wheel):
  ``nms``, ``batched_nms``, ``deform_conv2d``, ``modulated_deform_conv2d``, ``DeformConv2d``,
  ``DeformConv2dPack`` (registered as ``'DCN'`` in mmengine's root ``MODELS``, as mmcv does),
  ``ModulatedDeformConv2d``, ``ModulatedDeformConv2dPack`` (``'DCNv2'``). Parameter names are
  mmcv's (``weight``, ``bias``, ``conv_offset.weight``/``.bias``), so state dicts of real mmcv
  models load unchanged.
* everything else (``RoIAlign``, ``CornerPool``, ``sigmoid_focal_loss``, ``soft_nms``,
  submodules such as ``mmcv.ops.carafe`` ...) resolves to a placeholder class: importing it works,
  calling or instantiating it raises ``NotImplementedError`` naming the op.

Offset/mask layout (checked against mmcv's kernels, mmcv/ops/csrc/common/cuda/
deform_conv_cuda_kernel.cuh and modulated_deform_conv_cuda_kernel.cuh, whose CPU versions share
the layout): for deform group g and kernel point k = i * kernel_w + j (row-major), offset channel
``g*2*kh*kw + 2k`` is the dy (row) shift and ``... + 2k + 1`` the dx (column) shift; the
modulation mask channel is ``g*kh*kw + k``. A sample at (h, w) is bilinear with zeros outside the
image and 0 when h <= -1, w <= -1, h >= H or w >= W. torchvision.ops.deform_conv2d uses exactly
this layout and sampling (and mmcv itself calls it for its MLU DCN/DCNv2 classes with the same
tensors); ``check_shim.py`` beside this file compares both against a direct loop implementation.
``ModulatedDeformConv2dPack`` splits its ``conv_offset`` output (3*kh*kw*deform_groups channels)
into three chunks: offset = cat(o1, o2), mask = sigmoid(third chunk), as mmcv does.

NMS: mmcv's CPU kernel and torchvision's both sort scores descending (``Tensor.sort``) and drop a
box when IoU > threshold (strictly), so kept indices agree; mmcv's ``offset=1`` (pixel-inclusive
widths) is emulated by adding 1 to x2/y2 (equal up to float rounding; mmdet 3.x never uses it).
mmcv passes the threshold to C++ as float32, torchvision as float64: only an IoU within float32
rounding of the threshold could be decided differently.
"""
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

import torch
import torch.nn as nn
import torchvision
from torch.nn.modules.utils import _pair, _single

__all__ = [
    "install", "nms", "batched_nms", "deform_conv2d", "modulated_deform_conv2d",
    "DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2d", "ModulatedDeformConv2dPack",
]

_SHIM_DOC = "stand-in for mmcv.ops from tests/mmdet_ref/mmcv_ops_shim.py (mmcv-lite has no ops)"


# --------------------------------------------------------------------------------------------
# placeholders
# --------------------------------------------------------------------------------------------
_PLACEHOLDERS = {}


def placeholder(qualname: str) -> type:
    """A class standing for the unavailable op ``qualname`` (e.g. ``'mmcv.ops.RoIAlign'``).

    It can be imported, subclassed and used in ``isinstance``; calling it (as a function or as a
    class) raises ``NotImplementedError`` naming the op. One class per name (cached)."""
    if qualname in _PLACEHOLDERS:
        return _PLACEHOLDERS[qualname]

    def _unavailable(self, *args, **kwargs):
        raise NotImplementedError(
            f"{qualname} is not implemented by the mmcv.ops shim "
            "(tests/mmdet_ref/mmcv_ops_shim.py): mmcv-lite has no compiled ops")

    module, _, name = qualname.rpartition(".")
    cls = type(name, (nn.Module,), {
        "__init__": _unavailable, "__module__": module,
        "__doc__": f"Placeholder for {qualname}: raises NotImplementedError when used."})
    _PLACEHOLDERS[qualname] = cls
    return cls


# --------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------
def nms(boxes, scores, iou_threshold: float = None, offset: int = 0,
        score_threshold: float = 0, max_num: int = -1, *, iou_thr: float = None):
    """mmcv.ops.nms: greedy NMS of ``boxes`` [N, 4] (x1, y1, x2, y2) by ``scores`` [N].

    Boxes with score <= ``score_threshold`` are dropped first when it is > 0; at most
    ``max_num`` indices are kept when it is > 0; ``offset`` 1 means widths are x2 - x1 + 1.
    ``iou_thr`` is mmcv's deprecated alias of ``iou_threshold``. Tensors or numpy arrays in,
    same type out. Returns ``(dets [K, 5] = boxes[keep] with their scores, keep [K])``, keep in
    descending score order, as indices into the inputs."""
    if iou_thr is not None:
        if iou_threshold is not None:
            raise TypeError("nms() got both iou_threshold and its deprecated alias iou_thr")
        warnings.warn("iou_thr is deprecated, use iou_threshold", DeprecationWarning)
        iou_threshold = iou_thr
    if iou_threshold is None:
        raise TypeError("nms() missing required argument 'iou_threshold'")
    is_numpy = not isinstance(boxes, torch.Tensor)
    if is_numpy:
        boxes = torch.from_numpy(boxes)
    if not isinstance(scores, torch.Tensor):
        scores = torch.from_numpy(scores)
    assert boxes.size(1) == 4, f"boxes must be [N, 4], got {tuple(boxes.shape)}"
    assert boxes.size(0) == scores.size(0)
    assert offset in (0, 1)
    with torch.no_grad():  # mmcv's NMSop returns indices without gradient
        candidates = None
        b, s = boxes, scores
        if score_threshold > 0:
            candidates = torch.nonzero(scores > score_threshold, as_tuple=False).squeeze(1)
            b, s = boxes[candidates], scores[candidates]
        if offset == 1:
            b = torch.cat([b[:, :2], b[:, 2:] + 1], dim=1)
        keep = torchvision.ops.nms(b, s, float(iou_threshold))
        if max_num > 0:
            keep = keep[:max_num]
        if candidates is not None:
            keep = candidates[keep]
    dets = torch.cat((boxes[keep], scores[keep].reshape(-1, 1)), dim=1)
    if is_numpy:
        return dets.cpu().numpy(), keep.cpu().numpy()
    return dets, keep


soft_nms = placeholder("mmcv.ops.soft_nms")
_NMS_OPS = {"nms": nms}


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, nms_cfg,
                class_agnostic: bool = False):
    """mmcv.ops.batched_nms: NMS within each ``idxs`` group (class), all groups at once.

    ``nms_cfg`` None: no NMS, everything sorted by descending score. Otherwise a dict with
    ``type`` (default ``'nms'``; a callable is accepted too), ``iou_threshold`` and optionally
    ``class_agnostic`` (overrides the argument), ``split_thr`` (default 10000: with at least
    that many boxes each group is suppressed separately, results sorted by score and cut to
    ``max_num`` when > 0), and other keyword arguments of the nms op. Groups are separated as
    mmcv does: every box shifted by ``idx * (boxes.max() + 1)``, or for rotated [N, 5] boxes
    the centers by ``idx * (max(x, y) + max(w, h) + 1)``.

    Returns ``(dets [K, 5] = (x1, y1, x2, y2, score) or [K, 6] for rotated, keep [K])`` with
    the original (unshifted) boxes, in descending score order."""
    if nms_cfg is None:
        scores, inds = scores.sort(descending=True)
        return torch.cat([boxes[inds], scores[:, None]], -1), inds
    cfg = dict(nms_cfg)
    class_agnostic = cfg.pop("class_agnostic", class_agnostic)
    if boxes.numel() == 0:  # mmcv would fail on boxes.max(); mmdet never calls it so
        return boxes.new_zeros((0, boxes.size(-1) + 1)), idxs.new_zeros((0,), dtype=torch.long)
    if class_agnostic:
        boxes_for_nms = boxes
    elif boxes.size(-1) == 5:
        span = boxes[..., :2].max() + boxes[..., 2:4].max()
        shift = idxs.to(boxes) * (span + torch.tensor(1).to(boxes))
        boxes_for_nms = torch.cat([boxes[..., :2] + shift[:, None], boxes[..., 2:5]], dim=-1)
    else:
        span = boxes.max()
        shift = idxs.to(boxes) * (span + torch.tensor(1).to(boxes))
        boxes_for_nms = boxes + shift[:, None]

    op = cfg.pop("type", "nms")
    if isinstance(op, str):
        if op not in _NMS_OPS:
            raise NotImplementedError(
                f"mmcv.ops.{op} is not implemented by the mmcv.ops shim "
                "(tests/mmdet_ref/mmcv_ops_shim.py); only 'nms' is")
        op = _NMS_OPS[op]
    split_thr = cfg.pop("split_thr", 10000)
    if boxes_for_nms.shape[0] < split_thr:
        dets, keep = op(boxes_for_nms, scores, **cfg)
        boxes = boxes[keep]
        scores = dets[:, -1]
    else:
        max_num = cfg.pop("max_num", -1)
        kept = scores.new_zeros(scores.size(), dtype=torch.bool)
        kept_scores = scores.new_zeros(scores.size())
        for group in torch.unique(idxs):
            members = (idxs == group).nonzero(as_tuple=False).view(-1)
            dets, keep = op(boxes_for_nms[members], scores[members], **cfg)
            kept[members[keep]] = True
            kept_scores[members[keep]] = dets[:, -1]
        keep = kept.nonzero(as_tuple=False).view(-1)
        scores, order = kept_scores[keep].sort(descending=True)
        keep = keep[order]
        boxes = boxes[keep]
        if max_num > 0:
            keep, boxes, scores = keep[:max_num], boxes[:max_num], scores[:max_num]
    return torch.cat([boxes, scores[:, None]], -1), keep


# --------------------------------------------------------------------------------------------
# deformable convolution (functional)
# --------------------------------------------------------------------------------------------
def _check_deform_shapes(x, offset, weight, groups, deform_groups, mask=None):
    """Raise ValueError unless the shapes are those mmcv's kernels accept for these groups."""
    if x.dim() != 4:
        raise ValueError(f"Expected 4D tensor as input, got {x.dim()}D tensor instead.")
    kh, kw = weight.shape[2:]
    if weight.size(1) * groups != x.size(1):
        raise ValueError(f"input has {x.size(1)} channels but weight {tuple(weight.shape)} "
                         f"with groups={groups} expects {weight.size(1) * groups}")
    if x.size(1) % deform_groups:
        raise ValueError(f"{x.size(1)} input channels not divisible by deform_groups "
                         f"{deform_groups}")
    if offset.size(1) != deform_groups * 2 * kh * kw:
        raise ValueError(f"offset has {offset.size(1)} channels, expected deform_groups*2*kh*kw"
                         f" = {deform_groups * 2 * kh * kw}")
    if mask is not None and mask.size(1) != deform_groups * kh * kw:
        raise ValueError(f"mask has {mask.size(1)} channels, expected deform_groups*kh*kw = "
                         f"{deform_groups * kh * kw}")


def deform_conv2d(input, offset, weight, stride=1, padding=0, dilation=1, groups=1,
                  deform_groups=1, bias=False, im2col_step=32):
    """mmcv.ops.deform_conv2d (DCNv1): argument order and names as mmcv's
    ``DeformConv2dFunction.apply``; ``bias`` must be False (as mmcv asserts) and
    ``im2col_step`` is accepted and ignored. Computed by torchvision.ops.deform_conv2d, whose
    offset layout is mmcv's (see the module docstring). Like mmcv, ``input`` is cast to
    ``offset``'s dtype and ``weight`` to ``input``'s."""
    if bias is not False:
        raise AssertionError("Only support bias is False.")
    input = input.type_as(offset)
    weight = weight.type_as(input)
    _check_deform_shapes(input, offset, weight, groups, deform_groups)
    return torchvision.ops.deform_conv2d(input, offset, weight, None, stride=_pair(stride),
                                         padding=_pair(padding), dilation=_pair(dilation))


def modulated_deform_conv2d(input, offset, mask, weight, bias=None, stride=1, padding=0,
                            dilation=1, groups=1, deform_groups=1):
    """mmcv.ops.modulated_deform_conv2d (DCNv2): argument order and names as mmcv's
    ``ModulatedDeformConv2dFunction.apply``; ``mask`` has deform_groups*kh*kw channels (already
    sigmoid-ed by the caller). Computed by torchvision.ops.deform_conv2d with ``mask``. Like
    mmcv, ``input`` is cast to ``offset``'s dtype and weight/bias/mask to ``input``'s."""
    input = input.type_as(offset)
    weight = weight.type_as(input)
    mask = mask.type_as(input)
    if bias is not None:
        bias = bias.type_as(input)
    _check_deform_shapes(input, offset, weight, groups, deform_groups, mask)
    return torchvision.ops.deform_conv2d(input, offset, weight, bias, stride=_pair(stride),
                                         padding=_pair(padding), dilation=_pair(dilation),
                                         mask=mask)


# --------------------------------------------------------------------------------------------
# deformable convolution (modules)
# --------------------------------------------------------------------------------------------
def _deform_groups_arg(deform_groups, deformable_groups, cls_name):
    """mmcv's deprecated ``deformable_groups`` keyword, renamed to ``deform_groups``."""
    if deformable_groups is not None:
        warnings.warn(f"{cls_name}: 'deformable_groups' is deprecated, use 'deform_groups'",
                      DeprecationWarning)
        return deformable_groups
    return deform_groups


def _rename_old_offset_keys(state_dict, prefix, local_metadata):
    """mmcv's Pack classes (``_version`` 2) load checkpoints of version < 2, whose offset conv
    was stored as ``<name>_offset.*`` beside the layer instead of ``<name>.conv_offset.*``."""
    version = local_metadata.get("version", None)
    if version is not None and version >= 2:
        return
    for suffix in ("weight", "bias"):
        old, new = prefix[:-1] + "_offset." + suffix, prefix + "conv_offset." + suffix
        if new not in state_dict and old in state_dict:
            state_dict[new] = state_dict.pop(old)


class DeformConv2d(nn.Module):
    """mmcv.ops.DeformConv2d: DCNv1 layer with only a ``weight`` [out, in/groups, kh, kw]
    (mmcv supports no bias); ``forward(x, offset)``. Constructor arguments as mmcv's:
    (in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
    deform_groups=1, bias=False, im2col_step=32)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, deform_groups=1, bias=False, im2col_step=32,
                 deformable_groups=None):
        """Same arguments and checks as mmcv; ``weight`` gets kaiming-uniform (relu) init."""
        super().__init__()
        assert not bias, f"bias={bias} is not supported in DeformConv2d."
        assert in_channels % groups == 0, \
            f"in_channels {in_channels} cannot be divisible by groups {groups}"
        assert out_channels % groups == 0, \
            f"out_channels {out_channels} cannot be divisible by groups {groups}"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = _deform_groups_arg(deform_groups, deformable_groups,
                                                type(self).__name__)
        self.im2col_step = im2col_step
        self.transposed = False  # nn.Conv2d look-alike attributes, as mmcv sets them
        self.output_padding = _single(0)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.reset_parameters()

    def reset_parameters(self):
        """kaiming-uniform (nonlinearity='relu') initialization of ``weight``, as mmcv."""
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x, offset):
        """Deformable convolution of ``x`` with ``offset`` [B, deform_groups*2*kh*kw, Ho, Wo];
        an input smaller than the kernel is zero-padded at the bottom/right and the output
        cropped back, as mmcv does."""
        pad_h = max(self.kernel_size[0] - x.size(2), 0)
        pad_w = max(self.kernel_size[1] - x.size(3), 0)
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h)).contiguous()
            offset = nn.functional.pad(offset, (0, pad_w, 0, pad_h)).contiguous()
        out = deform_conv2d(x, offset, self.weight, self.stride, self.padding, self.dilation,
                            self.groups, self.deform_groups, False, self.im2col_step)
        if pad_h or pad_w:
            out = out[:, :, :out.size(2) - pad_h, :out.size(3) - pad_w].contiguous()
        return out

    def extra_repr(self):
        """Layer hyper-parameters for ``repr``."""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, deform_groups={self.deform_groups}, bias=False")


class DeformConv2dPack(DeformConv2d):
    """mmcv.ops.DeformConv2dPack (registered as ``'DCN'``): a DeformConv2d that predicts its own
    offsets with ``conv_offset`` (nn.Conv2d, same kernel/stride/padding/dilation,
    deform_groups*2*kh*kw outputs, bias, zero-initialized); ``forward(x)``."""

    _version = 2

    def __init__(self, *args, **kwargs):
        """Arguments of :class:`DeformConv2d`."""
        super().__init__(*args, **kwargs)
        self.conv_offset = nn.Conv2d(
            self.in_channels, self.deform_groups * 2 * self.kernel_size[0] * self.kernel_size[1],
            kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, bias=True)
        self.init_offset()

    def init_offset(self):
        """Zero offsets at start (a plain convolution), as mmcv."""
        self.conv_offset.weight.data.zero_()
        self.conv_offset.bias.data.zero_()

    def forward(self, x):
        """Deformable convolution of ``x`` with offsets ``conv_offset(x)``."""
        return deform_conv2d(x, self.conv_offset(x), self.weight, self.stride, self.padding,
                             self.dilation, self.groups, self.deform_groups, False,
                             self.im2col_step)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        _rename_old_offset_keys(state_dict, prefix, local_metadata)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class ModulatedDeformConv2d(nn.Module):
    """mmcv.ops.ModulatedDeformConv2d: DCNv2 layer with ``weight`` and optional ``bias``;
    ``forward(x, offset, mask)``. Constructor arguments as mmcv's: (in_channels, out_channels,
    kernel_size, stride=1, padding=0, dilation=1, groups=1, deform_groups=1, bias=True)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, deform_groups=1, bias=True, deformable_groups=None):
        """Same arguments as mmcv; any truthy ``bias`` (also ``'auto'``) creates a bias."""
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = _deform_groups_arg(deform_groups, deformable_groups,
                                                type(self).__name__)
        self.transposed = False
        self.output_padding = _single(0)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.init_weights()

    def init_weights(self):
        """Uniform(+-1/sqrt(fan_in)) weight, zero bias, as mmcv."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = fan_in ** -0.5
        self.weight.data.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.data.zero_()

    def forward(self, x, offset, mask):
        """Modulated deformable convolution of ``x`` with given ``offset`` and ``mask``."""
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride,
                                       self.padding, self.dilation, self.groups,
                                       self.deform_groups)

    def extra_repr(self):
        """Layer hyper-parameters for ``repr``."""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, deform_groups={self.deform_groups}, "
                f"bias={self.bias is not None}")


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    """mmcv.ops.ModulatedDeformConv2dPack (registered as ``'DCNv2'``): predicts offsets and mask
    with ``conv_offset`` (deform_groups*3*kh*kw outputs, zero-initialized), split into three
    equal chunks o1, o2, m: offset = cat(o1, o2), mask = sigmoid(m); ``forward(x)``."""

    _version = 2

    def __init__(self, *args, **kwargs):
        """Arguments of :class:`ModulatedDeformConv2d`."""
        super().__init__(*args, **kwargs)
        self.conv_offset = nn.Conv2d(
            self.in_channels, self.deform_groups * 3 * self.kernel_size[0] * self.kernel_size[1],
            kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, bias=True)
        self.init_weights()

    def init_weights(self):
        """Layer init as :class:`ModulatedDeformConv2d`, zero ``conv_offset`` (as mmcv)."""
        super().init_weights()
        if hasattr(self, "conv_offset"):
            self.conv_offset.weight.data.zero_()
            self.conv_offset.bias.data.zero_()

    def forward(self, x):
        """DCNv2 of ``x`` with offsets and mask predicted by ``conv_offset(x)``."""
        o1, o2, m = torch.chunk(self.conv_offset(x), 3, dim=1)
        return modulated_deform_conv2d(x, torch.cat((o1, o2), dim=1), torch.sigmoid(m),
                                       self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, self.groups, self.deform_groups)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        _rename_old_offset_keys(state_dict, prefix, local_metadata)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


# --------------------------------------------------------------------------------------------
# installation
# --------------------------------------------------------------------------------------------
_IMPLEMENTED = {
    "nms": nms, "batched_nms": batched_nms, "soft_nms": soft_nms,
    "deform_conv2d": deform_conv2d, "modulated_deform_conv2d": modulated_deform_conv2d,
    "DeformConv2d": DeformConv2d, "DeformConv2dPack": DeformConv2dPack,
    "ModulatedDeformConv2d": ModulatedDeformConv2d,
    "ModulatedDeformConv2dPack": ModulatedDeformConv2dPack,
}
# mmcv's submodules whose names mmdet imports from; the rest get placeholders only
_SUBMODULES = {
    "nms": ("nms", "batched_nms", "soft_nms"),
    "deform_conv": ("deform_conv2d", "DeformConv2d", "DeformConv2dPack"),
    "modulated_deform_conv": ("modulated_deform_conv2d", "ModulatedDeformConv2d",
                              "ModulatedDeformConv2dPack"),
}
# names that real mmcv.ops registers in mmengine's MODELS besides DCN/DCNv2
_REGISTERED_PLACEHOLDERS = ("MMSyncBN", "carafe", "SAC", "CrissCrossAttention",
                            "MultiScaleDeformableAttention")


def _make_module(name: str, attrs: dict, package: bool) -> types.ModuleType:
    """A module ``name`` holding ``attrs``; any other public attribute is a placeholder."""
    module = types.ModuleType(name, _SHIM_DOC)
    module.__dict__.update(attrs)
    module.__file__ = __file__
    if package:
        module.__path__ = []  # a package, so that "import mmcv.ops.x" reaches the finder

    def __getattr__(attr):
        if attr.startswith("_"):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        value = placeholder(f"{name}.{attr}")
        setattr(module, attr, value)
        return value

    module.__getattr__ = __getattr__
    return module


class _SubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``mmcv.ops.<anything>`` as a placeholder module (``mmcv.ops.carafe`` ...)."""

    def find_spec(self, fullname, path=None, target=None):
        """A spec for any ``mmcv.ops.*`` submodule, None for everything else."""
        if fullname.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        """The placeholder module itself."""
        return _make_module(spec.name, {}, package=False)

    def exec_module(self, module):
        """Nothing to run."""


def install() -> types.ModuleType:
    """Put the shim into ``sys.modules['mmcv.ops']`` (and its submodules ``nms``,
    ``deform_conv``, ``modulated_deform_conv``; other ``mmcv.ops.*`` resolve to placeholder
    modules) and register ``DCN``/``DCNv2`` in mmengine's MODELS. Call it before importing
    mmdet. Idempotent; returns the ``mmcv.ops`` module."""
    current = sys.modules.get("mmcv.ops")
    if current is not None and getattr(current, "__doc__", None) == _SHIM_DOC:
        return current
    if current is not None:
        raise RuntimeError("a real mmcv.ops is already imported; install() is for mmcv-lite")
    if "mmdet.models" in sys.modules:
        raise RuntimeError("install() must run before mmdet.models is imported")
    import mmcv
    from mmengine.registry import MODELS

    ops = _make_module("mmcv.ops", dict(_IMPLEMENTED), package=True)
    for sub, names in _SUBMODULES.items():
        module = _make_module(f"mmcv.ops.{sub}", {n: _IMPLEMENTED[n] for n in names}, False)
        sys.modules[module.__name__] = module
        if sub not in _IMPLEMENTED:  # as in mmcv, ``mmcv.ops.nms`` is the function
            setattr(ops, sub, module)
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops
    if not any(isinstance(f, _SubmoduleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SubmoduleFinder())
    MODELS.register_module("DCN", module=DeformConv2dPack, force=True)
    MODELS.register_module("DCNv2", module=ModulatedDeformConv2dPack, force=True)
    for name in _REGISTERED_PLACEHOLDERS:
        if name not in MODELS.module_dict:
            MODELS.register_module(name, module=placeholder(f"mmcv.ops.{name}"))
    return ops
