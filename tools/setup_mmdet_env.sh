#!/usr/bin/env bash
# Create (or reuse) the MMDetection reference venv: mmdet 3.3.0 / mmengine 0.10.7 / mmcv-lite 2.1.0
# with numpy 1.26, used only to dump reference checkpoints and outputs of MMDetection's own models
# (tests/mmdet_ref/dump_reference.py) for the converter's parity tests (tests/checkpoint/test_mmdet_parity.py;
# `make test` builds it). Not used by the library itself.
#   D2AF_MMDET_VENV  where it lives (default ~/.cache/d2af/venv-mmdet). Rebuilt when
#                    requirements-mmdet.txt changes (stamp file, as tools/setup_env.sh does).
#   D2AF_VENV        the project venv to borrow torch/torchvision (and opencv, scipy, matplotlib,
#                    pycocotools, ...) from; when unset or missing, `bash tools/setup_env.sh` makes it.
# torch is NOT downloaded again: a .pth file in the new venv's site-packages appends the project
# venv's site-packages to sys.path, so its own numpy<2 shadows the project's numpy 2. Packages are
# installed with --no-deps from the fully pinned list. Every run ends with an import check of that
# layout (numpy 1.x wins, torch/torchvision/cv2/scipy/matplotlib/pycocotools work with it, and
# mmdet.models imports with the mmcv.ops shim). Logs go to stderr; prints the venv path last.
# A fresh build took 17 s on the 2-core dev machine with an empty pip cache (about 25 MB of
# wheels); a run with nothing to do takes about 5 s (the import check).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${D2AF_MMDET_VENV:-$HOME/.cache/d2af/venv-mmdet}"
source tools/private_venv.sh
private_venv "$VENV" requirements-mmdet.txt setup_mmdet_env
# Check the layout: numpy 1.x from this venv, compiled packages of the project venv usable with it.
"$VENV/bin/python" - <<'PY' >&2
import sys
sys.path.insert(0, "tests/mmdet_ref")
import numpy as np
assert np.__version__.startswith("1."), f"numpy {np.__version__} from {np.__file__}: numpy<2 must win"
import torch, torchvision, cv2, scipy.optimize, matplotlib, pycocotools.mask, shapely  # noqa: E401
t = torch.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
assert float(t.numpy().sum()) == 15.0
keep = torchvision.ops.nms(torch.tensor([[0, 0, 10, 10.], [1, 1, 10, 10]]), torch.tensor([.9, .8]), .5)
assert keep.tolist() == [0]
assert cv2.resize(np.zeros((4, 4, 3), np.uint8), (2, 2)).shape == (2, 2, 3)
assert scipy.optimize.linear_sum_assignment(np.eye(2))[0].tolist() == [0, 1]
pycocotools.mask.encode(np.asfortranarray(np.ones((2, 2), np.uint8)))
import mmcv_ops_shim
mmcv_ops_shim.install()
import mmdet, mmdet.models, mmengine, mmcv  # noqa: E401,F401
print(f"[setup_mmdet_env] ok: numpy {np.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, cv2 {cv2.__version__}, mmdet {mmdet.__version__}, "
      f"mmengine {mmengine.__version__}, mmcv {mmcv.__version__}")
PY
echo "$VENV"
