"""Where the wall time of a real training iteration goes: the project's trainer
(``AnchorFreeTrainer``, the one ``train_net.py`` runs) with its data loader, hooks, gradient
clipping, health check and EMA, each iteration split into phases.

    python -m benchmarks.train_loop --configs configs/GFL/GFL_tiny_R_18_cpu.yaml --iters 20 --warmup 3
    python -m benchmarks.train_loop --configs A.yaml,B.yaml --iters 20 --warmup 3 --out output/train_loop.json
    python -m benchmarks.train_loop --configs A.yaml --vs "DATALOADER.NUM_WORKERS 0" --vs "DATALOADER.PREFETCH_FACTOR 2" --rounds 2
    d2af benchmark train_loop ...                  # the same

Each run builds the trainer exactly as ``train_net.py`` does (``setup_cfg``, the config's seed,
``AnchorFreeTrainer(cfg)``, ``resume_or_load(resume=False)``), runs ``trainer.train()`` and stops
it with an exception after ``--warmup + --iters`` iterations (the LR schedule stays the config's:
``SOLVER.MAX_ITER`` is not shortened, so no final checkpoint or evaluation happens inside the
timed iterations). ``OUTPUT_DIR`` is a temporary folder, deleted afterwards. The trainer's logs
are set up as ``train_net.py``'s but printed only with ``--verbose``.

Phases of one iteration (seconds, :class:`IterationProbe`), on the timeline of detectron2's
``TrainerBase.train`` loop body (``before_step`` hooks, ``run_step``, ``after_step`` hooks):

* ``data``: the trainer's own ``data_time`` (the wait in ``next(data_loader)``, written to the
  event storage by ``SimpleTrainer``);
* ``preprocess``: model call to backbone call (``preprocess_image``: normalize, pad, batch);
* ``backbone``: backbone + FPN forward (a forward pre-hook and hook on ``model.backbone``);
* ``head``: the head's forward (the same on ``model.head``);
* ``assign``: target assignment, through the timing proxies of
  :func:`benchmarks.training.install_assign_proxies`;
* ``losses``: ``model.forward_training`` minus ``assign`` (flattening, decoding, the losses);
* ``backward``: end of the model call to the start of ``_write_metrics`` (sum of the losses,
  ``zero_grad``, ``backward``);
* ``step``: ``optimizer.step`` (detectron2's gradient clipping runs inside it, then SGD);
* ``other``: the iteration minus all of the above: every hook's ``before_step`` / ``after_step``
  (``hooks``: health check, EMA, LR scheduler, iteration timer, writers every 20 iterations,
  periodic checkpoints), ``_write_metrics`` (``metrics``: ``.item()`` of every loss, the
  event-storage scalars), and the rest of ``run_step``.

The iteration itself runs from the first hook's ``before_step`` to the last hook's
``after_step``. On CUDA every reading is preceded by ``torch.cuda.synchronize()``
(benchmarks/timing.py), which itself costs a little and removes overlap between phases.

Reported per entry: images/s and ms per image over the timed iterations (their total wall time,
so periodic costs such as the writers count), the median of each phase and its share of the
median iteration (medians, so the shares need not add up to exactly 100%), the torch threads
and data-loader workers, and the 1-minute load average before and after each run. With several
entries or ``--rounds`` > 1, runs follow each other in one process in an order rotated per
round (:func:`benchmarks.timing.interleaved`), a fresh trainer each run; each ``--vs "KEY VALUE
..."`` adds, per config, the same config with those overrides (a paired A/B in one process).
"""
import argparse
import functools
import gc
import logging
import os
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Dict, List, Optional

import torch

from . import write_json_report
from .ema_fixed_budget import data_opts
from .report import environment, markdown_table
from .timing import TimedCall, interleaved, summarize, synchronize
from .training import install_assign_proxies, remove_assign_proxies

DEFAULT_CONFIGS = ["configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "configs/GFL/GFL_tiny_R_18_cpu.yaml",
                   "configs/realtime/GFL_RegNetX_002_cpu.yaml"]
#: The phases of an iteration, in the order they happen; ``other`` = iteration minus the rest.
PHASES = ("data", "preprocess", "backbone", "head", "assign", "losses", "backward", "step", "other")
#: Parts of ``other`` that are measured on their own (hooks; ``_write_metrics``).
OTHER_PARTS = ("hooks", "metrics")


class _Stop(BaseException):
    """Ends ``trainer.train()`` after the timed iterations. A ``BaseException``, like
    ``KeyboardInterrupt``: ``TrainerBase.train`` logs every ``Exception`` as a failure, this one
    passes through unlogged, and the ``after_train`` hooks still run."""


def _hook(before_step=None, after_step=None):
    """A detectron2 trainer hook that calls ``before_step`` / ``after_step`` (no-argument callables)."""
    from detectron2.engine import HookBase

    hook = HookBase()
    if before_step:
        hook.before_step = before_step
    if after_step:
        hook.after_step = after_step
    return hook


class IterationProbe:
    """Timing probes on a built trainer; one record of phase times per iteration.

    Installs (and :meth:`remove` takes away): forward pre-hooks and hooks on the (unwrapped)
    model, ``model.backbone`` and ``model.head``; the assignment proxies of
    :func:`benchmarks.training.install_assign_proxies`; :class:`benchmarks.timing.TimedCall`
    wrappers as instance attributes over ``model.forward_training``, the training loop's
    ``_write_metrics``, ``optimizer.step`` and every hook's ``before_step`` / ``after_step``;
    a first hook that starts the iteration's clock and a last one that ends it, records the
    iteration and raises :class:`_Stop` after ``stop_after`` iterations. Calls go through
    unchanged, so training computes what it computes without the probes.

    Args:
        trainer: an ``AnchorFreeTrainer`` (detectron2 ``DefaultTrainer``), built, not training yet.
        device: ``MODEL.DEVICE``; "cuda..." synchronizes before every reading.
        stop_after: iterations after which training is stopped (>= 1).

    Attributes:
        records: one dict per finished iteration: seconds of ``"iteration"``, each of
            :data:`PHASES` and :data:`OTHER_PARTS`, and ``"hook:<class name>"`` per hook.
    """

    def __init__(self, trainer, device: str, stop_after: int):
        from d2_anchorfree.engine.hooks import unwrap_model

        self.trainer, self.device, self.stop_after = trainer, device, stop_after
        self.records: List[Dict[str, float]] = []
        self._marks: Dict[str, float] = {}
        self.model = model = unwrap_model(trainer.model)
        self.loop = loop = trainer._trainer  # SimpleTrainer / AMPTrainer: run_step
        self._handles = []
        for name, module in (("model", model), ("backbone", model.backbone), ("head", model.head)):
            self._handles.append(module.register_forward_pre_hook(functools.partial(self._mark, f"{name}<")))
            self._handles.append(module.register_forward_hook(functools.partial(self._mark, f"{name}>")))
        self.assign = install_assign_proxies(model, device)
        self.forward_training = model.forward_training = TimedCall(model.forward_training, device)
        self.write_metrics = loop._write_metrics = TimedCall(loop._write_metrics, device)
        self.step = loop.optimizer.step = TimedCall(loop.optimizer.step, device)
        # torch's LR scheduler warns about a step() replaced after it wrapped it; this one calls that wrapper.
        if hasattr(self.step.fn, "_wrapped_by_lr_sched"):
            self.step._wrapped_by_lr_sched = True
        self.hooks = []  # (hook, before_step proxy, after_step proxy)
        for h in trainer._hooks:
            before, after = TimedCall(h.before_step, device), TimedCall(h.after_step, device)
            h.before_step, h.after_step = before, after
            self.hooks.append((h, before, after))
        self._first, self._last = _hook(before_step=self._start), _hook(after_step=self._end)
        trainer.register_hooks([self._first, self._last])
        trainer._hooks.remove(self._first)
        trainer._hooks.insert(0, self._first)

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def _mark(self, name: str, *_):
        self._marks[name] = self._now()

    def _proxies(self):
        yield from self.assign.values()
        yield self.forward_training
        yield self.write_metrics
        yield self.step
        for _, before, after in self.hooks:
            yield before
            yield after

    def _start(self):
        for p in self._proxies():
            p.elapsed = 0.0
            p.started = p.finished = None
        self._marks = {"start": self._now()}

    def _end(self):
        end, m = self._now(), self._marks
        nan = float("nan")
        assign = sum(p.elapsed for p in self.assign.values())
        storage = self.trainer.storage
        record = {
            "iteration": end - m["start"],
            "data": storage.history("data_time").latest() if "data_time" in storage.histories() else nan,
            "preprocess": m.get("backbone<", nan) - m.get("model<", nan),
            "backbone": m.get("backbone>", nan) - m.get("backbone<", nan),
            "head": m.get("head>", nan) - m.get("head<", nan),
            "assign": assign,
            "losses": self.forward_training.elapsed - assign,
            "backward": (self.write_metrics.started or nan) - m.get("model>", nan),
            "step": self.step.elapsed,
        }
        record["other"] = record["iteration"] - sum(record[p] for p in PHASES if p != "other")
        record["metrics"] = self.write_metrics.elapsed
        record["hooks"] = 0.0
        for h, before, after in self.hooks:
            key = f"hook:{type(h).__name__}"
            record[key] = record.get(key, 0.0) + before.elapsed + after.elapsed
            record["hooks"] += before.elapsed + after.elapsed
        self.records.append(record)
        if len(self.records) >= self.stop_after:
            raise _Stop()

    def remove(self):
        """Take every probe away (the trainer's model, loop, optimizer and hooks as before)."""
        for handle in self._handles:
            handle.remove()
        remove_assign_proxies(self.model, self.assign)
        del self.model.forward_training, self.loop._write_metrics
        self.loop.optimizer.step = self.step.fn
        for h, _, _ in self.hooks:
            del h.before_step, h.after_step
        self.trainer._hooks = [h for h in self.trainer._hooks if h not in (self._first, self._last)]


def _quiet_logging(verbose: bool):
    """The loggers ``train_net.py`` sets up (detectron2's ``setup_logger`` for detectron2, fvcore
    and d2_anchorfree), their console output at WARNING unless ``verbose``: the trainer still
    formats and emits its periodic lines, as in a real run."""
    from detectron2.utils.logger import setup_logger

    for name in ("detectron2", "fvcore", "d2_anchorfree"):
        logger = setup_logger(name=name, abbrev_name="d2" if name == "detectron2" else name)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not verbose:
                handler.setLevel(logging.WARNING)


def run_trainer(config: str, opts: List[str], warmup: int, iters: int) -> Dict:
    """Build the trainer of ``config`` + ``opts`` as ``train_net.py`` does and time
    ``warmup + iters`` iterations of ``trainer.train()``.

    Returns:
        {"records": the ``iters`` timed records (:class:`IterationProbe`), "images": images per
        iteration (``SOLVER.IMS_PER_BATCH``), "workers": ``DATALOADER.NUM_WORKERS``, "threads":
        ``torch.get_num_threads()``, "device", "load": [1-minute load average before, after]}.

    Raises:
        ValueError: ``warmup + iters`` > ``SOLVER.MAX_ITER`` (the run would end first).
    """
    from detectron2.utils.env import seed_all_rng

    from d2_anchorfree.engine import AnchorFreeTrainer, setup_cfg

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="d2af_train_loop_") as out:
        cfg = setup_cfg(SimpleNamespace(config_file=config, opts=list(opts) + ["OUTPUT_DIR", out]),
                        default_setup_logging=False)
        if warmup + iters > cfg.SOLVER.MAX_ITER:
            raise ValueError(f"--warmup {warmup} + --iters {iters} > SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER} of {config}; "
                             "raise SOLVER.MAX_ITER in the overrides")
        seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)  # as default_setup in train_net.py
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
        trainer = AnchorFreeTrainer(cfg)
        trainer.resume_or_load(resume=False)
        probe = IterationProbe(trainer, cfg.MODEL.DEVICE, warmup + iters)
        try:
            trainer.train()
        except _Stop:
            pass
        finally:
            probe.remove()
        records = probe.records[warmup:]
        result = {"records": records, "images": cfg.SOLVER.IMS_PER_BATCH, "workers": cfg.DATALOADER.NUM_WORKERS,
                  "threads": torch.get_num_threads(), "device": cfg.MODEL.DEVICE}
        del trainer, probe
        gc.collect()  # shuts the data-loader workers down before the next run
    result["load"] = [load_before, os.getloadavg()[0]]
    if len(records) < iters:
        raise RuntimeError(f"{config}: the trainer ended after {len(records) + warmup} iterations, not {warmup + iters}")
    return result


def summarize_entry(entry: Dict) -> Dict:
    """The row of one entry from its runs: per phase / part / hook the :func:`summarize` of its
    per-iteration values (ms), ``share`` of each phase (median / median iteration), images/s and
    ms per image over the total wall time of the timed iterations, ``mean_ms`` (every key's mean),
    loads, threads, workers."""
    records = [r for run in entry["runs"] for r in run["records"]]
    keys = sorted({k for r in records for k in r})
    row = {"label": entry["label"], "config": entry["config"], "opts": entry["opts"]}
    if "error" in entry:
        row["error"] = entry["error"]
    if not records:
        return row
    row["ms"] = {k: summarize([r[k] for r in records if k in r]) for k in keys}
    row["mean_ms"] = {k: 1000.0 * sum(r[k] for r in records if k in r) / len(records) for k in keys}
    total = sum(r["iteration"] for r in records)
    images = entry["runs"][0]["images"] * len(records)
    row["images_per_s"] = images / total
    row["ms_per_image"] = 1000.0 * total / images
    median_iteration = row["ms"]["iteration"]["median"]
    row["share"] = {k: row["ms"][k]["median"] / median_iteration for k in PHASES + OTHER_PARTS}
    row["load"] = [run["load"] for run in entry["runs"]]
    for k in ("images", "workers", "threads", "device"):
        row[k] = entry["runs"][0][k]
    return row


def table(rows: List[Dict]) -> str:
    """Markdown: per entry img/s, ms/img, the median iteration, each phase's median ms (share of
    the median iteration), ``other``'s measured parts, threads / workers and the load averages."""
    header = (["entry", "img/s", "ms/img", "iter ms"] + [f"{p} ms (%)" for p in PHASES]
              + ["of other: hooks", "metrics", "threads/workers", "load 1-min"])
    lines = []
    for r in rows:
        if "ms" not in r:
            lines.append([r["label"], r.get("error", "no iterations")[:60]] + ["-"] * (len(header) - 2))
            continue
        cell = lambda k: f"{r['ms'][k]['median']:.1f} ({100 * r['share'][k]:.0f}%)"  # noqa: E731
        loads = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in r["load"])
        lines.append([r["label"], f"{r['images_per_s']:.2f}", f"{r['ms_per_image']:.0f}",
                      f"{r['ms']['iteration']['median']:.0f}"] + [cell(p) for p in PHASES + OTHER_PARTS]
                     + [f"{r['threads']}/{r['workers']}", loads])
    return markdown_table(header, lines)


def hook_table(rows: List[Dict]) -> str:
    """Markdown: per entry and hook, the median, mean and max ms per iteration (the mean shows
    what runs every N iterations: writers, checkpoints)."""
    lines = [[r["label"], k[5:], f"{s['median']:.2f}", f"{r['mean_ms'][k]:.2f}", f"{s['max']:.1f}"]
             for r in rows for k, s in r.get("ms", {}).items() if k.startswith("hook:")]
    return markdown_table(["entry", "hook", "median ms", "mean ms", "max ms"], lines)


def argument_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--configs", type=csv, default=DEFAULT_CONFIGS,
                   help="comma list of configs (default: tiny FCOS, tiny GFL, real-time GFL)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per run (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="iterations before them, not timed (default 3)")
    p.add_argument("--rounds", type=int, default=1,
                   help="runs per entry, a fresh trainer each, the order rotated per round (default 1)")
    p.add_argument("--vs", action="append", default=[],
                   help='"KEY VALUE ..." overrides: each config runs also with them (A/B); repeatable, one variant each')
    p.add_argument("--trees", default="datasets/trees", help="the prepared tree-crown data (make data)")
    p.add_argument("--out", default="", help="write the rows, every iteration's record and the environment here (JSON)")
    p.add_argument("--verbose", action="store_true", help="print the trainer's logs")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run, KEY VALUE ...")
    return p


def main(argv=None, prog=None) -> int:
    """Run the benchmark (arguments: :func:`argument_parser`); prints the tables, writes ``--out``.

    Returns:
        0, or 1 when an entry failed (its error is in its row).
    """
    args = argument_parser(prog).parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        raise SystemExit("--iters and --rounds must be >= 1, --warmup >= 0")
    _quiet_logging(args.verbose)
    common = data_opts(args.trees) + list(args.opts)
    entries = []
    for config in args.configs:
        label = os.path.splitext(os.path.basename(config))[0]
        entries.append({"label": label, "config": config, "opts": [], "runs": []})
        for vs in args.vs:
            entries.append({"label": f"{label} + {vs}", "config": config, "opts": vs.split(), "runs": []})
    omp = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads {omp or ''}; {args.rounds} round(s) of "
          f"{args.warmup} + {args.iters} iterations; load average {os.getloadavg()}", flush=True)

    def measure(e):
        run = run_trainer(e["config"], common + e["opts"], args.warmup, args.iters)
        e["runs"].append(run)
        median = summarize([r["iteration"] for r in run["records"]])["median"]
        print(f"  {e['label']}: {median:.0f} ms per iteration, load {run['load'][0]:.1f}-{run['load'][1]:.1f}",
              flush=True)
        return {}

    interleaved(entries, args.rounds, 0, measure)
    rows = [summarize_entry(e) for e in entries]
    print("\n" + table(rows) + "\n\n" + hook_table(rows))
    if args.out:
        device = next((r["device"] for r in rows if "device" in r), "cpu")
        write_json_report(args.out, {"environment": {**environment(SimpleNamespace(device=device)), **omp},
                                     "args": vars(args), "rows": rows,
                                     "runs": {e["label"]: e["runs"] for e in entries}})
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
