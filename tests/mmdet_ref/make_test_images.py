"""Write the two reference test images: real tree tiles of the bundled data set, of two sizes.

The val tiles are all 400x400, so the first val image is used as it is and the second is
cropped to 275x333 (h x w: neither a multiple of 32, not square), so that padding and
non-square feature maps are exercised. Runs in either venv (needs numpy and cv2)::

    python tests/mmdet_ref/make_test_images.py --trees datasets/trees --out /tmp/mmref/images

prints the two paths.
"""
import argparse
import json
import os

import cv2

CROP = (40, 315, 30, 363)  # y0, y1, x0, x1 of the second image: 275 x 333


def main(argv=None) -> list:
    """Write <out>/tile_400x400.png and <out>/tile_275x333.png; return their paths."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trees", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "datasets", "trees"), help="prepared tree data (tools/prepare_trees.py)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    with open(os.path.join(args.trees, "val.json")) as f:
        names = [im["file_name"] for im in sorted(json.load(f)["images"], key=lambda i: i["id"])]
    os.makedirs(args.out, exist_ok=True)
    first = cv2.imread(os.path.join(args.trees, "images", names[0]), cv2.IMREAD_COLOR)
    second = cv2.imread(os.path.join(args.trees, "images", names[1]), cv2.IMREAD_COLOR)
    y0, y1, x0, x1 = CROP
    second = second[y0:y1, x0:x1]
    paths = []
    for img in (first, second):
        path = os.path.join(args.out, f"tile_{img.shape[0]}x{img.shape[1]}.png")
        cv2.imwrite(path, img)
        paths.append(path)
        print(path)
    return paths


if __name__ == "__main__":
    main()
