#!/usr/bin/env bash
# Builds mmcv 2.1.0 with its compiled CPU ops for the torch installed in the given venv, into a
# wheelhouse keyed by that torch version (pip's own cache keys mmcv only by sdist and Python tag,
# so a wheel built against another torch would be reused and crash). Prints the wheel's path.
#   usage: scripts/build_mmcv.sh VENV_PYTHON
set -euo pipefail
python=${1:?usage: build_mmcv.sh VENV_PYTHON}
mmcv_version=2.1.0
torch_version=$("$python" -c "import torch; print(torch.__version__)")
wheelhouse="${HST_FAST_WHEELHOUSE:-$HOME/.cache/hst_fast/wheels}/torch-${torch_version}"
mkdir -p "$wheelhouse"
wheel=$(ls "$wheelhouse"/mmcv-${mmcv_version}-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "building mmcv ${mmcv_version} against torch ${torch_version} (about 6 minutes on 2 cores)..." >&2
  # -O2 must be restated: CFLAGS replaces Python's default flags. mmcv's setup.py needs
  # pkg_resources, hence setuptools < 82 in the venv and no build isolation.
  MMCV_WITH_OPS=1 FORCE_CUDA=0 CFLAGS="-O2 -g0 -DNDEBUG" MAX_JOBS="$(nproc)" \
    "$python" -m pip wheel --no-build-isolation --no-deps --no-cache-dir -q \
    "mmcv==${mmcv_version}" -w "$wheelhouse" >&2
  wheel=$(ls "$wheelhouse"/mmcv-${mmcv_version}-*.whl | head -n 1)
fi
echo "$wheel"
