"""Synthetic benchmark inputs, seeded so that every model sees the same data: random uint8
images with random GT boxes (sqrt(area) log-uniform, aspect 0.5..2) for ``infer`` and
``train``, and for ``assign`` / ``hungarian`` the FCOS points of five FPN levels (strides
8..128, input padded to 32) with random GT boxes and random predictions around each point."""
import math
from typing import List, Tuple

import torch

STRIDES = [8, 16, 32, 64, 128]


def parse_size(text: str) -> Tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def random_boxes(num: int, height: int, width: int, generator: torch.Generator,
                 min_size: float = 8.0, max_size: float = 512.0) -> torch.Tensor:
    """[num, 4] XYXY boxes inside the image; sqrt(area) log-uniform in [min_size, max_size]
    (capped at half the image), aspect ratio in [0.5, 2]."""
    max_size = min(max_size, min(height, width) / 2)
    size = torch.exp(torch.empty(num).uniform_(math.log(min_size), math.log(max_size), generator=generator))
    ratio = torch.exp(torch.empty(num).uniform_(math.log(0.5), math.log(2.0), generator=generator))
    w = (size * ratio.sqrt()).clamp(max=width - 1)
    h = (size / ratio.sqrt()).clamp(max=height - 1)
    x0 = torch.rand(num, generator=generator) * (width - w)
    y0 = torch.rand(num, generator=generator) * (height - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def level_sizes(height: int, width: int, divisibility: int = 32) -> List[Tuple[int, int]]:
    """Feature sizes of levels with strides 8..128 after padding the input to ``divisibility``."""
    ph = -(-height // divisibility) * divisibility
    pw = -(-width // divisibility) * divisibility
    return [(-(-ph // s), -(-pw // s)) for s in STRIDES]


def make_inputs(batch: int, height: int, width: int, num_gt: int, num_classes: int, seed: int = 0):
    """``batch`` detectron2 input dicts: random uint8 BGR images and ``num_gt`` random boxes."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(random_boxes(num_gt, height, width, g))
        inst.gt_classes = torch.randint(0, num_classes, (num_gt,), generator=g)
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
        inputs.append({"image": image, "instances": inst, "height": height, "width": width})
    return inputs


def assign_inputs(height: int, width: int, num_gt: int, num_classes: int, device: str, seed: int = 0):
    """Points of five levels (strides 8..128, input padded to 32), ``num_gt`` random GT boxes,
    random predictions (logits [R, K], boxes [R, 4] around each point) for POTO."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    shifts = []
    for (fh, fw), s in zip(level_sizes(height, width), STRIDES):
        ys = (torch.arange(fh, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(fw, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).to(device))
    gt = Instances((height, width))
    gt.gt_boxes = Boxes(random_boxes(num_gt, height, width, g).to(device))
    gt.gt_classes = torch.randint(0, num_classes, (num_gt,), generator=g).to(device)
    points = torch.cat(shifts)
    logits = (torch.randn(len(points), num_classes, generator=g) * 2 - 4).to(device)
    ltrb = torch.exp(torch.empty(len(points), 4).uniform_(math.log(4), math.log(256), generator=g)).to(device)
    boxes = torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], dim=1)
    return shifts, gt, logits, boxes
