#!/usr/bin/env bash
# Downloads, here, the wheels litlab needs on the lent GPU machine and that machine lacks, into .whl/
# (git-ignored; it travels with the working tree when a device call carries it). That machine has no
# network and its own Python 3.12 with torch, Lightning, torchvision, timm, transformers, peft,
# torchmetrics, rich, scikit-learn and safetensors, but not jsonargparse (LightningCLI's parser) and
# not its `signatures` extra: docstring-parser and typeshed-client (whose typing-extensions is
# there already; jsonargparse's own typing-extensions extra is for Python below 3.11). wandb is not
# carried: WANDB_MODE=disabled leaves it out. Each is pinned to the version in this venv, so both
# machines run the parser the suite passed with.
#
#   bash benchmarks/gpu/fetch_wheels.sh            # PYTHON=... to read the versions from another venv
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
PACKAGES=(jsonargparse docstring-parser typeshed-client)
LIMIT_MB=50

pins=()
for name in "${PACKAGES[@]}"; do
    version=$("$PYTHON" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
    if [ -z "$version" ]; then
        echo "fetch_wheels: $name is not installed in $PYTHON's environment; install litlab there first (make test builds .venv)." >&2
        exit 1
    fi
    pins+=("$name==$version")
    # One version of each: two wheels of one name stop the whole install there.
    norm=$(echo "$name" | tr '-' '_')
    rm -f .whl/"$norm"-*.whl
done

mkdir -p .whl
# --no-deps: each need is named above; cp312 and x86-64 manylinux, which that machine accepts
# (these three are pure Python, so py3-none-any wheels match).
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"

ls -l .whl/*.whl
bytes=$(cat .whl/*.whl | wc -c)
echo "fetch_wheels: ${pins[*]} -> .whl/, $(ls .whl/*.whl | wc -l) wheels, $((bytes / 1024)) KiB in all"
if [ "$bytes" -gt $((LIMIT_MB * 1024 * 1024)) ]; then
    echo "fetch_wheels: .whl/ holds more than $LIMIT_MB MB; the working tree a device call carries is limited to 64 MiB." >&2
    exit 1
fi
