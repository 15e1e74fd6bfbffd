"""The Ultralytics side of ``benchmarks/yolo_reference.py``: train YOLO11n, predict on val, export
ONNX. Runs ONLY in the private Ultralytics venv (``tools/setup_yolo_env.sh``), started by
``python -m benchmarks.yolo_reference`` as a subprocess with that venv's python; nothing of the
project imports this file or Ultralytics (AGPL-3.0: a measuring tool here, never a dependency).
Uses Ultralytics' public API only (``YOLO``, ``train``, ``predict``, ``export``, callbacks).

    <venv>/bin/python benchmarks/yolo_ref/worker.py --data DIR/data.yaml --out DIR/seed0 \\
        --epochs 84 --seed 0 --val-images val_images.txt

Writes ``<out>/worker.json``: the train call's wall seconds (and the epochs' training time alone,
from callbacks), load averages, the torch threads seen during training, the optimizer
Ultralytics chose, Ultralytics' own final validation metrics, the predictions on the val images
(per image: xyxy boxes in the image's pixels, scores, class indices), the ONNX files (raw forward
and with NMS inside the graph) and the network calls the guard refused (:mod:`netguard`: expected
empty). The weights predicted with and exported are ``last.pt`` (after the last epoch; Ultralytics
saves its EMA weights there), as our detectors use their final weights.
"""
import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netguard  # noqa: E402

netguard.install()  # before Ultralytics is imported: its import probes DNS unless YOLO_OFFLINE=1

import torch  # noqa: E402
import ultralytics  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import ONLINE, SETTINGS  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the data.yaml of the YOLO layout")
    p.add_argument("--out", required=True, help="folder for the run (Ultralytics' project/name) and worker.json")
    p.add_argument("--val-images", required=True, help="text file: one val image path a line")
    p.add_argument("--model", default="yolo11n.yaml", help="model YAML (random init)")
    p.add_argument("--epochs", type=int, default=84)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--imgsz", type=int, default=416)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the train images (tests)")
    p.add_argument("--threads", type=int, default=2, help="torch threads while training (0: Ultralytics' own)")
    p.add_argument("--conf", type=float, default=0.001, help="predict: score threshold")
    p.add_argument("--iou", type=float, default=0.7, help="predict and NMS export: NMS IoU")
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--export-conf", type=float, default=0.05, help="score threshold of the in-graph NMS")
    p.add_argument("--opset", type=int, default=0, help="ONNX opset (0: Ultralytics' choice for this torch)")
    return p.parse_args(argv)


def train(args, run_dir: str):
    """Train from the YAML; returns (info dict, path of last.pt)."""
    seen = {"epoch_seconds": [], "threads": set()}

    def set_threads(trainer):
        if args.threads:  # Ultralytics' select_device sets min(8, cores - 1) threads: 1 on a 2-core machine
            torch.set_num_threads(args.threads)
        seen["optimizer"] = None

    def epoch_start(trainer):
        seen["t"] = time.perf_counter()
        seen["threads"].add(torch.get_num_threads())

    def epoch_end(trainer):
        seen["epoch_seconds"].append(time.perf_counter() - seen["t"])
        if seen.get("optimizer") is None:
            groups = trainer.optimizer.param_groups  # what "auto" chose, not the args' defaults
            seen["optimizer"] = {"name": type(trainer.optimizer).__name__,
                                 "initial_lr": groups[0].get("initial_lr"), "betas": groups[0].get("betas"),
                                 "momentum": groups[0].get("momentum"),
                                 "weight_decay": [g.get("weight_decay") for g in groups],
                                 "accumulate": trainer.accumulate,
                                 "batches_per_epoch": len(trainer.train_loader),
                                 "train_images": len(trainer.train_loader.dataset)}

    model = YOLO(args.model, task="detect")
    model.add_callback("on_pretrain_routine_start", set_threads)
    model.add_callback("on_train_epoch_start", epoch_start)
    model.add_callback("on_train_epoch_end", epoch_end)
    train_args = dict(data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, nbs=args.batch,
                      seed=args.seed, fraction=args.fraction, deterministic=True, workers=args.workers, device="cpu", amp=False,
                      pretrained=False, plots=False, val=False, project=os.path.dirname(run_dir),
                      name=os.path.basename(run_dir), exist_ok=True, verbose=True)
    load_start = os.getloadavg()
    start = time.perf_counter()
    model.train(**train_args)
    seconds = time.perf_counter() - start
    trainer = model.trainer
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    info = {"train_seconds": seconds, "epochs_train_seconds": sum(seen["epoch_seconds"]),
            "epoch_seconds": seen["epoch_seconds"], "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "torch_threads": sorted(seen["threads"]), "optimizer": seen.get("optimizer"),
            "train_args": {k: v for k, v in train_args.items() if k not in ("project", "name")},
            "epochs_done": trainer.epoch + 1, "ultralytics_val_metrics": metrics}
    return info, os.path.join(str(trainer.save_dir), "weights", "last.pt")


def predict(weights: str, images, args):
    """[{"file": path, "boxes": [[x0, y0, x1, y1], ...], "scores": [...], "classes": [...]}, ...]."""
    model = YOLO(weights, task="detect")
    out = []
    for result in model.predict(source=list(images), imgsz=args.imgsz, conf=args.conf, iou=args.iou,
                                max_det=args.max_det, device="cpu", stream=True, verbose=False):
        boxes = result.boxes
        out.append({"file": result.path, "boxes": boxes.xyxy.tolist(), "scores": boxes.conf.tolist(),
                    "classes": [int(c) for c in boxes.cls.tolist()]})
    return out


def export(weights: str, out_dir: str, args):
    """ONNX at imgsz, batch 1, static shape: the raw forward and the graph with NMS inside."""
    files = {}
    for name, nms in (("forward", False), ("nms", True)):
        extra = dict(nms=True, conf=args.export_conf, iou=args.iou, max_det=args.max_det) if nms else {}
        if args.opset:
            extra["opset"] = args.opset
        start = time.perf_counter()
        path = YOLO(weights, task="detect").export(format="onnx", imgsz=args.imgsz, batch=1, device="cpu",
                                                   dynamic=False, **extra)
        target = os.path.join(out_dir, f"yolo11n_{name}.onnx")
        shutil.move(path, target)
        files[name] = {"path": target, "seconds": time.perf_counter() - start, "nms": nms, **extra}
    return files


def main(argv=None):
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    with open(args.val_images) as f:
        images = [line.strip() for line in f if line.strip()]
    result = {"ultralytics": ultralytics.__version__, "torch": torch.__version__, "online": ONLINE,
              "settings_sync": SETTINGS.get("sync"), "yolo_offline": os.environ.get("YOLO_OFFLINE"),
              "yolo_autoinstall": os.environ.get("YOLO_AUTOINSTALL"), "args": vars(args)}
    result["train"], last = train(args, os.path.join(out, "train"))
    result["weights"] = last
    result["predictions"] = predict(last, images, args)
    result["onnx"] = export(last, out, args)
    result["network_attempts"] = netguard.ATTEMPTS
    with open(os.path.join(out, "worker.json"), "w") as f:
        json.dump(result, f)
    print(f"worker: trained {result['train']['epochs_done']} epochs in {result['train']['train_seconds']:.1f} s, "
          f"{sum(len(p['scores']) for p in result['predictions'])} detections on {len(images)} val images, "
          f"ONNX {sorted(result['onnx'])}, network attempts {len(netguard.ATTEMPTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
