#!/usr/bin/env bash
# The one command the lent GPU machine runs, from the repository root, with .whl/ carried
# (bash benchmarks/gpu/fetch_wheels.sh fills it here):
#
#   bash benchmarks/gpu/run.sh "$OUT"          # writes $OUT/gpu.json; add --quick for the CPU sizes
#
# It installs the carried wheels without the network into /tmp/site, puts them and this checkout
# on PYTHONPATH (litlab is not pip-installed there) and runs benchmarks/gpu/measure.py, which
# time-boxes every step so the whole stays under 8 minutes. It also runs on a CPU machine,
# where the steps that need CUDA are skipped.
set -u
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu/run.sh OUTDIR [--quick]" >&2
    exit 2
fi
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
site=/tmp/site
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        || { echo "run.sh: installing the carried wheels in .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "run.sh: no wheels in .whl/ (bash benchmarks/gpu/fetch_wheels.sh fetches them); using what $PYTHON has" >&2
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true
exec "$PYTHON" benchmarks/gpu/measure.py "$@"
