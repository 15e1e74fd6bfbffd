"""Training curves: losses, learning rate and AP against iteration from detectron2's
``metrics.json``, for one run or several side by side, in one PNG.

    d2af curves output/fcos_tiny --out output/fcos_tiny/curves.png
    d2af curves output/fcos_tiny output/gfl_tiny --metrics total_loss loss_cls lr bbox/AP --out runs.png

Each run is an ``OUTPUT_DIR`` (or a ``metrics.json`` path) written by ``train_net.py``: one JSON
object per line, written every 20 iterations (losses: the median of the window as logged, ``lr``)
and after each evaluation (``bbox/AP``, ...). One panel per metric, one line per run (named by its
folder), iterations on the x axis; metrics absent from a run are left out of its panel.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

DEFAULT_METRICS = ("total_loss", "loss_cls", "loss_box", "lr", "bbox/AP", "bbox/AP50")

Series = Dict[str, List[Tuple[int, float]]]


def read_metrics(path: str) -> Series:
    """{metric: [(iteration, value)] sorted by iteration} from a ``metrics.json`` (or the folder
    holding it); a resumed run's repeated iterations keep the last value written.

    Raises:
        FileNotFoundError: no metrics.json there. ValueError: a line that is not a JSON object
            with an "iteration" (file and line number named).
    """
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no metrics.json at {path} (train_net.py writes it to OUTPUT_DIR)")
    series: Dict[str, Dict[int, float]] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                iteration = int(entry["iteration"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not a metrics line with an iteration ({e})") from e
            for key, value in entry.items():
                if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    series.setdefault(key, {})[iteration] = float(value)
    return {key: sorted(points.items()) for key, points in series.items()}


def plot_runs(runs: Dict[str, Series], metrics: Sequence[str], out: str) -> List[str]:
    """Draw one panel per metric (one line per run) into the PNG ``out``; returns the metrics drawn.

    Raises:
        ValueError: none of ``metrics`` is in any run (the metrics the runs have are listed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [m for m in metrics if any(m in series for series in runs.values())]
    if not drawn:
        available = sorted({k for series in runs.values() for k in series})
        raise ValueError(f"none of the metrics {list(metrics)} is in the runs; they have: {available}")
    cols = min(3, len(drawn))
    rows = -(-len(drawn) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False, sharex=True)
    for ax, metric in zip(axes.flat, drawn):
        for name, series in runs.items():
            if metric in series:
                xs, ys = zip(*series[metric])
                ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, markersize=3, label=name)
        ax.set_title(metric)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        positive = all(v > 0 for series in runs.values() for _, v in series.get(metric, []))
        if positive and (metric == "lr" or metric.startswith("loss") or metric.endswith("_loss")):
            ax.set_yscale("log")  # losses and the LR schedule span decades
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return drawn


def run_name(path: str) -> str:
    """The folder name of a run (the folder holding metrics.json)."""
    path = os.path.abspath(path)
    return os.path.basename(os.path.dirname(path) if path.endswith(".json") else path)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Draw the curves (see the module docstring).

    Returns:
        0, or 1 with an ``error:`` line (missing metrics.json, a bad line, no requested metric).
    """
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("runs", nargs="+", help="OUTPUT_DIRs (or metrics.json files) of train_net.py runs")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="metric names, one panel each")
    p.add_argument("--out", default="curves.png", help="the PNG to write (default curves.png)")
    args = p.parse_args(argv)
    try:
        runs = {}
        for path in args.runs:
            name = run_name(path)
            runs[name if name not in runs else path] = read_metrics(path)
        drawn = plot_runs(runs, args.metrics, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {', '.join(drawn)} of {len(runs)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
