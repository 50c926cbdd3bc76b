#!/usr/bin/env bash
# Prepare, on the CPU machine, what bench/gpu_check.py needs on the lent GPU machine, which has
# no network: POT (the GPU peer) as a wheel for its Python 3.12, in .whl/ (git-ignored locally).
# Then make ONE device call (see bench/results/gpu.md):
#   carry [".whl"], command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site; PYTHONUNBUFFERED=1 python3 bench/gpu_check.py 2>&1 | tee $OUT/gpu_check.log
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
POT_VERSION=$(python3 -c "import ot; print(ot.__version__)" 2>/dev/null || echo 0.9.7.post1)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "pot==${POT_VERSION}"
ls -la .whl
