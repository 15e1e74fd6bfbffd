"""Parameters, FLOPs, activations and structure of a detector built from a config (as detectron2's
``tools/analyze_model.py``, which cannot read this package's keys).

    d2af analyze --config-file configs/FCOS/FCOS_tiny_R_18_cpu.yaml --tasks parameter flop
    d2af analyze --config-file configs/FCOS/FCOS_R_50_FPN_1x.yaml --tasks flop --size 800x1333

Counts come from fvcore (``parameter_count_table``, ``FlopCountAnalysis``,
``ActivationCountAnalysis``), traced through the exported inference graph
(``d2_anchorfree.export.InferenceGraph``: normalization, backbone, head, decoding, candidate
selection, NMS / top-k) on one uint8 image of ``--size`` (default: ``INPUT.MIN_SIZE_TEST``
square). FLOPs as fvcore and detectron2 count them: one fused multiply-add is one flop, so a
k x k convolution from C_in to C_out channels on an H x W output is C_in C_out k^2 H W; operators
fvcore has no formula for (NMS, top-k, sorting) count 0. The model is randomly initialized:
weights change no count here (``MODEL.WEIGHTS`` is not loaded).
"""
import argparse
import logging
import sys
from typing import Optional, Sequence, Tuple

import torch

TASKS = ("parameter", "flop", "activation", "structure")


def parse_size(text: str) -> Tuple[int, int]:
    """"HxW" -> (H, W), both >= 1.

    Raises:
        ValueError: not two positive integers separated by "x".
    """
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--size must be HxW with positive integers, e.g. 800x1333; got {text!r}")
    return int(parts[0]), int(parts[1])


def _traced_analysis(analysis_class, model, size: Tuple[int, int]):
    """An fvcore analysis (``FlopCountAnalysis`` / ``ActivationCountAnalysis``) of
    ``InferenceGraph(model)`` on a zero uint8 image [H, W, 3], warnings about operators without a
    formula silenced."""
    from d2_anchorfree.export import InferenceGraph

    image = torch.zeros(size[0], size[1], 3, dtype=torch.uint8)
    analysis = analysis_class(InferenceGraph(model.eval()), (image,))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def flop_analysis(model, size: Tuple[int, int]):
    """fvcore's ``FlopCountAnalysis`` of the inference graph at ``size`` (H, W); ``.total()`` is in
    flops (multiply-adds)."""
    from fvcore.nn import FlopCountAnalysis

    return _traced_analysis(FlopCountAnalysis, model, size)


def activation_analysis(model, size: Tuple[int, int]):
    """fvcore's ``ActivationCountAnalysis`` (output elements of convolutions and linear layers) of
    the inference graph at ``size`` (H, W)."""
    from fvcore.nn import ActivationCountAnalysis

    return _traced_analysis(ActivationCountAnalysis, model, size)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Print the requested analyses (see the module docstring).

    Returns:
        0, or 1 with an ``error:`` line for a bad ``--size`` or a config that does not build.
    """
    from fvcore.nn import flop_count_table, parameter_count, parameter_count_table

    from detectron2.modeling import build_model

    from d2_anchorfree.engine import setup_cfg

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config-file", required=True)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=["parameter", "flop"])
    p.add_argument("--size", default="", help="input HxW in pixels (default: INPUT.MIN_SIZE_TEST square)")
    p.add_argument("--depth", type=int, default=3, help="module depth of the tables (default 3)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = setup_cfg(args, default_setup_logging=False)
        size = parse_size(args.size) if args.size else (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
        model = build_model(cfg).eval()
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    name = cfg.MODEL.META_ARCHITECTURE
    with torch.no_grad():
        if "parameter" in args.tasks:
            print(f"{name}: {parameter_count(model)[''] / 1e6:.2f} M parameters")
            print(parameter_count_table(model, max_depth=args.depth))
        if "flop" in args.tasks:
            flops = flop_analysis(model, size)
            print(f"{name} at {size[0]}x{size[1]}: {flops.total() / 1e9:.2f} GFLOPs (multiply-adds)")
            print(flop_count_table(flops, max_depth=args.depth))
        if "activation" in args.tasks:
            acts = activation_analysis(model, size)
            print(f"{name} at {size[0]}x{size[1]}: {acts.total() / 1e6:.2f} M activations")
        if "structure" in args.tasks:
            print(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
