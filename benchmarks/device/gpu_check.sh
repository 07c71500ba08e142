#!/usr/bin/env bash
# The GPU figures of the benchmark issues in one device call each (a call may run 600 s at
# most). Prepare the wheels first (fetch_wheels.sh), then:
#
#   run(carry=[".whl"], timeout_s=590, command="bash benchmarks/device/gpu_check.sh")      # issue 21
#   run(carry=[".whl"], timeout_s=590, command="bash benchmarks/device/gpu_check.sh 6 7 14")
#   run(carry=[".whl"], timeout_s=300, command="bash benchmarks/device/gpu_check.sh correct")
#
# Sections: 21 (the default: attention kernels, compile and Liger against TRL 1.16, ~530 s);
# 6 (prefopt vs TRL, 256 + 768 tokens), 7 (full vs LoRA, scale_gpu.py), 14 (HH-shaped shared
# prompts and padding-free rows): together ~560 s; correct (gpu_correctness.py: flash_varlen
# over several packed rows, flex after an inference_mode reference with the policy's backward,
# fsdp + loop=online refused; ~60 s, may run with any other section). Each step has its own `timeout`, most
# important first, so a slow step costs only itself and every finished step keeps its JSON.
# Everything it prints also lands in $OUT (log, JSON, ratio table), which comes back here.
set -uo pipefail
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
sections=("${@:-21}")

if [ -d .whl ]; then
    timeout 35 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"

bench() {  # bench SECONDS NAME ARGS...: one step_benchmark.py call on the Qwen2.5-0.5B shape, bf16
    local budget=$1 name=$2
    shift 2
    echo "== $name (at most ${budget}s)"
    timeout "$budget" python3 benchmarks/step_benchmark.py --model qwen2.5-0.5b --device cuda \
        --dtype bfloat16 --steps 10 --warmup 3 --repeats 1 --json "$out/$name.json" "$@" ||
        echo "== $name: stopped (exit $?): no JSON from it"
}

has() { python3 -c "import $1" 2>/dev/null; }

for section in "${sections[@]}"; do
    case "$section" in
    21)
        # Issue 21: HH-shaped ragged batches (prompt ~72% of a pair's tokens). The headline first:
        # packed shared-prompt rows under FlexAttention's block mask against TRL, online reference.
        hh=(--pairs 8 --prompt-len 176 --completion-len 72 --ragged)
        bench 110 hh_flex "${hh[@]}" --attention flex --modes dpo_packed trl
        # Padded pairs under the dense SDPA path (the layout before issue 21), the cached
        # reference, and TRL's precomputed reference.
        bench 100 hh_padded "${hh[@]}" --attention sdpa --modes dpo_online dpo_cached trl_precomputed
        # Long context: prompt 1,536 + completion 512 (shared prompts save most here).
        bench 100 long_flex --pairs 4 --prompt-len 1536 --completion-len 512 --attention flex \
            --modes dpo_packed trl
        # Padding-free rows through flash-attn's varlen kernel, where its wheel installed.
        if has flash_attn; then
            bench 60 hh_flash_varlen "${hh[@]}" --attention flash_varlen --modes dpo_packed dpo_padfree
        else
            echo "== hh_flash_varlen: skipped (flash-attn is not installed: fetch_wheels.sh found no wheel)"
        fi
        # The policy's decoder layers compiled (the warm-up steps absorb the compilation).
        bench 80 hh_flex_compile "${hh[@]}" --attention flex --compile --modes dpo_packed
        if has liger_kernel; then
            bench 50 hh_flex_liger "${hh[@]}" --attention flex --liger --modes dpo_packed
        else
            echo "== hh_flex_liger: skipped (liger-kernel is not installed)"
        fi
        python3 benchmarks/device/ratio_table.py "$out"/hh_*.json "$out"/long_*.json |
            tee "$out/ratio_table.md"
        ;;
    6)
        # Issue 6: 4 pairs of 256 + 768 tokens; one fresh process per mode.
        bench 220 step_benchmark --pairs 4 --prompt-len 256 --completion-len 768 \
            --modes sft dpo_online dpo_cached trl trl_precomputed
        # The logits chunk for the GPU presets (they pin 1024; the code default is 512).
        bench 60 chunk1024 --pairs 4 --prompt-len 256 --completion-len 768 --chunk-size 1024 \
            --modes dpo_cached
        ;;
    14)
        # Issue 14: HH-shaped ragged batches, shared prompts and padding-free rows against
        # today's layout and TRL, pairs/s and peak memory.
        bench 180 step_hh --pairs 8 --prompt-len 176 --completion-len 72 --ragged \
            --modes dpo_online dpo_shared dpo_packed trl
        ;;
    correct)
        # GPU paths the CPU tests emulate: packed rows under flash varlen attend per sequence,
        # flex masks first built for an inference_mode reference serve the policy's backward,
        # trainer=fsdp loop=online is refused in one line. One line per check, and its JSON.
        echo "== correct (at most 150s)"
        timeout 150 python3 benchmarks/device/gpu_correctness.py --json "$out/correctness.json" ||
            echo "== correct: a check failed or stopped (exit $?)"
        ;;
    7)
        # Issue 7: full fine-tuning vs LoRA on the same shape.
        timeout 100 python3 benchmarks/scale_gpu.py
        ;;
    *) echo "unknown section $section (choose from 21 6 7 14 correct)" ;;
    esac
done
