#!/usr/bin/env python
"""Make a small synthetic COCO-format detection dataset (2 classes) so the CustomData example runs anywhere.

Usage:
    python projects/CustomData/make_toy_data.py --out datasets/toy [--train 64] [--val 16] [--seed 0]

Each image (default 256x320, RGB) is smoothed grey-ish noise with up to 4 filled shapes (one that
would overlap an earlier shape is skipped): class 1 ``rectangle`` and class 2 ``ellipse``, 16-96
pixels per side, in random saturated colours. About one image in eight has no object (such images
must load and train fine). Writes ``OUT/images/*.png``,
``OUT/train.json`` and ``OUT/val.json`` in the COCO instances format (bbox = [x, y, w, h] in
pixels, area = w * h, iscrowd 0). Deterministic for a given seed.
"""
import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"}]


def make_image(rng: np.random.Generator, height: int, width: int):
    """One image and its boxes: (PIL RGB image, list of (category_id, [x, y, w, h]))."""
    # muted background: grey-ish noise in [40, 160), so the saturated shapes stand out
    grey = rng.integers(40, 160, size=(height // 8, width // 8, 1))
    noise = np.clip(grey + rng.integers(-20, 21, size=(height // 8, width // 8, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(noise).resize((width, height), Image.BILINEAR).filter(ImageFilter.GaussianBlur(2))
    draw = ImageDraw.Draw(image)
    objects = []
    count = 0 if rng.random() < 0.125 else int(rng.integers(1, 5))
    for _ in range(count):
        w, h = (int(v) for v in rng.integers(16, 97, size=2))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        if any(x < ox + ow and ox < x + w and y < oy + oh and oy < y + h for _, (ox, oy, ow, oh) in objects):
            continue  # no occlusion: every box shows its whole shape
        # saturated: one channel bright, one dark, one anywhere, in random order
        channels = [rng.integers(200, 256), rng.integers(0, 60), rng.integers(0, 256)]
        colour = tuple(int(c) for c in rng.permutation(channels))
        category = int(rng.integers(1, 3))
        shape = [x, y, x + w - 1, y + h - 1]  # PIL includes the end pixel
        if category == 1:
            draw.rectangle(shape, fill=colour)
        else:
            draw.ellipse(shape, fill=colour)
        objects.append((category, [x, y, w, h]))
    return image, objects


def write_split(rng, out_dir: str, split: str, count: int, height: int, width: int) -> dict:
    """Write ``count`` images of ``split`` under ``out_dir/images`` and return the COCO dict."""
    coco = {"images": [], "annotations": [], "categories": CATEGORIES}
    for i in range(count):
        image, objects = make_image(rng, height, width)
        name = f"{split}_{i:04d}.png"
        image.save(os.path.join(out_dir, "images", name))
        image_id = i + 1
        coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for category, (x, y, w, h) in objects:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": category,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
            })
    with open(os.path.join(out_dir, f"{split}.json"), "w") as f:
        json.dump(coco, f, indent=1)
    return coco


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="datasets/toy")
    parser.add_argument("--train", type=int, default=64, help="number of training images")
    parser.add_argument("--val", type=int, default=16, help="number of validation images")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.height < 96 or args.width < 96:
        raise SystemExit(f"--height/--width must be >= 96 (the largest shape side), got {args.height}x{args.width}")
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.train), ("val", args.val)):
        coco = write_split(rng, args.out, split, count, args.height, args.width)
        print(f"[make_toy_data] {args.out}/{split}.json: {len(coco['images'])} images, "
              f"{len(coco['annotations'])} boxes")


if __name__ == "__main__":
    main()
