"""``d2af benchmark [SUITE] [arguments]``: run one of the benchmarks of the source tree.

    d2af benchmark --quick                    # detectors: speed and memory (python tools/benchmark.py)
    d2af benchmark export --quick             # exported inference (python tools/benchmark_export.py)
    d2af benchmark slicing --quick            # sliced inference and TTA (python tools/benchmark_slicing.py)
    d2af benchmark cocoeval --images 200      # COCO evaluators (python tools/benchmark_cocoeval.py)
    d2af benchmark train_loop --iters 20      # where a real training iteration's time goes

The benchmarks live in the top-level ``benchmarks/`` folder of the source tree, not in the
installed package: this command needs d2_anchorfree from a checkout (``pip install -e .`` or
``PYTHONPATH``). ``python -m benchmarks.<suite>`` from the checkout's root does the same.
"""
import importlib
import os
import sys
from typing import List, Optional, Sequence

SUITES = {
    "detectors": "speed, memory and scaling of the detectors next to detectron2's (the default)",
    "export": "latency of eager PyTorch, onnxruntime and TorchScript inference",
    "slicing": "accuracy, time and memory of sliced inference and test-time augmentation",
    "cocoeval": "pycocotools vs faster-coco-eval vs detectron2's C++ COCOeval",
    "raster": "time and peak memory of windowed sliced inference on a synthetic orthomosaic GeoTIFF",
    "train_loop": "the real trainer's iterations split into data, forward, assignment, losses, backward, step, hooks",
}


def source_root() -> str:
    """The folder that holds this d2_anchorfree package folder (a checkout's root when the
    package is used from a source tree)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def import_suite(suite: str):
    """The module ``benchmarks.<suite>`` of the source tree that holds this d2_anchorfree.

    Puts the source tree's root on ``sys.path`` when it is not there yet (``d2af`` runs from
    the environment's ``bin/``).

    Raises:
        ValueError: ``suite`` is not one of ``SUITES``.
        RuntimeError: d2_anchorfree is not used from a source tree with ``benchmarks/`` (an
            installed wheel), or another ``benchmarks`` package is already imported.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown benchmark {suite!r}; the benchmarks are: {', '.join(SUITES)}")
    root = source_root()
    folder = os.path.join(root, "benchmarks")
    in_checkout = os.path.isfile(os.path.join(root, "pyproject.toml"))  # not a site-packages folder
    if not (in_checkout and os.path.isfile(os.path.join(folder, "__init__.py"))):
        raise RuntimeError(f"no source tree with benchmarks/ around the d2_anchorfree package in {root}: the benchmarks "
                           "are not installed with the package; run them from a source checkout "
                           "(pip install -e <checkout>)")
    loaded = sys.modules.get("benchmarks")
    if loaded is not None and os.path.dirname(os.path.abspath(loaded.__file__ or "")) != folder:
        raise RuntimeError(f"another 'benchmarks' package is already imported ({loaded.__file__}), not {folder}")
    if root not in [os.path.abspath(p or os.curdir) for p in sys.path]:
        sys.path.insert(0, root)
    return importlib.import_module(f"benchmarks.{suite}")


def split_suite(argv: Sequence[str]):
    """(suite, the suite's arguments) of ``d2af benchmark`` arguments: a leading suite name, or
    ``"detectors"`` when the first argument is not one (an option or nothing)."""
    argv = list(argv)
    if argv and argv[0] in SUITES:
        return argv[0], argv[1:]
    return "detectors", argv


def main(argv: Optional[List[str]] = None, prog: Optional[str] = None, suite: Optional[str] = None) -> int:
    """Run a benchmark suite.

    Args:
        argv (list[str], optional): ``[SUITE] arguments`` (default: ``sys.argv[1:]``); with
            ``suite`` given, the suite's arguments only.
        prog (str, optional): the program name shown in the usage (default: the script's name).
        suite (str, optional): run this suite (the ``tools/benchmark_*.py`` scripts).

    Returns:
        int: the suite's exit code (0 when it returns no number); 2 with an ``error:`` line when
        the suite cannot be imported (:func:`import_suite`: an unknown suite, or no source tree).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if suite is None:
        suite, argv = split_suite(argv)
        if prog and suite != "detectors":
            prog = f"{prog} {suite}"
        if argv[:1] in (["-h"], ["--help"]) and suite == "detectors":
            print("suites (first argument, default detectors):\n"
                  + "\n".join(f"  {name:9s}  {text}" for name, text in SUITES.items()) + "\n")
    try:
        module = import_suite(suite)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    code = module.main(argv, prog=prog)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
