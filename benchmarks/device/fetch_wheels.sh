#!/usr/bin/env bash
# Fetch, here, the Python packages the GPU check needs that the device image lacks, as wheels
# for its Python 3.12 on x86-64 Linux, into .whl/ (git-ignored). The device machine has no
# network: `run` carries .whl/ over and benchmarks/device/gpu_check.sh installs it there.
#
#   bash benchmarks/device/fetch_wheels.sh       # then: run(carry=[".whl"], command=...)
#
# The image already has torch, triton, transformers, accelerate, lightning, peft, pandas,
# huggingface-hub, xxhash and fsspec (see /work/.library/device/KINDS.md). Its pyarrow may be
# older than datasets 5.2 needs, so pyarrow travels too (about 48 MB of the 64 MiB a call may
# carry). Versions are the ones this repository's CI resolves: both machines run the same TRL.
set -euo pipefail
cd "$(dirname "$0")/../.."

wheels=(
    trl==1.16.0
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pyarrow==25.0.1
    hydra-core==1.3.2 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
)
mkdir -p .whl
python3 -m pip download --quiet --no-deps --dest .whl --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any "${wheels[@]:0:7}"
# antlr4's runtime ships as an sdist only: build its (pure-Python) wheel here.
python3 -m pip wheel --quiet --no-deps --wheel-dir .whl antlr4-python3-runtime==4.9.3
# Issue 21's optional kernels, each only as a ready wheel for the device's Python (nothing is
# built here: flash-attn's CUDA build takes hours) and only if it fits the carry with the rest;
# gpu_check.sh skips the rows of a package that did not come.
optional() {  # optional NAME==VERSION LIMIT_MB
    local got
    got=$(mktemp -d)
    if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$got" \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform linux_x86_64 \
        --platform any "$1" 2>/dev/null; then
        echo "no wheel of $1 for Python 3.12 on the registry: gpu_check.sh skips its rows"
    fi
    for wheel in "$got"/*.whl; do
        [ -e "$wheel" ] || continue
        if [ "$(du -m "$wheel" | cut -f1)" -gt "$2" ]; then
            echo "$(basename "$wheel") is over $2 MB, too big to carry: gpu_check.sh skips its rows"
        else
            mv "$wheel" .whl/
        fi
    done
    rm -rf "$got"
}
optional liger-kernel==0.8.5 5     # pure Python (Triton kernels): triton is on the device
optional flash-attn 10             # CUDA wheels are published on GitHub, not on the registry
du -sh .whl && ls .whl
