"""``d2af <command> [arguments]``: the dispatcher of the d2_anchorfree command line.

Each command is a module's ``main(argv, prog)``, imported only when that command runs; the
arguments after the command name go to it unchanged (``d2af train --config-file X --num-gpus 2
SOLVER.MAX_ITER 10``, as detectron2's tools take them).
"""
import argparse
import importlib
import sys
from typing import Dict, NamedTuple, Optional, Sequence

from d2_anchorfree import __version__


class Command(NamedTuple):
    """A subcommand: ``module:function`` called as ``function(argv, prog=...)``, and its help line."""

    target: str
    help: str


COMMANDS: Dict[str, Command] = {
    "train": Command("d2_anchorfree.cli.train:run", "train a detector (detectron2 arguments, as train_net.py)"),
    "evaluate": Command("d2_anchorfree.cli.train:evaluate", "evaluate trained weights (= train --eval-only)"),
    "report": Command("d2_anchorfree.cli.report:main",
                      "evaluation report of a results json: per-class AP, PR/F1 curves, best-F1 threshold, confusion"),
    "predict": Command("d2_anchorfree.cli.predict:main", "draw and save detections on images, a folder or a dataset"),
    "export": Command("d2_anchorfree.cli.export:main", "export a trained detector to ONNX or TorchScript"),
    "predict-onnx": Command("d2_anchorfree.runtime.predict_onnx:main",
                            "run an exported ONNX detector with onnxruntime or OpenVINO (no torch needed)"),
    "quantize": Command("d2_anchorfree.runtime.quantize_onnx:main",
                        "INT8-quantize an exported ONNX detector, calibrated on images (onnxruntime or NNCF)"),
    "curves": Command("d2_anchorfree.cli.curves:main",
                      "draw losses, learning rate and AP against iteration from metrics.json, runs side by side"),
    "analyze": Command("d2_anchorfree.cli.analyze:main",
                       "parameters, FLOPs, activations and structure of a detector from its config (fvcore)"),
    "convert": Command("d2_anchorfree.cli.convert:main",
                       "convert an MMDetection / AdelaiDet / DeFCN checkpoint for a config"),
    "benchmark": Command("d2_anchorfree.cli.benchmark:main",
                         "run a benchmark of the source tree: detectors (default), export, slicing, cocoeval"),
    "import": Command("d2_anchorfree.cli.import_data:main",
                      "convert YOLO / VOC / CVAT / LabelMe box labels to a checked COCO json (globox)"),
    "browse": Command("d2_anchorfree.cli.browse:main",
                      "draw the ground truth of a registered dataset, optionally after the training augmentations"),
    "prepare-data": Command("d2_anchorfree.cli.prepare_data:main",
                            "download and tile the bundled tree-crown dataset (COCO format)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: a command name, then everything else for that command."""
    width = max(len(name) for name in COMMANDS)
    listing = "\n".join(f"  {name:{width}s}  {cmd.help}" for name, cmd in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="d2af",
        description="Anchor-free detectors for detectron2: training, evaluation, prediction, export.",
        epilog=f"commands:\n{listing}\n\n'd2af <command> --help' shows the arguments of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"d2_anchorfree {__version__}")
    parser.add_argument("command", metavar="<command>", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the arguments of the command")
    return parser


def resolve(name: str):
    """The function that runs command ``name``.

    Raises:
        KeyError: ``name`` is not a command (the message lists the commands).
    """
    if name not in COMMANDS:
        raise KeyError(f"unknown command {name!r}; the commands are: {', '.join(COMMANDS)}")
    module_name, function = COMMANDS[name].target.split(":")
    return getattr(importlib.import_module(module_name), function)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``d2af``.

    Args:
        argv (list[str], optional): the arguments after ``d2af`` (default: ``sys.argv[1:]``).

    Returns:
        int: the command's exit code (0 when it returns no number); 2 for an unknown command or
        no command (argparse's usage error code).
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        run = resolve(args.command)
    except KeyError as e:
        parser.error(e.args[0])  # exits with code 2
    code = run(args.args, prog=f"d2af {args.command}")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
