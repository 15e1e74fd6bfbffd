"""Deformable convolution modules on ``torchvision.ops.deform_conv2d`` (CPU and CUDA).

Drop-in replacements for detectron2's ``DeformConv`` / ``ModulatedDeformConv`` (same constructor
arguments, same parameter names ``weight`` / ``bias``, so detectron2 DCN checkpoints load), without
detectron2's compiled ops.

Sources: Dai et al., "Deformable Convolutional Networks", ICCV 2017, Eq. 2 (DCNv1);
Zhu et al., "Deformable ConvNets v2", CVPR 2019, Eq. 3 (modulated, DCNv2).

Offset layout (torchvision's convention, identical to the original DCN / mmcv / detectron2 ops;
checked by ``tests/layers/test_deform_conv.py::test_offset_layout_dy_dx``):

    offset: [N, 2 * dg * kh * kw, H_out, W_out], in input-feature-map pixels.
    For deformable group g and kernel position k = i * kw + j (row-major over the kernel, i the
    kernel row, j the kernel column), channel ``2 * (g * kh * kw + k)`` is dy (rows, down is
    positive) and channel ``2 * (g * kh * kw + k) + 1`` is dx (columns, right is positive).
    Output location (y, x) then samples the input (bilinearly, zero outside) at
        (y * stride_h - pad_h + i * dil_h + dy,  x * stride_w - pad_w + j * dil_w + dx).
    mask (modulated only): [N, dg * kh * kw, H_out, W_out], channel ``g * kh * kw + k`` multiplies
    the sample of kernel position k of group g (usually sigmoid outputs in [0, 1]).
"""
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d


def _output_size(size: Tuple[int, int], kernel, stride, padding, dilation) -> Tuple[int, int]:
    """Spatial output size of a convolution (same formula as ``nn.Conv2d``)."""
    return tuple(
        (s + 2 * p - (d * (k - 1) + 1)) // st + 1
        for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)
    )


def deform_conv2d_fp32(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                   bias: Optional[torch.Tensor], stride, padding, dilation,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d``, computed in float32 under autocast (AMP) or for
    float16 / bfloat16 inputs, the result cast back to ``x``'s dtype (shapes and arguments as
    torchvision's: x [N, C, H, W], offset [N, 2 G k_h k_w, H_out, W_out] in input pixels (dy, dx),
    weight [C_out, C / groups, k_h, k_w]).

    torchvision's CUDA autocast wrapper of ``deform_conv2d`` does the same; its CPU kernel has no
    bfloat16 / float16 version at all ("deformable_im2col not implemented for 'BFloat16'"), and
    the bilinear sampling offsets need float32 precision anyway. Other inputs: unchanged.
    """
    device = x.device.type
    low = x.dtype in (torch.float16, torch.bfloat16)
    if not (low or (x.dtype == torch.float32 and torch.is_autocast_enabled(device))):
        return deform_conv2d(x, offset.to(x.dtype), weight, bias, stride=stride, padding=padding,
                             dilation=dilation, mask=None if mask is None else mask.to(x.dtype))
    with torch.autocast(device, enabled=False):
        out = deform_conv2d(x.float(), offset.float(), weight.float(),
                            None if bias is None else bias.float(), stride=stride,
                            padding=padding, dilation=dilation,
                            mask=None if mask is None else mask.float())
    return out.to(x.dtype)


class _DeformConvBase(nn.Module):
    """Shared constructor, argument checks and norm/activation of the two deformable convs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, deformable_groups: int = 1, bias: bool = False,
                 norm: Optional[nn.Module] = None, activation=None):
        super().__init__()
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible by "
                f"groups {groups}"
            )
        if in_channels % deformable_groups != 0:
            raise ValueError(
                f"in_channels {in_channels} must be divisible by deformable_groups {deformable_groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    @property
    def num_kernel_points(self) -> int:
        """kh * kw."""
        return self.kernel_size[0] * self.kernel_size[1]

    def output_size(self, x: torch.Tensor) -> Tuple[int, int]:
        """(H_out, W_out) for input ``x`` [N, C, H, W]."""
        return _output_size(x.shape[-2:], self.kernel_size, self.stride, self.padding, self.dilation)

    def _check(self, x: torch.Tensor, name: str, t: torch.Tensor, per_point: int):
        """Raise ValueError unless ``t`` is [N, per_point * dg * kh * kw, H_out, W_out] (not checked
        while tracing: the sizes are then traced tensors)."""
        if torch.jit.is_tracing():
            return
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input must be [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        expected = (x.shape[0], per_point * self.deformable_groups * self.num_kernel_points,
                    *self.output_size(x))
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} for input {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, "
                f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}")


class DeformConv(_DeformConvBase):
    """Deformable convolution (DCNv1, Dai et al., ICCV 2017, Eq. 2), then optional norm/activation.

    Constructor as detectron2's ``DeformConv`` (``bias`` defaults to False; True is also allowed
    here). Weight [C_out, C_in / groups, kh, kw], Kaiming-uniform initialised.

    forward(x [N, C_in, H, W], offset [N, 2 * dg * kh * kw, H_out, W_out]) -> [N, C_out, H_out, W_out];
    offset layout in the module docstring ((dy, dx) pairs, row-major over the kernel, input pixels).
    With zero offsets it equals ``nn.Conv2d`` with the same weights.

    Raises:
        ValueError: channels not divisible by the groups; wrong input or offset shape in forward.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=False, norm=None, activation=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deformable_groups, bias, norm, activation)

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        self._check(x, "offset", offset, 2)
        out = deform_conv2d_fp32(x, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation)
        return self._finish(out)


class ModulatedDeformConv(_DeformConvBase):
    """Modulated deformable convolution (DCNv2, Zhu et al., CVPR 2019, Eq. 3), then optional
    norm/activation.

    Constructor as detectron2's ``ModulatedDeformConv`` (``bias`` defaults to True, zero init).

    forward(x [N, C_in, H, W], offset [N, 2 * dg * kh * kw, H_out, W_out],
    mask [N, dg * kh * kw, H_out, W_out]) -> [N, C_out, H_out, W_out]. With zero offsets and a unit
    mask it equals ``nn.Conv2d`` with the same weights and bias.

    Raises:
        ValueError: channels not divisible by the groups; wrong input, offset or mask shape.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=True, norm=None, activation=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deformable_groups, bias, norm, activation)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self._check(x, "offset", offset, 2)
        self._check(x, "mask", mask, 1)
        out = deform_conv2d_fp32(x, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask=mask)
        return self._finish(out)


class ModulatedDeformConvWithOffsets(ModulatedDeformConv):
    """A DCNv2 (Zhu et al., CVPR 2019) that predicts its own offsets and masks from its input with
    a plain conv ``conv_offset`` of the same kernel, stride, padding and dilation (zero-initialised,
    so it starts as a regular conv with every sample weighted sigmoid(0) = 0.5): a drop-in for a
    ``nn.Conv2d`` (MMDetection's ``DCNv2`` conv layer, mmcv ``ModulatedDeformConv2dPack``; used
    by ``dcn_on_last_conv`` heads).

    ``conv_offset`` outputs 3 * dg * kh * kw channels: the first two thirds are the offsets
    (layout of this module: channel 2k is dy, 2k + 1 is dx of kernel point k), the last third
    the mask logits. Shapes: [N, C_in, H, W] -> [N, C_out, H_out, W_out].
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=True, norm=None, activation=None):
        """Arguments as :class:`ModulatedDeformConv`."""
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deformable_groups, bias, norm, activation)
        kh, kw = self.kernel_size
        self.conv_offset = nn.Conv2d(in_channels, 3 * deformable_groups * kh * kw, self.kernel_size,
                                     stride=self.stride, padding=self.padding, dilation=self.dilation)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """[N, C_in, H, W] -> [N, C_out, H_out, W_out] (offsets and masks from ``conv_offset(x)``)."""
        out = self.conv_offset(x)
        num_offsets = out.shape[1] // 3 * 2
        return super().forward(x, out[:, :num_offsets], torch.sigmoid(out[:, num_offsets:]))
