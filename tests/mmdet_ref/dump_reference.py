"""Dump an MMDetection 3.3.0 reference: a random-weight checkpoint and the model's own outputs.

Runs in the mmdet venv (``bash tools/setup_mmdet_env.sh`` prints its path)::

    PY=$(D2AF_VENV=~/.cache/d2af/venv bash tools/setup_mmdet_env.sh 2>/dev/null)/bin/python
    $PY tests/mmdet_ref/make_test_images.py --out /tmp/mmref/images
    $PY tests/mmdet_ref/dump_reference.py --config fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py \\
        --images /tmp/mmref/images/*.png --seed 0 --out /tmp/mmref/fcos [--layout 2.x] \\
        [--cfg-options model.test_cfg.score_thr=0.1 ...]
    $PY tests/mmdet_ref/dump_reference.py --jobs JOBS.json   # several dumps, one process

``--jobs``: a JSON list of argument lists (each as above); the dumps run one after the other in
one process, so that mmdet is imported once (see :func:`main_jobs`).

Steps: build the model from mmdet's packaged config (``mmdet/.mim/configs/<config>``, or any
path) with mmengine's Config and mmdet's MODELS registry, backbone ``init_cfg`` None (nothing is
downloaded); give every parameter and buffer random values drawn from ``--seed``, then calibrate
them on the first image so that activations stay O(1)-O(10) and the detections are non-trivial
(see :func:`randomize` and :func:`calibrate`); save DIR/checkpoint.pth in MMDetection's layout;
run every image (one per forward, no resize) through the model's data_preprocessor,
``extract_feat``, ``bbox_head(feats)`` and ``predict(..., rescale=True)``; save DIR/outputs.pt;
reload the checkpoint into a fresh model and check that it reproduces the detections.

DIR/outputs.pt (torch.save, plain types): ``config`` (the --config argument), ``config_text``
(mmengine's pretty_text of the merged config), ``test_cfg`` (dict), ``data_preprocessor``
(dict), ``seed``, ``versions``, ``calibration`` (what was tuned, to which values), ``timing``
and ``images``: one dict per image with ``path``, ``metainfo`` (img_shape, ori_shape,
scale_factor, pad_shape, batch_input_shape), ``batch_input`` [1, 3, Hp, Wp] (preprocessed,
padded), ``fpn_features`` (list of [1, C, h, w]), ``head_output_names`` (the names
``predict_by_feat`` gives them, e.g. cls_scores, bbox_preds, score_factors), ``head_outputs``
(list, one per name, of per-level tensors, exactly what ``bbox_head(feats)`` returned, in eval
mode), ``detections`` (``bboxes`` [K, 4] x1y1x2y2 in input pixels, ``scores`` [K], ``labels``
[K]) and ``stats`` (summary numbers that were checked).
"""
import argparse
import collections
import inspect
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mmcv_ops_shim  # noqa: E402

mmcv_ops_shim.install()

import cv2  # noqa: E402
import mmcv  # noqa: E402
import mmdet  # noqa: E402
import mmengine  # noqa: E402
from mmcv.cnn import Scale  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner.checkpoint import weights_to_cpu  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

# What the random model should look like (fractions of (location, class) pairs whose
# thresholded score exceeds test_cfg.score_thr, and the spread of the classifier logits).
TARGET_ABOVE_THR = 0.02
CLS_LOGIT_STD = 2.5
CLS_KEEP_CLASS_OFFSETS = 0.3  # of each class's mean logit offset (so that many classes fire)

# Per head class: its classifier conv, whether its cls outputs are already probabilities, and
# the convs whose raw outputs (before Scale / exp / relu) are set to a given mean and std, in
# this order (later ones see the effect of earlier ones).
HEAD_SPECS = {
    # plain FCOS: distances exp(s * x) pixels; norm_on_bbox: relu(s * x) * stride
    "FCOSHead": dict(cls="conv_cls", activated=False,
                     calibrate=[("conv_reg", "fcos_reg"), ("conv_centerness", (0.0, 1.5))]),
    # deltas (dx, dy, dw, dh) of DeltaXYWHBBoxCoder with stds (0.1, 0.1, 0.2, 0.2)
    "ATSSHead": dict(cls="atss_cls", activated=False,
                     calibrate=[("atss_reg", (0.0, 1.0)), ("atss_centerness", (0.0, 1.5))]),
    # logits of the 17-bin distance distributions (expected bin * stride = distance)
    "GFLHead": dict(cls="gfl_cls", activated=False, calibrate=[("gfl_reg", (0.0, 2.0))]),
    # distances exp(s * x) * reg_denom (64 ... 1024); refine: exp(s' * x') times that
    "VFNetHead": dict(cls="vfnet_cls", activated=False,
                      calibrate=[("vfnet_reg", (-1.3, 0.5)), ("vfnet_reg_refine", (0.0, 0.3))]),
    # distances s * exp(x) in stride units; cls score = sqrt(sigmoid(cls) * sigmoid(prob))
    "TOODHead": dict(cls="tood_cls", activated=True,
                     prob="cls_prob_module.2",
                     calibrate=[("tood_reg", (0.7, 0.4)), ("reg_offset_module.2", (0.0, 1.0)),
                                ("cls_prob_module.2", (0.0, 1.5))]),
}
DEFORM_TYPES = (mmcv_ops_shim.DeformConv2d, mmcv_ops_shim.ModulatedDeformConv2d)
CONV_TYPES = (nn.Conv2d, nn.Linear) + DEFORM_TYPES
COCO_LIKE_CLASSES_KEY = "classes"


# --------------------------------------------------------------------------------------------
# config and model
# --------------------------------------------------------------------------------------------
def resolve_config(config: str) -> str:
    """Path of ``config``: as given when it exists, else relative to mmdet's packaged configs
    (``mmdet/.mim/configs``)."""
    if os.path.isfile(config):
        return config
    packaged = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", config)
    if not os.path.isfile(packaged):
        raise SystemExit(f"config {config!r} is neither a file nor under {os.path.dirname(packaged)}")
    return packaged


def load_config(config: str, cfg_options=None) -> Config:
    """mmengine Config of ``config`` with ``cfg_options`` merged (as mmdet's tools do) and the
    backbone's pretrained ``init_cfg`` removed, so that building downloads nothing."""
    cfg = Config.fromfile(resolve_config(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.model.backbone.init_cfg = None
    cfg.model.pop("pretrained", None)
    return cfg


def build_model(cfg: Config) -> nn.Module:
    """The detector of ``cfg.model`` from mmdet's MODELS registry, on CPU, in eval mode, with
    its constructor's parameter values (``init_weights`` is not called)."""
    register_all_modules(init_default_scope=True)
    model = MODELS.build(cfg.model)
    return model.eval()


def dataset_classes(cfg: Config) -> tuple:
    """The class names of the config's test dataset (COCO's 80 for the configs here)."""
    dataset = cfg.get("test_dataloader", {}).get("dataset", {})
    classes = (dataset.get("metainfo") or {}).get(COCO_LIKE_CLASSES_KEY)
    if classes is None:
        dataset_cls = mmdet.registry.DATASETS.get(dataset.get("type", "CocoDataset"))
        classes = dataset_cls.METAINFO[COCO_LIKE_CLASSES_KEY]
    return tuple(classes)


# --------------------------------------------------------------------------------------------
# random weights
# --------------------------------------------------------------------------------------------
def randomize(model: nn.Module, generator: torch.Generator) -> None:
    """Give every parameter random values from ``generator`` (in ``named_modules`` order).

    conv / linear / deformable-conv weights: normal with std gain/sqrt(fan_in) (gain sqrt(2)
    in backbone and head, 1 in the neck, which has no ReLU between its convs), biases N(0,
    0.1); DCN ``conv_offset``: std 0.3/sqrt(fan_in), bias N(0, 0.3) (offsets of about a pixel);
    BN / GN affine: weight U(0.6, 1.4), bias N(0, 0.2); BN running stats are set by
    :func:`calibrate_batchnorm`; ``Scale``: U(0.8, 1.2). Raises if a parameter is left."""
    touched = set()

    def normal_(t, std, mean=0.0):
        t.data.copy_(torch.randn(t.shape, generator=generator) * std + mean)

    def uniform_(t, lo, hi):
        t.data.copy_(torch.rand(t.shape, generator=generator) * (hi - lo) + lo)

    for name, m in model.named_modules():
        prefix = name + "." if name else ""
        if isinstance(m, CONV_TYPES):
            fan_in = m.weight[0].numel()
            if name.endswith("conv_offset"):
                normal_(m.weight, 0.3 / math.sqrt(fan_in))
                normal_(m.bias, 0.3)
            else:
                gain = 1.0 if name.startswith("neck.") else math.sqrt(2.0)
                normal_(m.weight, gain / math.sqrt(fan_in))
                if getattr(m, "bias", None) is not None:  # mmcv's DeformConv2d has none
                    normal_(m.bias, 0.1)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            if m.weight is not None:
                uniform_(m.weight, 0.6, 1.4)
                normal_(m.bias, 0.2)
        elif isinstance(m, Scale):
            uniform_(m.scale, 0.8, 1.2)
        else:
            continue
        touched.update(prefix + n for n, _ in m.named_parameters(recurse=False))
    left = [n for n, _ in model.named_parameters() if n not in touched]
    if left:
        raise RuntimeError(f"parameters of unhandled module types: {left[:10]}")


def calibrate_batchnorm(model: nn.Module, batch_inputs: torch.Tensor,
                        generator: torch.Generator) -> None:
    """Set every BN's running mean/var to the statistics of its input on ``batch_inputs``
    (one pass, each BN set just before it runs, so later BNs see the earlier ones' values),
    perturbed: mean + 0.1 std * N(0, 1), var * U(0.7, 1.4) (positive). Like a trained frozen
    BN, it keeps activations O(1) whatever the input scale (caffe-style input is 0-255 minus
    the mean)."""
    def pre_hook(bn, args):
        x = args[0].detach().double()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float64)
        factor = torch.rand(var.shape, generator=generator, dtype=torch.float64) * 0.7 + 0.7
        bn.running_mean.copy_(mean + 0.1 * var.sqrt() * noise)
        bn.running_var.copy_(var * factor + 1e-3)

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [bn.register_forward_pre_hook(pre_hook) for bn in bns]
    try:
        with torch.no_grad():
            model.extract_feat(batch_inputs)
    finally:
        for h in handles:
            h.remove()


def _outputs_of(head: nn.Module, modules, feats, flat: bool = True) -> list:
    """For each of ``modules``: what it outputs (float64) while ``head(feats)`` runs once,
    all levels' values flattened into one vector, or (``flat`` False) the per-level list."""
    seen = [[] for _ in modules]
    handles = [m.register_forward_hook(
        lambda mod, a, out, i=i: seen[i].append(out.detach().double()))
        for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            head(feats)
    finally:
        for h in handles:
            h.remove()
    return [_flat(s) if flat else s for s in seen]


def _flat(levels) -> torch.Tensor:
    """Per-level tensors as one flat vector (level by level, each in memory order)."""
    return torch.cat([t.flatten() for t in levels])


def set_output_stats(head: nn.Module, module: nn.Module, feats, mean: float, std: float,
                     keep_channel_offsets: float = 1.0) -> dict:
    """Rescale conv ``module`` (weight and bias) so that its raw output over ``feats`` has the
    given mean and std: an exact affine change of its output, measured with one head pass.
    With ``keep_channel_offsets`` < 1 each output channel's mean offset from the common mean
    is first shrunk by that factor (through the bias), so that for a classifier the location
    decides more than the class. Returns the output's (mean, std) before."""
    levels = _outputs_of(head, [module], feats, flat=False)[0]
    out = _flat(levels)
    if keep_channel_offsets != 1.0:
        sums = sum(t.sum(dim=(0, 2, 3)) for t in levels)
        counts = sum(t.numel() // t.shape[1] for t in levels)
        offsets = sums / counts - out.mean()
        with torch.no_grad():
            module.bias.sub_(((1 - keep_channel_offsets) * offsets).to(module.bias))
        levels = [t - ((1 - keep_channel_offsets) * offsets)[None, :, None, None] for t in levels]
        out = _flat(levels)
    k = std / max(out.std().item(), 1e-12)
    shift = mean - k * out.mean().item()
    with torch.no_grad():
        module.weight.mul_(k)
        module.bias.mul_(k).add_(shift)
    return dict(before=(round(out.mean().item(), 4), round(out.std().item(), 4)),
                after=(mean, std))


def threshold_scores(head: nn.Module, feats, activated: bool) -> torch.Tensor:
    """The per-(location, class) scores that ``test_cfg.score_thr`` is applied to: sigmoid of
    the cls output, or the output itself when the head returns probabilities (TOOD)."""
    with torch.no_grad():
        cls_scores = head(feats)[0]
    flat = torch.cat([c.flatten() for c in cls_scores])
    return flat if activated else flat.sigmoid()


def calibrate(model: nn.Module, batch_inputs: torch.Tensor, generator: torch.Generator,
              score_thr: float) -> dict:
    """Make the random model behave like a detector on ``batch_inputs`` (the first image):
    BN statistics (:func:`calibrate_batchnorm`), then per head (``HEAD_SPECS``) the raw box /
    quality outputs to the listed mean and std, the classifier logits to std ``CLS_LOGIT_STD``,
    and finally the classifier bias shifted (bisection) so that a fraction ``TARGET_ABOVE_THR``
    of (location, class) scores exceed ``score_thr``. Returns what was set."""
    calibrate_batchnorm(model, batch_inputs, generator)
    head = model.bbox_head
    spec = HEAD_SPECS.get(type(head).__name__)
    if spec is None:
        raise SystemExit(f"no calibration spec for {type(head).__name__}; add it to HEAD_SPECS")
    with torch.no_grad():
        feats = model.extract_feat(batch_inputs)
    report = collections.OrderedDict()
    for name, target in spec["calibrate"]:
        if target == "fcos_reg":  # distances exp(x) px, or relu(x) * stride with norm_on_bbox
            target = (1.5, 0.8) if head.norm_on_bbox else (3.0, 0.7)
        report[name] = set_output_stats(head, head.get_submodule(name), feats, *target)
    cls_conv = head.get_submodule(spec["cls"])
    prob_conv = head.get_submodule(spec["prob"]) if spec.get("prob") else None
    logits = _outputs_of(head, [cls_conv], feats)[0]
    report[spec["cls"]] = set_output_stats(head, cls_conv, feats, logits.mean().item(),
                                           CLS_LOGIT_STD, CLS_KEEP_CLASS_OFFSETS)
    # the scores as a function of a shift of the classifier bias, from one pass
    # (TOOD's prob map has one channel, broadcast over the classes)
    captured = _outputs_of(head, [cls_conv] + ([prob_conv] if prob_conv else []), feats,
                           flat=False)

    def scores_at(delta):
        if prob_conv is None:
            return _flat([(c + delta).sigmoid() for c in captured[0]])
        return _flat([((c + delta).sigmoid() * p.sigmoid()).sqrt()
                      for c, p in zip(*captured)])

    lo, hi = -30.0, 30.0
    for _ in range(40):
        mid = (lo + hi) / 2
        frac = (scores_at(mid) > score_thr).double().mean().item()
        lo, hi = (mid, hi) if frac < TARGET_ABOVE_THR else (lo, mid)
    with torch.no_grad():
        cls_conv.bias.add_(hi)
    scores = threshold_scores(head, feats, spec["activated"]).double()
    if scores.shape != scores_at(hi).shape or not torch.allclose(scores, scores_at(hi), atol=1e-5):
        raise RuntimeError("the head's scores are not the modelled function of its cls logits")
    report["cls_bias_shift"] = hi
    report["fraction_above_score_thr"] = (scores > score_thr).double().mean().item()
    report["max_score"] = scores.max().item()
    return dict(report)


# --------------------------------------------------------------------------------------------
# checkpoint
# --------------------------------------------------------------------------------------------
def checkpoint_dict(model: nn.Module, cfg: Config, classes: tuple, layout: str, seed: int,
                    config: str) -> dict:
    """The model's state dict in an MMDetection checkpoint, plain types only (readable with
    ``torch.load(weights_only=True)``).

    3.x: meta as mmengine's Runner.save_checkpoint writes it (epoch, iter, cfg, seed,
    experiment_name, time, mmengine_version, dataset_meta {classes, palette}) plus
    ``mmdet_version`` '3.3.0'. 2.x: meta as mmdet 2.x's train script + mmcv 1.x's runner write
    it (env_info, config, seed, exp_name, mmdet_version, CLASSES, epoch, iter, hook_msgs,
    mmcv_version, time); the config text is the 3.x one (a real 2.x file holds its 2.x
    config). Both keep the state
    dict's ``_metadata`` (module versions) as mmengine's ``weights_to_cpu`` does."""
    state_dict = weights_to_cpu(model.state_dict())
    experiment = os.path.splitext(os.path.basename(config))[0]
    stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    if layout == "3.x":
        palette = _palette(cfg, len(classes))
        meta = dict(mmdet_version=mmdet.__version__, epoch=12, iter=87960,
                    cfg=cfg.pretty_text, seed=seed, experiment_name=f"{experiment}_{stamp}",
                    time=stamp, mmengine_version=mmengine.__version__,
                    dataset_meta=dict(classes=classes, palette=palette))
    elif layout == "2.x":
        # mmdet 2.28 tools/train.py: env_info, config, seed, exp_name in runner.meta and
        # checkpoint_config.meta = mmdet_version, CLASSES; mmcv 1.x runner/CheckpointHook: epoch,
        # iter, hook_msgs; mmcv.runner.save_checkpoint: mmcv_version, time (asctime)
        meta = dict(env_info=f"sys.platform: linux\nPyTorch: {torch.__version__}",
                    config=cfg.pretty_text, seed=seed, exp_name=os.path.basename(config),
                    mmdet_version="2.28.2", CLASSES=classes, epoch=12, iter=87960,
                    hook_msgs=dict(last_ckpt=f"work_dirs/{experiment}/epoch_12.pth"),
                    mmcv_version="1.7.1", time=time.asctime())
    else:
        raise ValueError(layout)
    return dict(meta=meta, state_dict=state_dict)


def _palette(cfg: Config, n: int) -> list:
    """The test dataset's palette (list of RGB tuples) when it has one, else gray."""
    dataset = cfg.get("test_dataloader", {}).get("dataset", {})
    try:
        palette = mmdet.registry.DATASETS.get(dataset.get("type", "CocoDataset")).METAINFO["palette"]
        return [tuple(int(c) for c in p) for p in palette]
    except (AttributeError, KeyError, TypeError):
        return [(128, 128, 128)] * n


def save_checkpoint(ckpt: dict, path: str) -> None:
    """torch.save in the legacy (non-zip) format, as MMDetection's publish_model.py writes
    published checkpoints (``_use_new_zipfile_serialization=False``)."""
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
def read_image(path: str) -> np.ndarray:
    """The image as cv2 reads it: BGR uint8 HWC."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read image {path}")
    return img


def preprocess(model: nn.Module, img: np.ndarray, path: str):
    """One-image batch through the model's data_preprocessor, no resize: metainfo img_shape =
    ori_shape = (h, w), scale_factor (1.0, 1.0) (as mmdet's test pipeline would pack it with a
    1x resize). Returns (batch_inputs [1, 3, Hp, Wp] float, data_samples)."""
    h, w = img.shape[:2]
    sample = DetDataSample(metainfo=dict(img_path=path, img_id=0, ori_shape=(h, w),
                                         img_shape=(h, w), scale_factor=(1.0, 1.0)))
    chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    data = model.data_preprocessor(dict(inputs=[chw], data_samples=[sample]), training=False)
    return data["inputs"], data["data_samples"]


def head_output_names(head: nn.Module, n: int) -> list:
    """Names of the head's raw outputs: the first ``n`` parameters of its predict_by_feat."""
    params = list(inspect.signature(head.predict_by_feat).parameters)
    return params[:n]


def run_image(model: nn.Module, img: np.ndarray, path: str) -> dict:
    """Preprocess, FPN features, raw head outputs and final detections of one image."""
    t0 = time.perf_counter()
    batch_inputs, samples = preprocess(model, img, path)
    with torch.no_grad():
        feats = model.extract_feat(batch_inputs)
        outs = model.bbox_head(feats)
        results = model.predict(batch_inputs, samples, rescale=True)
    pred = results[0].pred_instances
    meta = results[0].metainfo
    names = head_output_names(model.bbox_head, len(outs))
    return dict(
        path=os.path.abspath(path),
        metainfo={k: _plain(meta[k]) for k in ("img_shape", "ori_shape", "scale_factor",
                                               "pad_shape", "batch_input_shape") if k in meta},
        batch_input=batch_inputs.clone(),
        fpn_features=[f.clone() for f in feats],
        head_output_names=names,
        head_outputs=[[t.clone() for t in level_list] for level_list in outs],
        detections=dict(bboxes=pred.bboxes.clone(), scores=pred.scores.clone(),
                        labels=pred.labels.clone()),
        seconds=time.perf_counter() - t0,
    )


def _plain(value):
    """Tuples/lists of numpy or python numbers as plain python tuples."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def image_stats(result: dict, score_thr: float, activated: bool) -> dict:
    """Summary numbers of one image's outputs: feature magnitudes, score spread, detections."""
    feats = result["fpn_features"]
    cls = torch.cat([c.flatten() for c in result["head_outputs"][0]])
    scores = cls if activated else cls.sigmoid()
    det = result["detections"]
    wh = det["bboxes"][:, 2:] - det["bboxes"][:, :2]
    h, w = result["metainfo"]["img_shape"]
    q = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    stats = dict(
        fpn_std=[round(f.std().item(), 3) for f in feats],
        fpn_absmax=[round(f.abs().max().item(), 2) for f in feats],
        score_quantiles=[round(v, 4) for v in scores.double().quantile(
            torch.tensor([0.5, 0.9, 0.99, 0.999, 1.0], dtype=torch.float64)).tolist()],
        fraction_above_score_thr=(scores > score_thr).double().mean().item(),
        num_detections=len(det["scores"]),
        num_labels=len(det["labels"].unique()),
        det_score_range=(det["scores"].min().item(), det["scores"].max().item())
        if len(det["scores"]) else None,
        det_width_quantiles=wh[:, 0].double().quantile(q).round().tolist() if len(wh) else None,
        det_height_quantiles=wh[:, 1].double().quantile(q).round().tolist() if len(wh) else None,
        det_degenerate=int(((wh[:, 0] < 1) | (wh[:, 1] < 1)).sum()),
        det_inside_image=bool((det["bboxes"][:, 0::2] >= 0).all() and (det["bboxes"][:, 0::2] <= w).all()
                              and (det["bboxes"][:, 1::2] >= 0).all() and (det["bboxes"][:, 1::2] <= h).all()),
    )
    return stats


def check_stats(stats: dict, name: str) -> list:
    """Problems with an image's stats: exploding/vanishing features, no or degenerate boxes."""
    problems = []
    if not all(0.05 < s < 50 for s in stats["fpn_std"]):
        problems.append(f"{name}: FPN feature std out of range {stats['fpn_std']}")
    if stats["num_detections"] < 10:
        problems.append(f"{name}: only {stats['num_detections']} detections")
    elif stats["det_degenerate"] > stats["num_detections"] // 2:
        problems.append(f"{name}: {stats['det_degenerate']} degenerate boxes")
    elif stats["det_width_quantiles"][3] <= stats["det_width_quantiles"][1]:
        problems.append(f"{name}: box widths do not vary {stats['det_width_quantiles']}")
    return problems


# --------------------------------------------------------------------------------------------
def parse_args(argv=None):
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True,
                   help="mmdet config, relative to mmdet/.mim/configs or a path")
    p.add_argument("--images", nargs="+", required=True, help="test images (read as BGR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--layout", choices=("3.x", "2.x"), default="3.x",
                   help="checkpoint layout (meta keys) of that MMDetection version")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                   help="override config keys, key=value as in mmdet's tools")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Build, randomize, calibrate, save the checkpoint, run the images, save the outputs,
    verify the checkpoint by reloading it. Returns the outputs dict."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    timing = collections.OrderedDict()
    t0 = time.perf_counter()
    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg)
    timing["build"] = time.perf_counter() - t0
    test_cfg = cfg.model.test_cfg.to_dict()
    score_thr = float(test_cfg.get("score_thr", 0.05))
    activated = HEAD_SPECS[type(model.bbox_head).__name__]["activated"]
    classes = dataset_classes(cfg)
    assert len(classes) == model.bbox_head.num_classes, (len(classes), model.bbox_head.num_classes)

    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    randomize(model, generator)
    images = [read_image(p) for p in args.images]
    first_inputs, _ = preprocess(model, images[0], args.images[0])
    calibration = calibrate(model, first_inputs, generator, score_thr)
    timing["randomize_and_calibrate"] = time.perf_counter() - t0

    ckpt_path = os.path.join(args.out, "checkpoint.pth")
    save_checkpoint(checkpoint_dict(model, cfg, classes, args.layout, args.seed, args.config),
                    ckpt_path)

    results, problems = [], []
    for path, img in zip(args.images, images):
        result = run_image(model, img, path)
        result["stats"] = image_stats(result, score_thr, activated)
        problems += check_stats(result["stats"], os.path.basename(path))
        results.append(result)
    timing["images"] = [r.pop("seconds") for r in results]

    # the saved checkpoint alone must reproduce the detections
    t0 = time.perf_counter()
    reloaded = build_model(cfg)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    reloaded.load_state_dict(ckpt["state_dict"], strict=True)
    again = run_image(reloaded, images[0], args.images[0])
    for key in ("bboxes", "scores", "labels"):
        if not torch.equal(again["detections"][key], results[0]["detections"][key]):
            problems.append(f"reloaded checkpoint gives different {key}")
    timing["verify_reload"] = time.perf_counter() - t0

    dp = cfg.model.data_preprocessor
    outputs = dict(
        config=args.config, config_text=cfg.pretty_text, test_cfg=test_cfg,
        data_preprocessor=dict(mean=list(dp.mean), std=list(dp.std),
                               bgr_to_rgb=bool(dp.get("bgr_to_rgb", False)),
                               pad_size_divisor=int(dp.get("pad_size_divisor", 1)),
                               pad_value=0.0),
        seed=args.seed, layout=args.layout, classes=classes,
        versions=dict(mmdet=mmdet.__version__, mmengine=mmengine.__version__,
                      mmcv=mmcv.__version__, torch=str(torch.__version__),
                      numpy=np.__version__),
        calibration=calibration, timing=dict(timing), images=results, problems=problems)
    torch.save(outputs, os.path.join(args.out, "outputs.pt"))

    print(f"[dump_reference] {args.config}: {type(model).__name__} + {type(model.bbox_head).__name__}, "
          f"seed {args.seed}, layout {args.layout} -> {args.out}")
    print(f"  calibration: {calibration}")
    for r in results:
        print(f"  {os.path.basename(r['path'])} {r['metainfo']['img_shape']}: {r['stats']}")
    print("  timing (s): " + ", ".join(
        f"{k}={[round(x, 1) for x in v] if isinstance(v, list) else round(v, 1)}"
        for k, v in timing.items()))
    if problems:
        print("  PROBLEMS:\n    " + "\n    ".join(problems))
        raise SystemExit(1)
    return outputs


def main_jobs(jobs_file: str) -> int:
    """Run several dumps in this one process (mmdet is imported once; importing it takes about
    as long as a dump's own work on 2 cores). ``jobs_file``: a JSON list of argument lists, each
    as for one dump's command line. A dump that fails (its checks included) is reported, its
    ``--out`` directory removed, and the others still run. Returns the exit code: 0, or 1 if a
    dump failed."""
    import json
    import shutil
    import traceback

    with open(jobs_file) as f:
        jobs = json.load(f)
    failed = []
    for argv in jobs:
        try:
            main(argv)
        except (Exception, SystemExit):  # one failed dump must not stop the others
            traceback.print_exc()
            print(f"[dump_reference] FAILED: {' '.join(argv)}", file=sys.stderr)
            out = argv[argv.index("--out") + 1] if "--out" in argv else None
            if out:
                shutil.rmtree(out, ignore_errors=True)
            failed.append(argv)
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--jobs"] and len(sys.argv) == 3:
        raise SystemExit(main_jobs(sys.argv[2]))
    main()
