#!/usr/bin/env bash
# The GPU checks in one command, under 8 minutes on one H200 (benchmarks/gpu.py says what):
#   benchmarks/gpu.sh                                      # install, then --device cuda
#   benchmarks/gpu.sh --no-install --device cpu --quick    # the same path on a CPU, tiny
# Installs as the README's Quickstart does (pip install -e ".[test]"), without build
# isolation so that an offline machine with torch already there needs no download; where
# pip cannot, the checkout itself is put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
install=1
args=()
for arg in "$@"; do
  if [ "$arg" = "--no-install" ]; then install=0; else args+=("$arg"); fi
done
if [ "$install" = 1 ]; then
  echo "+ pip install --no-build-isolation -e .[test]" >&2
  pip install -q --no-build-isolation -e ".[test]" >&2 ||
    echo "warning: pip install failed; running from the checkout (PYTHONPATH)" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python benchmarks/gpu.py "${args[@]}"
