"""Print the state_dict keys of an MMDetection checkpoint, compactly (either venv)::

    python tests/mmdet_ref/print_keys.py DIR/checkpoint.pth [--prefix bbox_head.]

Keys under ``--prefix`` (default ``bbox_head.``) are listed one by one with their shapes; the
others (backbone, neck) as patterns (see :func:`collapse`).
"""
import argparse
import collections
import re

import torch


def collapse(keys) -> list:
    """Patterns of ``keys``: numeric path parts become ``#``, keys of one module are merged
    into ``prefix.{a,b,...}``, with how many modules match, e.g.
    ``backbone.layer#.#.bn1.{weight,bias,running_mean,running_var,num_batches_tracked} x16``."""
    groups = collections.OrderedDict()
    for key in keys:
        pattern = re.sub(r"(?<=\.)\d+(?=\.)", "#", key)
        module, _, leaf = pattern.rpartition(".")
        entry = groups.setdefault(module, [[], set()])
        if leaf not in entry[0]:
            entry[0].append(leaf)
        entry[1].add(key.rpartition(".")[0])
    out = []
    for module, (leaves, instances) in groups.items():
        leaf = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
        out.append(f"{module}.{leaf}" + (f" x{len(instances)}" if len(instances) > 1 else ""))
    return out


def main(argv=None) -> None:
    """Print the listing."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--prefix", default="bbox_head.")
    args = p.parse_args(argv)
    sd = torch.load(args.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    head = [k for k in sd if k.startswith(args.prefix)]
    rest = [k for k in sd if not k.startswith(args.prefix)]
    print(f"# {len(sd)} keys: {len(head)} under {args.prefix!r}")
    for k in head:
        print(f"{k} {tuple(sd[k].shape)}")
    print("# other keys (patterns):")
    for pat in collapse(rest):
        print(pat)


if __name__ == "__main__":
    main()
