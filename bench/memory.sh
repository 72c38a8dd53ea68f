#!/usr/bin/env bash
# Memory techniques side by side on CPU (issue 7): the same GPT and tokens per step trained by
# `kiln bench` with no technique, full recompute, selective recompute, gradient accumulation
# (k micro-batches of B/k, so each step still trains on B × T tokens), 8-bit AdamW, fp16 with
# dynamic loss scaling, bf16, optimizer-state offload to disk, parameter + optimizer-state offload
# to disk (train.prefetch_depth blocks ahead, default 2), the same with bf16 (the blocks' fp32 master
# weights in the offload files), and one combination (full recompute + 8-bit AdamW + accumulation),
# one after the other.
#
# Usage (from anywhere):
#   bench/memory.sh [--steps 5] [--warmup-steps 2] [--threads $(nproc)] [--batch-size 8] [--accum 4]
#                   [--n-layer 6] [--n-head 6] [--n-embd 384] [--block-size 256] [--only REGEX]
#
# --only REGEX runs just the techniques whose name matches (grep -E), e.g. --only 'bf16$'.
# Default: GPT L6 H6 C384 T256 B8, vocabulary from the bundled corpus's char tokenizer (65),
# AdamW, dropout 0, 5 timed steps after 2 warm-up steps.
# For each technique it records the measured peak memory per category (the memory account:
# parameters, gradients, optimizer state, activations, temporaries, and the peak of their total)
# and tok/s from `kiln bench`, and what `kiln plan --json` predicts for the same settings: the peak
# total (its deviation from the measured one) and the largest deviation of any category; prints a
# markdown table and writes it and the raw JSON to bench/results/memory-<date>.*
# Environment: KILN (default bin/kiln), PYTHON (default /usr/bin/python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

KILN=${KILN:-bin/kiln}
PYTHON=${PYTHON:-/usr/bin/python3}
STEPS=5
WARMUP=2
THREADS=$(nproc)
B=8
K=4
L=6; H=6; C=384; T=256
ONLY=

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;;
    --warmup-steps) WARMUP=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --batch-size) B=$2; shift 2 ;;
    --accum) K=$2; shift 2 ;;
    --n-layer) L=$2; shift 2 ;;
    --n-head) H=$2; shift 2 ;;
    --n-embd) C=$2; shift 2 ;;
    --block-size) T=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "memory.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
(( B % K == 0 )) || { echo "memory.sh: --batch-size $B is not a multiple of --accum $K" >&2; exit 2; }

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
STAMP=$(date -u +%Y%m%d-%H%M%S)
mkdir -p bench/results
MODEL=(--set model.n_layer=$L --set model.n_head=$H --set model.n_embd=$C --set model.block_size=$T --set model.dropout=0.0)

# name | overrides
TECHNIQUES=(
  "baseline|train.batch_size=$B"
  "recompute full|train.batch_size=$B train.recompute=full"
  "recompute selective|train.batch_size=$B train.recompute=selective"
  "grad accumulation k=$K|train.batch_size=$((B / K)) train.grad_accum_steps=$K"
  "8-bit AdamW|train.batch_size=$B optim.optimizer=adamw8bit"
  "fp16, loss scaling|train.batch_size=$B train.precision=fp16"
  "bf16|train.batch_size=$B train.precision=bf16"
  "offload optimizer (disk)|train.batch_size=$B train.offload_optimizer=disk"
  "offload params + optimizer (disk)|train.batch_size=$B train.offload_params=disk train.offload_optimizer=disk"
  "offload params + optimizer (disk), bf16|train.batch_size=$B train.offload_params=disk train.offload_optimizer=disk train.precision=bf16"
  "full + 8-bit + accum k=$K|train.batch_size=$((B / K)) train.grad_accum_steps=$K train.recompute=full optim.optimizer=adamw8bit"
)

i=0
for entry in "${TECHNIQUES[@]}"; do
  name=${entry%%|*}; sets=()
  if [[ -n $ONLY ]] && ! grep -Eq -- "$ONLY" <<<"$name"; then continue; fi
  for kv in ${entry#*|}; do sets+=(--set "$kv"); done
  echo ">> $name: kiln bench ${sets[*]}" >&2
  "$KILN" bench --steps "$STEPS" --warmup-steps "$WARMUP" --threads "$THREADS" "${MODEL[@]}" "${sets[@]}" >"$OUT/bench$i.out"
  tail -n 1 "$OUT/bench$i.out" >"$OUT/bench$i.json"
  "$KILN" plan --json "${MODEL[@]}" "${sets[@]}" >"$OUT/plan$i.json"
  echo "$name" >"$OUT/name$i"
  i=$((i + 1))
done
(( i > 0 )) || { echo "memory.sh: --only '$ONLY' matches no technique" >&2; exit 2; }

"$PYTHON" - "$OUT" "$i" "bench/results/memory-$STAMP" <<'PY'
import json, sys
out, n, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mib = lambda b: f"{b / 2**20:.1f}"
rows, raw = [], []
for i in range(n):
    name = open(f"{out}/name{i}").read().strip()
    b = json.load(open(f"{out}/bench{i}.json"))
    p = json.load(open(f"{out}/plan{i}.json"))["config"]
    raw.append({"technique": name, "bench": b, "plan": p})
    err = 100.0 * (p["peak_total"] - b["mem_peak_total"]) / b["mem_peak_total"]
    cats = ["parameters", "gradients", "optimizer_state", "activations", "temporaries"]
    worst = max(abs(p[c] - b["mem_peak_" + c]) / b["mem_peak_" + c] if b["mem_peak_" + c] else (0.0 if p[c] == 0 else float("inf")) for c in cats)
    rows.append(f"| {name} | {b['batch_size']}×{b['grad_accum_steps']} | {b['tok_per_s']:,.0f} | {b['ms_per_step']:,.0f} | "
                f"{mib(b['mem_peak_parameters'])} | {mib(b['mem_peak_gradients'])} | {mib(b['mem_peak_optimizer_state'])} | "
                f"{mib(b['mem_peak_activations'])} | {mib(b['mem_peak_temporaries'])} | {mib(b['mem_peak_total'])} | "
                f"{mib(p['peak_total'])} ({err:+.1f}%) | {100 * worst:.1f}% | {b['peak_rss_mib']:.0f} |")
b0 = raw[0]["bench"]
head = (f"GPT L{b0['n_layer']} H{b0['n_head']} C{b0['n_embd']} T{b0['block_size']}, vocab {b0['vocab_size']}, "
        f"{b0['batch_size'] * b0['grad_accum_steps']} sequences per step, {b0['threads']} threads, {b0['steps']} timed steps; memory in MiB\n\n"
        "| technique | micro-batch×k | tok/s | ms/step | params | grads | optim | activations | temporaries | peak total | kiln plan | plan, worst category | peak RSS |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
load = open("/proc/loadavg").read().split()[:3] if __import__("os").path.exists("/proc/loadavg") else ["?"] * 3
table = head + "\n" + "\n".join(rows) + "\n\nload average at the end (1, 5, 15 min): " + ", ".join(load) + "\n"
print(table)
open(dest + ".md", "w").write(table)
json.dump(raw, open(dest + ".json", "w"), indent=1)
print(f"wrote {dest}.md and {dest}.json", file=sys.stderr)
PY
