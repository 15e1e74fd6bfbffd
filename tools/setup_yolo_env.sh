#!/usr/bin/env bash
# Create (or reuse) the Ultralytics reference venv: ultralytics 8.4.190 (pinned, requirements-yolo.txt),
# used only as a measuring tool by benchmarks/yolo_reference.py (YOLO11n trained on the same data
# as our detectors, side by side). Ultralytics is AGPL-3.0: it lives only in this private venv,
# d2_anchorfree never imports it, it is no dependency of pyproject.toml and no code of it is copied.
#   D2AF_YOLO_VENV  where it lives (default ~/.cache/d2af/venv-yolo). Rebuilt when
#                   requirements-yolo.txt changes (stamp file, as tools/setup_env.sh does).
#   D2AF_VENV       the project venv to borrow torch/torchvision (and numpy, opencv, matplotlib,
#                   scipy, onnx, onnxruntime, ...) from; when unset or missing, `bash tools/setup_env.sh` makes it.
# torch is NOT downloaded again: a .pth file in the new venv's site-packages appends the project
# venv's site-packages to sys.path, so pip sees torch as installed. The pinned list is installed with
# --no-deps (pip would otherwise pull opencv-python next to the project's opencv-python-headless,
# which provides the same cv2). Ultralytics' settings live in $D2AF_YOLO_VENV/config (YOLO_CONFIG_DIR)
# with sync (analytics, crash reports) and every logger integration off; a stand-in Arial.ttf
# (matplotlib's DejaVu Sans) there keeps its font check from downloading one. The benchmark runs it
# with YOLO_OFFLINE=1 (no DNS probe at import, no update check, no auto-install) and
# YOLO_AUTOINSTALL=false. Every run ends with a check: every requirement of the pinned packages is
# met (opencv-python by opencv-python-headless), and ultralytics imports with these settings without
# a single network call (a socket guard refuses and reports any). Logs go to stderr; prints the
# venv path last. A fresh build took 28 s on the 2-core dev machine (about 220 MB installed,
# 170 MB of it polars' runtime); a run with nothing to do takes about 8 s.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${D2AF_YOLO_VENV:-$HOME/.cache/d2af/venv-yolo}"
source tools/private_venv.sh  # the venv, the pinned list with --no-deps, the .pth file
private_venv "$VENV" requirements-yolo.txt setup_yolo_env
mkdir -p "$VENV/config/Ultralytics" "$VENV/config/runs" "$VENV/config/weights" "$VENV/config/datasets"
# Settings and the layout check, offline; benchmarks/yolo_ref/netguard.py refuses and records any
# connection or name lookup that is not local.
YOLO_CONFIG_DIR="$VENV/config" YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false YOLO_VERBOSE=false \
  "$VENV/bin/python" - "$VENV/config" requirements-yolo.txt "$PROJECT_SITE" <<'PY' >&2
import sys
sys.path.insert(0, "benchmarks/yolo_ref")
import netguard
netguard.install()
import os, shutil
from importlib import metadata
from packaging.requirements import Requirement

config = sys.argv[1]
# every requirement of the pinned packages is met (extras and markers evaluated)
pinned = [line.split("==")[0].strip() for line in open(sys.argv[2]) if "==" in line and not line.startswith("#")]
SAME = {"opencv-python": "opencv-python-headless"}  # the same cv2 module
missing = []
for dist in pinned:
    assert metadata.version(dist), dist
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = SAME.get(req.name, req.name)
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(f"{dist} needs {req} (not installed)")
            continue
        if req.name not in SAME and req.specifier and not req.specifier.contains(have, prereleases=True):
            missing.append(f"{dist} needs {req}, found {have}")
if missing:
    sys.exit("[setup_yolo_env] unmet requirements:\n  " + "\n  ".join(missing))
import matplotlib
font = os.path.join(config, "Ultralytics", "Arial.ttf")
if not os.path.isfile(font):  # check_font() would otherwise download Arial.ttf (only plots use it)
    shutil.copyfile(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), font)
import numpy as np, torch, torchvision, cv2, onnx, onnxruntime, onnxslim  # noqa: E401,F401
import ultralytics
from ultralytics import settings
from ultralytics.utils import ONLINE
settings.update({"sync": False, "api_key": "", "clearml": False, "comet": False, "dvc": False, "mlflow": False,
                 "raytune": False, "tensorboard": False, "wandb": False, "vscode_msg": False, "openvino_msg": False,
                 "datasets_dir": os.path.join(config, "datasets"), "weights_dir": os.path.join(config, "weights"),
                 "runs_dir": os.path.join(config, "runs")})
assert not ONLINE, "YOLO_OFFLINE=1 did not make Ultralytics offline"
assert torch.__file__.startswith(sys.argv[3] + os.sep), f"torch from {torch.__file__}, not the project venv {sys.argv[3]}"
assert not netguard.ATTEMPTS, f"network calls while importing ultralytics: {netguard.ATTEMPTS}"
print(f"[setup_yolo_env] ok: ultralytics {ultralytics.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, numpy {np.__version__}, cv2 {cv2.__version__}, onnx {onnx.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, onnxslim {onnxslim.__version__}; settings {settings.file} (sync off)")
PY
echo "$VENV"
