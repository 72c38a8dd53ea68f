#!/usr/bin/env bash
# The default job (GPT shakespeare-char, 2000 steps) with each memory technique, one after another:
# fp32 AdamW (the reference), 8-bit AdamW, fp16 with dynamic loss scaling, and parameter + optimizer-state
# offload to disk. Prints each run's final val loss. Runs go to runs/mem-<name>.
set -euo pipefail
cd "$(dirname "$0")/.."
run() {
    local name=$1; shift
    bin/kiln train --set train.name=mem-$name --set train.sample_tokens=0 "$@" 2>&1 | grep -E "final val loss|offload|memory account"
}
run fp32
run adamw8bit --set optim.optimizer=adamw8bit
run fp16 --set train.precision=fp16
run offload --set train.offload_params=disk --set train.offload_optimizer=disk
