#!/usr/bin/env bash
# The GPU figures of issue 6 (prefopt vs TRL, step_benchmark.py) and issue 7 (full vs LoRA,
# scale_gpu.py) in one device call. Prepare the wheels first (fetch_wheels.sh), then:
#
#   run(carry=[".whl"], timeout_s=590, command="bash benchmarks/device/gpu_check.sh")
#
# Everything it prints also lands in $OUT (log + JSON), which comes back to this machine.
set -uo pipefail
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"

# Issue 6: Qwen2.5-0.5B shape, bf16, 4 pairs of 256 + 768 tokens; one fresh process per mode.
timeout 220 python3 benchmarks/step_benchmark.py --model qwen2.5-0.5b --device cuda --dtype bfloat16 \
    --pairs 4 --prompt-len 256 --completion-len 768 --steps 10 --warmup 3 --repeats 1 \
    --modes sft dpo_online dpo_cached trl trl_precomputed --json "$out/step_benchmark.json"
# The logits chunk for the GPU presets (they pin 1024; the code default is 512).
timeout 60 python3 benchmarks/step_benchmark.py --model qwen2.5-0.5b --device cuda --dtype bfloat16 \
    --pairs 4 --prompt-len 256 --completion-len 768 --steps 10 --warmup 3 --repeats 1 \
    --chunk-size 1024 --modes dpo_cached --json "$out/chunk1024.json"
# Issue 7: full fine-tuning vs LoRA on the same shape.
# Issue 14: HH-shaped ragged batches (prompt ~72% of a pair's tokens), shared prompts and
# padding-free rows against today's layout and TRL, pairs/s and peak memory.
timeout 180 python3 benchmarks/step_benchmark.py --model qwen2.5-0.5b --device cuda --dtype bfloat16 \
    --pairs 8 --prompt-len 176 --completion-len 72 --ragged --steps 10 --warmup 3 --repeats 1 \
    --modes dpo_online dpo_shared dpo_packed trl --json "$out/step_hh.json"
timeout 100 python3 benchmarks/scale_gpu.py
