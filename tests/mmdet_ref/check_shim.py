"""Self-check of mmcv_ops_shim.py (run in the mmdet venv: ``python tests/mmdet_ref/check_shim.py``).

* deform_conv2d / modulated_deform_conv2d (torchvision) against a direct implementation of
  mmcv's im2col kernel as read from mmcv/ops/csrc/common/cuda/*deform_conv_cuda_kernel.cuh
  (offset channel 2k = dy, 2k+1 = dx, k = i*kw + j; mask channel k; zero outside the image),
  with groups, deform groups, stride, padding, dilation and non-square kernels;
* the Pack modules: parameter names, offset/mask split, DCN/DCNv2 registry entries;
* nms / batched_nms against a plain greedy NMS, the split_thr path against the direct one;
* placeholders import fine and raise NotImplementedError naming the op.
Exits non-zero on the first failure."""
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ops_shim  # noqa: E402

ops = mmcv_ops_shim.install()


def _bilinear_mmcv(img, h, w):
    """mmcv's ``dmcn_im2col_bilinear`` plus its range test, vectorized: ``img`` [H, W],
    ``h``/``w`` sample coordinates (any shape); 0 where h <= -1, w <= -1, h >= H or w >= W and
    for corners outside the image."""
    H, W = img.shape
    inside = (h > -1) & (w > -1) & (h < H) & (w < W)
    h0, w0 = torch.floor(h), torch.floor(w)
    lh, lw = h - h0, w - w0
    h0, w0 = h0.long(), w0.long()
    out = torch.zeros_like(h)
    for dh, dw, wt in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw),
                       (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
        hh, ww = h0 + dh, w0 + dw
        ok = inside & (hh >= 0) & (hh <= H - 1) & (ww >= 0) & (ww <= W - 1)
        val = img[hh.clamp(0, H - 1), ww.clamp(0, W - 1)]
        out = out + torch.where(ok, wt * val, torch.zeros_like(val))
    return out


def reference_deform_conv(x, offset, weight, bias, stride, padding, dilation, groups,
                          deform_groups, mask=None):
    """Deformable convolution computed the way mmcv's kernel indexes its tensors."""
    B, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    Ho, Wo = offset.shape[2:]
    K = kh * kw
    cols = x.new_zeros(B, C, K, Ho, Wo)
    ys = torch.arange(Ho, dtype=x.dtype)[:, None] * stride[0] - padding[0]
    xs = torch.arange(Wo, dtype=x.dtype)[None, :] * stride[1] - padding[1]
    per_group = C // deform_groups
    for b in range(B):
        for c in range(C):
            g = c // per_group
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    dy = offset[b, g * 2 * K + 2 * k]
                    dx = offset[b, g * 2 * K + 2 * k + 1]
                    val = _bilinear_mmcv(x[b, c], ys + i * dilation[0] + dy,
                                         xs + j * dilation[1] + dx)
                    if mask is not None:
                        val = val * mask[b, g * K + k]
                    cols[b, c, k] = val
    out = x.new_zeros(B, O, Ho, Wo)
    og = O // groups
    for grp in range(groups):
        wg = weight[grp * og:(grp + 1) * og].reshape(og, Cg * K)
        cg = cols[:, grp * Cg:(grp + 1) * Cg].reshape(B, Cg * K, Ho * Wo)
        out[:, grp * og:(grp + 1) * og] = (wg @ cg).reshape(B, og, Ho, Wo)
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


def check_deform_conv():
    """torchvision-backed functions equal the mmcv-layout reference."""
    g = torch.Generator().manual_seed(0)
    cases = [  # C, O, k, stride, pad, dil, groups, deform_groups, H, W
        (4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, 7, 9),
        (4, 4, (3, 2), (2, 1), (1, 0), (1, 2), 2, 2, 8, 7),
        (6, 3, (1, 1), (1, 1), (0, 0), (1, 1), 3, 6, 5, 5),  # TOOD-like per-channel sampling
    ]
    for C, O, k, s, p, d, grp, dg, H, W in cases:
        x = torch.randn(2, C, H, W, generator=g, dtype=torch.float64)
        w = torch.randn(O, C // grp, *k, generator=g, dtype=torch.float64)
        b = torch.randn(O, generator=g, dtype=torch.float64)
        Ho = (H + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
        Wo = (W + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
        # offsets up to +-3 px so that samples leave the image, plus exact integers
        off = torch.randn(2, dg * 2 * k[0] * k[1], Ho, Wo, generator=g, dtype=torch.float64) * 3
        off[..., 0, 0] = torch.round(off[..., 0, 0])
        m = torch.rand(2, dg * k[0] * k[1], Ho, Wo, generator=g, dtype=torch.float64)
        got = ops.deform_conv2d(x, off, w, s, p, d, grp, dg)
        want = reference_deform_conv(x, off, w, None, s, p, d, grp, dg)
        assert torch.allclose(got, want, atol=1e-10), (k, (got - want).abs().max())
        got = ops.modulated_deform_conv2d(x, off, m, w, b, s, p, d, grp, dg)
        want = reference_deform_conv(x, off, w, b, s, p, d, grp, dg, mask=m)
        assert torch.allclose(got, want, atol=1e-10), (k, (got - want).abs().max())
    print("deform_conv2d / modulated_deform_conv2d: match the mmcv-layout reference")


def check_modules():
    """Pack modules: mmcv parameter names, offset/mask split, registry entries, old keys."""
    from mmengine.registry import MODELS
    from mmcv.cnn import build_conv_layer
    assert MODELS.get("DCN") is ops.DeformConv2dPack
    assert MODELS.get("DCNv2") is ops.ModulatedDeformConv2dPack
    dcn = build_conv_layer(dict(type="DCNv2", deform_groups=1), 4, 5, 3, padding=1, bias=False)
    assert sorted(dcn.state_dict()) == ["conv_offset.bias", "conv_offset.weight", "weight"]
    assert dcn.conv_offset.out_channels == 27
    dcn1 = build_conv_layer(dict(type="DCN", deform_groups=2), 4, 5, 3, padding=1)
    assert sorted(dcn1.state_dict()) == ["conv_offset.bias", "conv_offset.weight", "weight"]
    assert dcn1.conv_offset.out_channels == 36
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    dcn = dcn.double()
    torch.nn.init.normal_(dcn.conv_offset.weight, std=0.3)
    out = dcn.conv_offset(x)
    o1, o2, mk = out[:, :9], out[:, 9:18], out[:, 18:]
    want = reference_deform_conv(x, torch.cat([o1, o2], 1), dcn.weight, None, (1, 1), (1, 1),
                                 (1, 1), 1, 1, mask=mk.sigmoid())
    assert torch.allclose(dcn(x), want, atol=1e-10)
    # zero offsets and no mask: a plain convolution
    plain = ops.DeformConv2dPack(4, 5, 3, padding=1).double()
    assert torch.allclose(plain(x), torch.nn.functional.conv2d(x, plain.weight, padding=1))
    # version-1 checkpoints stored the offset conv as "<name>_offset.*" (renamed as mmcv does;
    # note that torch >= 2.x hands each child only its own "<name>." keys, so through
    # load_state_dict this rename no longer fires, for real mmcv neither)
    sd = {"conv2.weight": 1, "conv2_offset.weight": 2, "conv2_offset.bias": 3}
    mmcv_ops_shim._rename_old_offset_keys(sd, "conv2.", {})
    assert sd == {"conv2.weight": 1, "conv2.conv_offset.weight": 2, "conv2.conv_offset.bias": 3}
    print("DCN / DCNv2 modules: mmcv names and layout, registry entries, old offset keys")


def _greedy_nms(boxes, scores, thr):
    """Plain greedy NMS by descending score (IoU > thr suppresses), as mmcv's nms_cpu."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep, dead = [], set()
    for a, i in enumerate(order):
        if i in dead:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            if j not in dead and float(_iou(boxes[i], boxes[j])) > thr:
                dead.add(j)
    return keep


def _iou(a, b):
    """IoU of two x1y1x2y2 boxes."""
    w = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    h = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = w * h
    area = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]))
    return inter / (area - inter)


def check_nms():
    """nms / batched_nms: greedy reference, class separation, split path, numpy in/out."""
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=g) * 100
    wh = torch.rand(300, 2, generator=g) * 30 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(300, generator=g)
    labels = torch.randint(0, 4, (300,), generator=g)
    dets, keep = ops.nms(boxes, scores, 0.5)
    assert keep.tolist() == _greedy_nms(boxes, scores, 0.5)
    assert torch.equal(dets, torch.cat([boxes[keep], scores[keep, None]], 1))
    dets_np, keep_np = ops.nms(boxes.numpy(), scores.numpy(), iou_threshold=0.5)
    assert keep_np.tolist() == keep.tolist() and dets_np.shape == (len(keep), 5)
    _, k2 = ops.nms(boxes, scores, 0.5, score_threshold=0.3, max_num=10)
    assert k2.tolist() == [i for i in keep.tolist() if scores[i] > 0.3][:10]
    cfg = dict(type="nms", iou_threshold=0.6)
    dets, keep = ops.batched_nms(boxes, scores, labels, cfg)
    want = []
    for c in range(4):
        idx = (labels == c).nonzero().view(-1)
        want += [int(idx[i]) for i in _greedy_nms(boxes[idx], scores[idx], 0.6)]
    want.sort(key=lambda i: -float(scores[i]))
    assert keep.tolist() == want, "batched_nms must equal per-class greedy NMS"
    assert torch.equal(dets[:, :4], boxes[keep]) and torch.equal(dets[:, 4], scores[keep])
    dets_s, keep_s = ops.batched_nms(boxes, scores, labels, dict(cfg, split_thr=10))
    assert keep_s.tolist() == want and torch.equal(dets_s, dets)
    _, keep_m = ops.batched_nms(boxes, scores, labels, dict(cfg, split_thr=10, max_num=7))
    assert keep_m.tolist() == want[:7]
    _, keep_a = ops.batched_nms(boxes, scores, labels, cfg, class_agnostic=True)
    assert keep_a.tolist() == _greedy_nms(boxes, scores, 0.6)
    dets_n, keep_n = ops.batched_nms(boxes, scores, labels, None)
    assert keep_n.tolist() == scores.argsort(descending=True).tolist()
    print("nms / batched_nms: equal greedy per-class NMS (direct and split_thr paths)")


def check_placeholders():
    """Other ops import but raise NotImplementedError naming the op."""
    from mmcv.ops import RoIAlign, sigmoid_focal_loss  # noqa: F401
    from mmcv.ops.carafe import CARAFEPack
    for fn in (RoIAlign, CARAFEPack, sigmoid_focal_loss, ops.soft_nms):
        try:
            fn(1)
        except NotImplementedError as e:
            assert fn.__name__ in str(e), e
        else:
            raise AssertionError(f"{fn} should raise")
    print("placeholders: import fine, raise NotImplementedError when used")


if __name__ == "__main__":
    torch.set_num_threads(1)
    check_deform_conv()
    check_modules()
    check_nms()
    check_placeholders()
    importlib.import_module("mmdet.models")
    print("mmdet.models imports with the shim: OK")
