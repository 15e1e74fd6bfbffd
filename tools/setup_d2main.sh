#!/usr/bin/env bash
# Build (or reuse) detectron2 *main* with its compiled C++ ops (detectron2._C), for testing
# d2_anchorfree against detectron2 main next to v0.6. Tests and CI only: the project never needs it.
#
#   D2MAIN_ARCHIVE  detectron2 source archive (default: ../shared/third_party/detectron2-02b5c4e.tar.gz
#                   next to the clone; a `git archive` of upstream commit 02b5c4e, see its README).
#   D2AF_VENV       the project environment whose python (and torch) builds and runs it
#                   (default ~/.cache/d2af/venv, made by tools/setup_env.sh; not modified here).
#   D2MAIN_CACHE    where builds are kept (default ~/.cache/d2af, outside the clone).
#
# Built the way users build it from source (`pip install` of the source tree, no build isolation,
# so against the environment's torch), but with `--target` into its own folder
# $D2MAIN_CACHE/d2main-<sha256 of the archive> instead of into the venv: put that folder first on
# PYTHONPATH and `import detectron2` gives main with `detectron2._C`, while the venv keeps v0.6.
# A changed archive gives a new sha256, hence a rebuild; older d2main-* builds are removed.
# CPU build: FORCE_CUDA is unset and GPUs are hidden during the build, so only the C++ extension
# (CppExtension) is compiled, with MAX_JOBS = number of CPUs when ninja is available.
#
# Prints the folder to put on PYTHONPATH (last line of stdout); progress goes to stderr.
# Exit status 1 with a message naming the path when the archive or the venv is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE="${D2MAIN_ARCHIVE:-../shared/third_party/detectron2-02b5c4e.tar.gz}"
VENV="${D2AF_VENV:-$HOME/.cache/d2af/venv}"
CACHE="${D2MAIN_CACHE:-$HOME/.cache/d2af}"
PY="$VENV/bin/python"
[ -f "$ARCHIVE" ] || { echo "[setup_d2main] archive not found: $ARCHIVE" >&2; exit 1; }
[ -x "$PY" ] || { echo "[setup_d2main] no environment at $VENV (run tools/setup_env.sh first)" >&2; exit 1; }

sha=$(sha256sum "$ARCHIVE" | cut -d' ' -f1)
DEST="$CACHE/d2main-$sha"
STAMP="$DEST/.d2af-built"
check() {  # $1: folder; fails unless it provides detectron2 with its compiled ops, from that folder
  PYTHONPATH="$1" "$PY" - "$1" <<'EOF'
import os, sys
import detectron2, detectron2._C  # noqa: F401  (the compiled ops must load against this torch)
where = os.path.realpath(os.path.dirname(detectron2.__file__))
want = os.path.realpath(os.path.join(sys.argv[1], "detectron2"))
if where != want:
    sys.exit(f"[setup_d2main] detectron2 imported from {where}, expected {want}")
print(f"[setup_d2main] detectron2 {detectron2.__version__} with _C at {where}", file=sys.stderr)
EOF
}
if [ -f "$STAMP" ] && check "$DEST" >&2; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/d2main-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
tar xzf "$ARCHIVE" -C "$work/src"
echo "[setup_d2main] building detectron2 from $ARCHIVE (sha256 $sha) with $PY (C++ ops, CPU)" >&2
start=$(date +%s)
(
  cd "$work/src"
  unset FORCE_CUDA
  export CUDA_VISIBLE_DEVICES="" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    --target "$work/site" . >&2
)
echo "[setup_d2main] build took $(( $(date +%s) - start )) s" >&2
check "$work/site" >&2
touch "$work/site/.d2af-built"
for old in "$CACHE"/d2main-*; do  # builds of other archives, and a failed earlier attempt
  case "$old" in "$work") ;; *) [ -d "$old" ] && rm -rf "$old" ;; esac
done
mv "$work/site" "$DEST"
echo "$DEST"
