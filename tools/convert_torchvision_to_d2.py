#!/usr/bin/env python
"""Convert a torchvision ResNet checkpoint to detectron2's backbone naming.

    python tools/convert_torchvision_to_d2.py resnet18-f37072fd.pth R-18.pkl
    # then MODEL.WEIGHTS R-18.pkl, MODEL.PIXEL_MEAN/PIXEL_STD to torchvision's (RGB, 0-255 scaled),
    # INPUT.FORMAT "RGB"

The output is a pickle ``{"model": {name: ndarray}, "__author__": "torchvision",
"matching_heuristics": True}`` that ``DetectionCheckpointer`` loads by name matching
(stem.conv1, res2.0.conv1, res2.0.conv1.norm, res2.0.shortcut, ...). The ``fc`` layer is dropped.
"""
import pickle
import re
import sys

import torch


def convert_name(name: str) -> str:
    """torchvision ResNet parameter/buffer name -> detectron2 ResNet name.

    Examples: conv1.weight -> stem.conv1.weight; bn1.running_mean -> stem.conv1.norm.running_mean;
    layer1.0.conv2.weight -> res2.0.conv2.weight; layer2.0.downsample.1.bias -> res3.0.shortcut.norm.bias.
    """
    if not name.startswith("layer"):
        name = "stem." + name
    for i in range(1, 5):
        name = name.replace(f"layer{i}.", f"res{i + 1}.")
    for k in range(1, 4):
        name = name.replace(f"bn{k}.", f"conv{k}.norm.")
    name = name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return re.sub(r"^stem\.conv1\.norm\.", "stem.conv1.norm.", name)


def convert_state_dict(state_dict):
    """Return {detectron2 name: numpy array} for every tensor except ``fc.*`` and BN counters."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        out[convert_name(k)] = v.detach().cpu().numpy()
    return out


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    src, dst = argv[1], argv[2]
    obj = torch.load(src, map_location="cpu", weights_only=True)
    if "state_dict" in obj:
        obj = obj["state_dict"]
    with open(dst, "wb") as f:
        pickle.dump({"model": convert_state_dict(obj), "__author__": "torchvision",
                     "matching_heuristics": True}, f)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(sys.argv)
