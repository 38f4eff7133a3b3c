#!/usr/bin/env bash
# One entry point for a fresh Linux machine with Python >= 3.11:
#   bash run.sh demo   set up .venv if needed, then run the main job (see README)
#   bash run.sh test   set up .venv if needed (with test extras), then run the whole test suite
#   bash run.sh serve  set up .venv if needed (with the web extra), then serve the web page (styleforge serve --help)
# Without CUDA it installs a CPU build of PyTorch (a local wheel if pip can find one, else the PyTorch CPU index),
# never the multi-gigabyte CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${STYLEFORGE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

log() { echo "[run.sh] $*" >&2; }

has_cuda() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

installed_version() { "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null; }

install_torch() {
  local pip=("$VENV/bin/python" -m pip install -q)
  if has_cuda; then
    log "CUDA found: installing PyTorch from PyPI"
    "${pip[@]}" "torch>=2.4"
  elif "${pip[@]}" --no-index --no-deps torch >/dev/null 2>&1; then
    # a wheel pip already knows locally (find-links); now fetch its dependencies by pinning that exact version
    log "installed local PyTorch wheel $(installed_version torch)"
    "${pip[@]}" "torch==$(installed_version torch)"
  else
    log "no CUDA: installing the CPU build of PyTorch from download.pytorch.org"
    "${pip[@]}" torch --index-url https://download.pytorch.org/whl/cpu
  fi
}

ensure_env() {
  local extras="$1"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { log "Python >= 3.11 is required ($PYTHON is older)"; exit 1; }
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  installed_version torch >/dev/null || install_torch
  local stamp="$VENV/.styleforge-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing styleforge[$extras] (editable)"
    local pin; pin="$(mktemp)"
    echo "torch==$(installed_version torch)" > "$pin"  # keep the torch build chosen above
    "$VENV/bin/python" -m pip install -q -c "$pin" -e ".[$extras]"
    rm -f "$pin"
    touch "$stamp"
  fi
}

case "${1:-}" in
  demo)
    ensure_env test
    shift
    exec "$VENV/bin/python" scripts/demo.py "$@"
    ;;
  test)
    ensure_env test
    shift
    exec "$VENV/bin/python" -m pytest tests "$@"
    ;;
  serve)
    ensure_env web
    shift
    exec "$VENV/bin/styleforge" serve "$@"
    ;;
  *)
    echo "usage: bash run.sh demo|test|serve [extra arguments]" >&2
    exit 2
    ;;
esac
