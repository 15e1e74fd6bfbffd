"""DeformConv / ModulatedDeformConv on torchvision.ops.deform_conv2d: equivalence with Conv2d at
zero offset, the (dy, dx) row-major offset layout, bilinear sampling, masks, gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from d2_anchorfree.layers.deform_conv import DeformConv, ModulatedDeformConv

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

# (kernel, stride, padding, dilation, groups, deformable_groups)
CONV_SETTINGS = [
    (3, 1, 1, 1, 1, 1),
    (3, 2, 1, 1, 1, 1),
    (3, 1, 2, 2, 1, 1),
    (3, 2, 0, 1, 2, 1),
    ((1, 3), 1, (0, 1), 1, 1, 2),
    (2, 1, 0, 1, 1, 2),
]


def _offset_mask(conv, x, offset_value=0.0, mask_value=1.0):
    h, w = conv.output_size(x)
    k = conv.num_kernel_points * conv.deformable_groups
    offset = torch.full((x.shape[0], 2 * k, h, w), offset_value, dtype=x.dtype, device=x.device)
    mask = torch.full((x.shape[0], k, h, w), mask_value, dtype=x.dtype, device=x.device)
    return offset, mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,dg", CONV_SETTINGS)
def test_zero_offset_equals_conv2d(device, kernel, stride, padding, dilation, groups, dg):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 9, device=device)
    for cls, bias in ((DeformConv, False), (DeformConv, True), (ModulatedDeformConv, True)):
        conv = cls(4, 6, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                   deformable_groups=dg, bias=bias).to(device)
        if conv.bias is not None:
            torch.nn.init.normal_(conv.bias)
        offset, mask = _offset_mask(conv, x)
        out = conv(x, offset, mask) if cls is ModulatedDeformConv else conv(x, offset)
        ref = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, groups)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def _single_tap_conv(cls, tap_row, tap_col, device):
    """1->1 channel 3x3 conv, padding 1, whose only non-zero weight is 1 at (tap_row, tap_col)."""
    conv = cls(1, 1, 3, padding=1, bias=False).to(device)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, tap_row, tap_col] = 1.0
    return conv


@pytest.mark.parametrize("device", DEVICES)
def test_offset_layout_dy_dx(device):
    # X = [[0,1,2],[3,4,5],[6,7,8]]. The only weight sits at kernel position (row 0, col 2), i.e.
    # k = 0 * 3 + 2 = 2 (row-major), whose regular sample for output (y, x) is (y - 1, x + 1).
    # Offset channels 2k = 4 (dy) = +2 and 2k + 1 = 5 (dx) = 0 move it to (y + 1, x + 1):
    #   out[0] = X[1,1], X[1,2], X[1,3]=0 -> 4, 5, 0
    #   out[1] = X[2,1], X[2,2], 0        -> 7, 8, 0
    #   out[2] = row 3 is outside         -> 0, 0, 0
    # (A (dx, dy) layout would sample (y - 1, x + 3): all zero; a column-major kernel would put
    # k = 2 at (row 2, col 0).)
    x = torch.arange(9.0, device=device).reshape(1, 1, 3, 3)
    conv = _single_tap_conv(DeformConv, 0, 2, device)
    offset, _ = _offset_mask(conv, x)
    offset[:, 4] = 2.0
    expected = torch.tensor([[4.0, 5.0, 0.0], [7.0, 8.0, 0.0], [0.0, 0.0, 0.0]], device=device)
    torch.testing.assert_close(conv(x, offset)[0, 0], expected)


@pytest.mark.parametrize("device", DEVICES)
def test_integer_offset_shifts_sampling(device):
    # Center tap (k = 4, channels 8 = dy, 9 = dx); dy = +1, dx = -1: out[y, x] = X[y + 1, x - 1]
    # on the 4x4 X = arange(16) (X[r, c] = 4 r + c), zero outside:
    #   row 0: X[1,-1]=0, X[1,0]=4, X[1,1]=5, X[1,2]=6
    #   row 1: 0, 8, 9, 10;  row 2: 0, 12, 13, 14;  row 3: all outside -> 0
    x = torch.arange(16.0, device=device).reshape(1, 1, 4, 4)
    conv = _single_tap_conv(DeformConv, 1, 1, device)
    offset, _ = _offset_mask(conv, x)
    offset[:, 8] = 1.0
    offset[:, 9] = -1.0
    expected = torch.tensor(
        [[0, 4, 5, 6], [0, 8, 9, 10], [0, 12, 13, 14], [0, 0, 0, 0]], dtype=torch.float32, device=device
    )
    torch.testing.assert_close(conv(x, offset)[0, 0], expected)


@pytest.mark.parametrize("device", DEVICES)
def test_fractional_offset_and_mask(device):
    # Center tap, dy = 0.5 (dx = 0): bilinear average of X[y, x] and X[y + 1, x]; for X[r, c] =
    # 4 r + c that is 4 y + x + 2 inside (rows 0..2); on row 3 the lower neighbour is outside (0):
    # (X[3, x] + 0) / 2 = (12 + x) / 2. The modulated conv with mask 0.25 scales all by 0.25.
    x = torch.arange(16.0, device=device).reshape(1, 1, 4, 4)
    cols = torch.arange(4.0, device=device)
    expected = torch.stack([4 * r + cols + 2 for r in range(3)] + [(12 + cols) / 2])
    conv = _single_tap_conv(DeformConv, 1, 1, device)
    offset, _ = _offset_mask(conv, x)
    offset[:, 8] = 0.5
    torch.testing.assert_close(conv(x, offset)[0, 0], expected)
    mconv = _single_tap_conv(ModulatedDeformConv, 1, 1, device)
    _, mask = _offset_mask(mconv, x, mask_value=0.25)
    torch.testing.assert_close(mconv(x, offset, mask)[0, 0], 0.25 * expected)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    torch.manual_seed(0)
    conv = ModulatedDeformConv(2, 2, 3, padding=1, deformable_groups=2).to(device).double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    # Non-integer offsets away from the bilinear kinks (integer sample positions).
    offset = (0.3 + 0.4 * torch.rand(1, 36, 3, 3, dtype=torch.float64, device=device)).requires_grad_()
    mask = torch.rand(1, 18, 3, 3, dtype=torch.float64, device=device).requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()
    bias = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)

    def modulated(x, offset, mask, weight, bias):
        return functional_call(conv, {"weight": weight, "bias": bias}, (x, offset, mask))

    assert torch.autograd.gradcheck(modulated, (x, offset, mask, weight, bias), atol=1e-6,
                                     fast_mode=True)

    plain = DeformConv(2, 2, 3, padding=1, deformable_groups=2).to(device).double()

    def unmodulated(x, offset, weight):
        return functional_call(plain, {"weight": weight}, (x, offset))

    assert torch.autograd.gradcheck(unmodulated, (x, offset, weight), atol=1e-6, fast_mode=True)


def test_norm_activation_and_empty_batch():
    conv = DeformConv(2, 3, 3, padding=1, norm=torch.nn.BatchNorm2d(3), activation=torch.relu)
    x = torch.randn(2, 2, 5, 5)
    offset = torch.randn(2, 18, 5, 5)
    out = conv(x, offset)
    assert out.shape == (2, 3, 5, 5) and (out >= 0).all()
    empty = conv.eval()(torch.zeros(0, 2, 5, 5), torch.zeros(0, 18, 5, 5))
    assert empty.shape == (0, 3, 5, 5)


def test_bad_shapes_raise():
    conv = DeformConv(2, 3, 3, stride=2, padding=1)
    x = torch.randn(1, 2, 6, 6)  # output 3x3
    with pytest.raises(ValueError, match=r"offset must have shape \(1, 18, 3, 3\)"):
        conv(x, torch.zeros(1, 18, 6, 6))
    with pytest.raises(ValueError, match=r"input must be \[N, 2, H, W\]"):
        conv(torch.randn(1, 4, 6, 6), torch.zeros(1, 18, 3, 3))
    mconv = ModulatedDeformConv(2, 3, 3, padding=1)
    with pytest.raises(ValueError, match=r"mask must have shape \(1, 9, 6, 6\)"):
        mconv(x, torch.zeros(1, 18, 6, 6), torch.ones(1, 18, 6, 6))
    with pytest.raises(ValueError, match="divisible by groups 2"):
        DeformConv(3, 4, 3, groups=2)
