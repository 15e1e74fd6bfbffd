# Sourced by tools/setup_mmdet_env.sh and tools/setup_yolo_env.sh: a private reference venv that
# borrows torch (and the rest of the project venv) instead of downloading it again.
#   private_venv VENV REQUIREMENTS TAG
# VENV is (re)built with the project venv's interpreter (same base Python: torch's ABI) when missing
# or when REQUIREMENTS changed (stamp file), installing the pinned list with --no-deps: the list is
# the whole closure minus what the project venv provides, so pip must not pull opencv-python,
# matplotlib, scipy or torch into it. Each call (re)writes a .pth file in VENV's site-packages that
# appends the project venv's site-packages to sys.path (a moved project venv is followed); VENV's
# own packages come first. The project venv is D2AF_VENV, made by tools/setup_env.sh when unset or
# missing. Sets PROJECT_VENV, PROJECT_PY and PROJECT_SITE; logs to stderr with the prefix [TAG].
private_venv() {
  local venv="$1" requirements="$2" tag="$3"
  PROJECT_VENV="${D2AF_VENV:-}"
  if [ -z "$PROJECT_VENV" ] || [ ! -x "$PROJECT_VENV/bin/python" ]; then
    PROJECT_VENV=$(bash tools/setup_env.sh | tail -n 1)
  fi
  PROJECT_PY="$PROJECT_VENV/bin/python"
  local stamp="$venv/.d2af-$(basename "$requirements" .txt).sha256"
  local want
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[$tag] creating $venv (torch borrowed from $PROJECT_VENV)" >&2
    "$PROJECT_PY" -m venv --clear "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "pip==25.0" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$requirements" >&2
    echo "$want" > "$stamp"
  fi
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  PROJECT_SITE=$("$PROJECT_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$PROJECT_SITE" > "$site/d2af_project_venv.pth"
}
