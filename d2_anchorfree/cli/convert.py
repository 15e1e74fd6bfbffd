"""Convert a checkpoint of MMDetection (2.x / 3.x), AdelaiDet or DeFCN (cvpods) into a
d2_anchorfree checkpoint for the model that a config builds.

    d2af convert --config-file configs/zoo/mmdet/gfl_r50_fpn_1x_coco.yaml \
        --output gfl_r50_mmdet.pth gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth
    d2af evaluate --config-file configs/zoo/mmdet/gfl_r50_fpn_1x_coco.yaml \
        MODEL.WEIGHTS gfl_r50_mmdet.pth

The source is recognised from its key names (``--source`` to force one). The conversion is
complete and exact or it stops: a source tensor without a counterpart, a model tensor left unset,
or a shape mismatch is an error naming the keys (usually: the wrong config for this checkpoint).
The file is read without running code from it (``torch.load(weights_only=True)``, numpy scalars
allowed); a file that holds other Python objects is refused with the command to re-save its
tensors from a trusted copy. ``KEY VALUE`` pairs after the checkpoint override the config.
(``python tools/convert_checkpoint.py`` takes the same arguments as ``d2af convert``.)
"""
import argparse
import logging
import sys

from d2_anchorfree.checkpoint.conversion import SOURCES, ConversionError, convert_checkpoint
from d2_anchorfree.checkpoint.safe_load import UnsafeWeightFileError
from d2_anchorfree.engine import setup_cfg


def parse_args(argv=None, prog=None) -> argparse.Namespace:
    """Command-line arguments: checkpoint, --config-file, --output, --source, config overrides;
    ``prog``: the program name of the usage (default: the script's name)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config-file", required=True, help="our config of the same model, e.g. configs/zoo/...")
    p.add_argument("--output", required=True, help="where to write the converted .pth")
    p.add_argument("--source", default="auto", choices=["auto", *sorted(SOURCES)])
    p.add_argument("checkpoint", help="the source checkpoint (.pth / .pkl), after the options")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return p.parse_args(argv)


def main(argv=None, prog=None) -> int:
    """Convert.

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage (default: the script's name).

    Returns:
        int: 0, or 1 with an ``error:`` line (bad config, file or conversion).
    """
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = setup_cfg(args, default_setup_logging=False)
        _, report = convert_checkpoint(args.checkpoint, cfg, args.output, args.source)
    except (ConversionError, UnsafeWeightFileError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{report.summary()}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
