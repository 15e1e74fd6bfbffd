#!/usr/bin/env python
"""Install detectron2 v0.6 from its official Python sources, fixed for today's Pillow/setuptools/torch.

Why this exists: no package registry we reach has a detectron2 wheel. PyPI publishes upstream's
v0.6 Python sources as ``pb1-detectron2==0.6`` (file by file identical to the v0.6 tag), but without
the C++/CUDA sources of ``detectron2._C``, so its own build fails. d2_anchorfree never needs
``detectron2._C`` (it uses torchvision's ``nms`` / ``deform_conv2d``), so we install the Python
sources only, after a few minimal text fixes listed in ``PATCHES`` (each names the upstream file).

Behaviour (idempotent):
  * a complete detectron2 (with ``detectron2._C``) is already importable -> use it, do nothing;
  * a detectron2 installed by this script (marker module ``detectron2/_d2af_patched.py``) -> do nothing;
  * otherwise download the sdist with ``pip download``, apply ``PATCHES``, and
    ``pip install --no-deps`` it into the running interpreter's environment.

Usage: ``python tools/install_detectron2.py [--force]``. Raises SystemExit with a message naming
the file whose expected upstream text was not found (i.e. not the v0.6 sources).
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"
MARKER = "_d2af_patched.py"  # a .py file so that setup.py packages it

# (upstream file, text in v0.6, replacement, why). Applied only when the old text is present;
# a file that already holds the replacement is left alone, so re-running is harmless.
PATCHES = [
    # --- detectron2._C is absent: make its import lazy-failing instead of failing at import time.
    ("detectron2/layers/deform_conv.py", "from detectron2 import _C\n",
     "try:\n    from detectron2 import _C\nexcept ImportError:  # d2_anchorfree: no compiled ops\n    _C = None\n",
     "detectron2.layers imports _C at import time; only DeformConv's own forward needs it"),
    ("detectron2/layers/rotated_boxes.py", "from detectron2 import _C\n",
     "try:\n    from detectron2 import _C\nexcept ImportError:  # d2_anchorfree: no compiled ops\n    _C = None\n",
     "detectron2.layers imports _C at import time; only rotated-box IoU needs it"),
    ("detectron2/layers/roi_align_rotated.py", "from detectron2 import _C\n",
     "try:\n    from detectron2 import _C\nexcept ImportError:  # d2_anchorfree: no compiled ops\n    _C = None\n",
     "detectron2.layers imports _C at import time; only ROIAlignRotated needs it"),
    ("detectron2/evaluation/fast_eval_api.py", "from detectron2 import _C\n",
     "try:\n    from detectron2 import _C\nexcept ImportError:  # d2_anchorfree: no compiled ops\n    _C = None\n",
     "detectron2.evaluation imports _C at import time; COCOEvaluator(use_fast_impl=False) never uses it"),
    # --- Pillow 10 removed Image.LINEAR (it was an alias of BILINEAR).
    ("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR",
     "Pillow>=10 removed the Image.LINEAR alias"),
    # --- setuptools 81 removed pkg_resources.
    ("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "",
     "setuptools>=81 removed pkg_resources"),
    ("detectron2/model_zoo/model_zoo.py",
     'cfg_file = pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
     'cfg_file = os.path.join(os.path.dirname(__file__), "configs", config_path)',
     "setuptools>=81 removed pkg_resources; the configs ship inside detectron2/model_zoo"),
    # --- today's torch: nn.GroupNorm(32, 1) raises (1 channel is not divisible into 32 groups).
    ("detectron2/modeling/meta_arch/retinanet.py", "norm_name = str(type(get_norm(norm, 1)))",
     "norm_name = str(type(get_norm(norm, 32)))",
     "get_norm('GN', 1) builds GroupNorm(32, 1), an error on torch>=1.x; only its type is used"),
    # --- NumPy 2 removed the np.bool alias (used when an image has no polygon masks).
    ("detectron2/structures/masks.py", ".astype(np.bool)", ".astype(bool)",
     "NumPy>=1.24 removed np.bool"),
    # --- build: no C++ sources in the sdist; ship the model-zoo configs that are already inside.
    ("setup.py", "ext_modules=get_extensions(),", "ext_modules=[],",
     "the sdist lacks detectron2/layers/csrc, so the extension cannot be built"),
    ("setup.py",
     'config_paths = glob.glob("configs/**/*.yaml", recursive=True) + glob.glob(\n        "configs/**/*.py", recursive=True\n    )',
     'config_paths = [path.relpath(p, "detectron2/model_zoo") for p in glob.glob(\n        "detectron2/model_zoo/configs/**/*.*", recursive=True)]',
     "the sdist has the configs under detectron2/model_zoo/configs, not at the top level"),
    ("setup.py",
     '            "panopticapi @ https://github.com/cocodataset/panopticapi/archive/master.zip",\n',
     "", "a direct-URL extra that pip refuses for an sdist from an index; not needed"),
]


def _has_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installed_state():
    """Return 'complete', 'patched' or None for the detectron2 visible to this interpreter."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or spec.origin is None:
        return None
    pkg_dir = os.path.dirname(spec.origin)
    if os.path.exists(os.path.join(pkg_dir, MARKER)):
        return "patched"
    if _has_module("detectron2._C"):
        return "complete"
    return None


def apply_patches(src_root):
    """Apply PATCHES to an extracted sdist at ``src_root``; idempotent. Raises SystemExit."""
    for rel, old, new, why in PATCHES:
        fname = os.path.join(src_root, rel)
        with open(fname, encoding="utf-8") as f:
            text = f.read()
        if old in text:
            text = text.replace(old, new)
            with open(fname, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"[install_detectron2] patched {rel}: {why}")
        elif new and new in text:
            print(f"[install_detectron2] already patched {rel}")
        else:
            raise SystemExit(
                f"[install_detectron2] {rel}: expected v0.6 text not found ({old[:60]!r}); "
                "is this detectron2 v0.6?"
            )
    with open(os.path.join(src_root, "detectron2", MARKER), "w") as f:
        f.write('"""detectron2 v0.6 Python sources patched by d2_anchorfree tools/install_detectron2.py."""\n')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args()
    state = installed_state()
    if state and not args.force:
        print(f"[install_detectron2] detectron2 already installed ({state}); nothing to do")
        return
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as tmp:
        # pip>=25.1 refuses to even download this sdist (its 'all' extra has a direct URL), and
        # its setup.py imports torch, hence the pinned pip and --no-build-isolation.
        subprocess.check_call(pip + ["install", "-q", "pip==25.0"])
        subprocess.check_call(pip + ["download", "-q", "--no-deps", "--no-build-isolation",
                                     "--no-binary", ":all:", SDIST, "-d", tmp])
        sdists = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        if len(sdists) != 1:
            raise SystemExit(f"[install_detectron2] expected one sdist in {tmp}, got {sdists}")
        with tarfile.open(os.path.join(tmp, sdists[0])) as tar:
            tar.extractall(tmp, filter="data")
        src_root = os.path.join(tmp, sdists[0][: -len(".tar.gz")])
        apply_patches(src_root)
        subprocess.check_call(pip + ["install", "-q", "--no-deps", "--no-build-isolation", src_root])
    state = installed_state()
    if state != "patched":
        raise SystemExit(f"[install_detectron2] install finished but detectron2 state is {state}")
    print("[install_detectron2] detectron2 v0.6 (Python sources, patched) installed")


if __name__ == "__main__":
    main()
