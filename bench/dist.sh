#!/usr/bin/env bash
# Data-, tensor- and pipeline-parallel training on CPU under Open MPI: throughput per rank at np 1 and 2, and the bytes each
# rank hands to the collectives per step in every mode, checked against the analytic formula.
#
# Usage (from anywhere): bench/dist.sh [--steps 20] [--n-layer 4] [--n-embd 128] [--block-size 64] [--batch 12] [--micro 4]
#        [--modes ddp,zero1,zero2,zero3,tp2,dp2tp2,dp2tp2z3,pp2_1f1b,pp2_gpipe,tp2pp2] (a subset runs only those; commas or spaces)
#
# What it does:
#   1. builds target/kiln.jar once (the ranks then run it with KILN_NO_BUILD=1, so they never build concurrently);
#   2. tok/s: the default job's model, train.threads=1 per rank (2 ranks on this 2-core machine), --steps steps,
#      once as a plain process (np 1) and once per mode under mpirun -np 2 (ddp, zero1, zero2, zero3, and pipeline
#      parallel pp 2 with the 1f1b and the gpipe schedule over --micro micro-batches);
#      "tok/s per rank" = the run's global tokens per second / np;
#   3. bytes per step: each np-2 mode also runs --steps + 10 steps; the difference of the two runs' communication
#      counts (kiln prints them at the end, rank 0's) over 10 steps is what one step hands to MPI, free of the one-time
#      costs (start-up checksum, final checkpoint). It must equal the formula, with P the GPT's parameter count:
#        ddp   all-reduce 4P + 8 (the loss)
#        zero1 all-reduce 4P + 8, all-gather 4P (updated parameters)
#        zero2 reduce-scatter 4P, all-gather 4P, all-reduce 16 (loss, gradient norm)
#        zero3 reduce-scatter 4P, all-gather 4P + 4(P − P_root) (every unit in forward, the blocks again in backward),
#              all-reduce 16, where P_root = V·C + T·C + 2C (embeddings and final norm) stays gathered through backward
#      and P = V·C + T·C + L·(12C² + 13C) + 2C. Ring algorithms put 2(N−1)/N of an all-reduce's bytes and (N−1)/N
#      of a reduce-scatter's or all-gather's on the wire per rank ("wire" column).
#      Tensor parallel over t ranks (tp2: np 2, t 2; dp2tp2: np 4, dp 2 × t 2, ZeRO 0), b = B/dp rows per data-parallel
#      rank, all counted on the tp group (kiln prints them apart, as "tp"):
#        tp    all-reduce 16·L·b·T·C    (per block: g after attn and mlp c_proj in forward, f before c_attn and c_fc
#                                        in backward, each b·T·C floats)
#                     + 8·b·T·C         (g of the vocab-parallel embedding, f before the tied head in backward)
#                     + 24·b·T          (vocab-parallel cross-entropy: row max, then Σexp and target logit, fp64)
#                     + 8               (the clipping norm of the sharded gradients)
#      and dp2tp2 adds the data-parallel all-reduce of each shard's gradients, 4·P_t + 8, with the parameters per
#      rank P_t = T·C + 2C + 6LC (replicated: wpe, LayerNorms, c_proj biases) + (V_t·C + L·(12C² + 7C))/t, where
#      V_t is the vocabulary padded to a multiple of t.
#        dp2tp2z3 (np 4, dp 2 × tp 2, ZeRO-3 over each shard's dp pair): tp's all-reduce as dp2tp2's, and on the dp
#              group ZeRO-3's bytes over the shard, reduce-scatter 4·P_t, all-gather 4·P_t + 4·(P_t − P_t,root) with
#              P_t,root = (V_t/t)·C + T·C + 2C, all-reduce 8 (loss) + 16 (the norm's sharded and replicated sums)
#        pp    (p stages, m micro-batches of b = B/m rows, one activation or gradient A = b·T·C·4 bytes):
#              all the stages together send 2·(p−1)·m·A (each of the p−1 boundaries: m activations forward, m
#              gradients back; "pipeline_send_all_stages"); rank 0 (stage 0) sends m·A and receives m·A, and
#              all-reduces 4·V·C (the tied wte's gradient, summed with the last stage) + 16 (loss and gradient norm)
#        tp2pp2 (np 4: tp 2 inside each of 2 stages, 1F1B over m micro-batches; rank 0 = stage 0, tp rank 0): the sum
#              of the two, restricted to stage 0: pp's send m·A, recv m·A (activations are whole, b·T·C, after each
#              block's g), all-reduce 4·(V_t/2)·C (its wte shard) + 16; tp's all-reduce 16·L_0·B·T·C (its L_0 blocks)
#              + 4·B·T·C (the embedding's g; the head and cross-entropy are the last stage's) + 8 (the clipping norm)
#   4. prints a table and writes bench/results/dist-<date>.json; exits 1 if any mode disagrees with the formula.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STEPS=20 L=4 C=128 T=64 B=12 M=4 MODES=ddp,zero1,zero2,zero3,tp2,dp2tp2,dp2tp2z3,pp2_1f1b,pp2_gpipe,tp2pp2
while (( $# )); do
    case $1 in
        --steps) STEPS=$2; shift 2 ;;
        --n-layer) L=$2; shift 2 ;;
        --n-embd) C=$2; shift 2 ;;
        --block-size) T=$2; shift 2 ;;
        --batch) B=$2; shift 2 ;;
        --micro) M=$2; shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        *) echo "bench/dist.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
command -v mpirun >/dev/null || { echo "bench/dist.sh: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)" >&2; exit 1; }
PYTHON=${PYTHON:-/usr/bin/python3}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
mkdir -p bench/results

MODES=${MODES// /,}
bin/kiln --version >/dev/null   # builds target/kiln.jar if needed
export KILN_NO_BUILD=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)
common=(--set model.n_layer=$L --set model.n_embd=$C --set model.n_head=4 --set model.block_size=$T --set train.batch_size=$B
        --set train.threads=1 --set train.eval_interval=100000 --set train.final_eval_iters=0 --set train.sample_tokens=0
        --set train.checkpoint_interval=100000 --set train.log_interval=100000 --set train.out_dir=$OUT/runs)

run() { # name steps np [extra --set …]
    local name=$1 steps=$2 np=$3; shift 3
    local cmd=(bin/kiln train "${common[@]}" --set train.name=$name --set train.max_iters=$steps "$@")
    echo ">> np $np: ${cmd[*]}" >&2
    if (( np == 1 )); then "${cmd[@]}" >"$OUT/$name.out" 2>&1 || { cat "$OUT/$name.out" >&2; exit 1; }
    else "${MPIRUN[@]}" -np "$np" "${cmd[@]}" >"$OUT/$name.out" 2>&1 || { cat "$OUT/$name.out" >&2; exit 1; }
    fi
}

run np1 "$STEPS" 1
for mode in ddp:0 zero1:1 zero2:2 zero3:3; do
    name=${mode%%:*} stage=${mode##*:}
    [[ ",$MODES," == *",$name,"* ]] || continue
    run "$name" "$STEPS" 2 --set parallel.zero_stage=$stage
    run "${name}_long" $((STEPS + 10)) 2 --set parallel.zero_stage=$stage
done
for mode in tp2:2:0 dp2tp2:4:0 dp2tp2z3:4:3; do
    IFS=: read -r name np stage <<<"$mode"
    [[ ",$MODES," == *",$name,"* ]] || continue
    run "$name" "$STEPS" "$np" --set parallel.tp=2 --set parallel.zero_stage=$stage
    run "${name}_long" $((STEPS + 10)) "$np" --set parallel.tp=2 --set parallel.zero_stage=$stage
done
for sched in 1f1b gpipe; do
    [[ ",$MODES," == *",pp2_$sched,"* ]] || continue
    run "pp2_$sched" "$STEPS" 2 --set parallel.pp=2 --set parallel.pp_schedule=$sched --set parallel.micro_batches=$M
    run "pp2_${sched}_long" $((STEPS + 10)) 2 --set parallel.pp=2 --set parallel.pp_schedule=$sched --set parallel.micro_batches=$M
done
if [[ ",$MODES," == *",tp2pp2,"* ]]; then
    run tp2pp2 "$STEPS" 4 --set parallel.tp=2 --set parallel.pp=2 --set parallel.micro_batches=$M
    run tp2pp2_long $((STEPS + 10)) 4 --set parallel.tp=2 --set parallel.pp=2 --set parallel.micro_batches=$M
fi

"$PYTHON" - "$OUT" "$MODES" "$STEPS" "$L" "$C" "$T" "$B" "$M" <<'PY'
import json, os, re, sys, datetime
out, modes, (steps, L, C, T, B, M) = sys.argv[1], sys.argv[2].split(","), map(int, sys.argv[3:])
def text(name): return open(f"{out}/{name}.out").read()
def tok_s(name): return float(re.search(r"steps in \S+ \(([\d,]+) tok/s\)", text(name)).group(1).replace(",", ""))
def comm(name): return json.loads(re.search(r"kiln: communication (\{.*\})", text(name)).group(1))
V = int(re.search(r"vocab (\d+)", text("np1")).group(1))
P = V*C + T*C + L*(12*C*C + 13*C) + 2*C
assert f"{P:,} parameters" in text("np1"), f"parameter formula {P} disagrees with kiln's count"
root = V*C + T*C + 2*C
formula = {
    "ddp":   {"all_reduce": 4*P + 8},
    "zero1": {"all_reduce": 4*P + 8, "all_gather": 4*P},
    "zero2": {"reduce_scatter": 4*P, "all_gather": 4*P, "all_reduce": 16},
    "zero3": {"reduce_scatter": 4*P, "all_gather": 4*P + 4*(P - root), "all_reduce": 16},
}
def tp_bytes(t, b): return 16*L*b*T*C + 8*b*T*C + 24*b*T + 8
def params_per_rank(t):
    Vt = -(-V // t) * t
    return T*C + 2*C + 6*L*C + (Vt*C + L*(12*C*C + 7*C)) // t
tp_formula = {"tp2": {"all_reduce": tp_bytes(2, B)}, "dp2tp2": {"all_reduce": tp_bytes(2, B // 2)}}
formula["tp2"] = {"all_reduce": tp_bytes(2, B)}
formula["dp2tp2"] = {"all_reduce": tp_bytes(2, B // 2) + 4*params_per_rank(2) + 8}
Pt, Pt_root = params_per_rank(2), -(-V // 2)*C + T*C + 2*C
tp_formula["dp2tp2z3"] = {"all_reduce": tp_bytes(2, B // 2)}
formula["dp2tp2z3"] = {"reduce_scatter": 4*Pt, "all_gather": 4*Pt + 4*(Pt - Pt_root), "all_reduce": tp_bytes(2, B // 2) + 8 + 16}
A, stages = (B // M) * T * C * 4, 2  # one micro-batch's activation (or its gradient), fp32
for sched in ("1f1b", "gpipe"):
    formula["pp2_" + sched] = {"send": M*A, "recv": M*A, "all_reduce": 4*V*C + 16, "pipeline_send_all_stages": 2*(stages - 1)*M*A}
L0 = L // stages + (1 if L % stages else 0)  # stage 0's blocks (the spare ones go early)
tp_formula["tp2pp2"] = {"all_reduce": 16*L0*B*T*C + 4*B*T*C + 8}
formula["tp2pp2"] = {"send": M*A, "recv": M*A, "all_reduce": tp_formula["tp2pp2"]["all_reduce"] + 4*(-(-V // 2))*C + 16,
                     "pipeline_send_all_stages": 2*(stages - 1)*M*A}
ranks = {"tp2": 2, "dp2tp2": 4, "dp2tp2z3": 4, "tp2pp2": 4}
n = 2
rows, ok = [], True
base = tok_s("np1")
print(f"GPT L{L} C{C} T{T} vocab {V}: P = {P:,} parameters ({4*P:,} B fp32); batch {B}, {steps} steps, 1 thread per rank; pp: {M} micro-batches")
print(f"{'mode':6} {'np':>2} {'tok/s/rank':>10} {'measured B/step':>44} {'formula B/step':>16} {'ring wire B/step':>16}  agree")
print(f"{'single':6} {1:>2} {base:>10,.0f}")
def per_step(a, b):
    keys = [k for k in a if isinstance(a[k], int) and k not in ("ring_wire_bytes", "calls")]
    return {k: (b[k] - a[k]) // 10 for k in keys if b[k] != a[k]}, all((b[k] - a[k]) % 10 == 0 for k in keys)
for mode in [m for m in formula if m in modes]:
    n = ranks.get(mode, 2)
    a, b = comm(mode), comm(mode + "_long")
    per, exact = per_step(a, b)
    wire = (b["ring_wire_bytes"] - a["ring_wire_bytes"]) / 10
    agree = exact and per == formula[mode]
    if mode in tp_formula:
        tp_per, tp_exact = per_step(a["tp"], b["tp"])
        agree = agree and tp_exact and tp_per == tp_formula[mode]
    ok &= agree
    meas = ", ".join(f"{k} {v:,}" for k, v in sorted(per.items()))
    handed = sum(v for k, v in formula[mode].items() if k not in ("recv", "pipeline_send_all_stages"))  # what rank 0 hands to MPI
    print(f"{mode:6} {n:>2} {tok_s(mode)/n:>10,.0f} {meas:>44} {handed:>16,} {wire:>16,.0f}  {'yes' if agree else 'NO: ' + str(formula[mode])}")
    if mode in tp_formula: print(f"{'':6} {'':>2} {'':>10} {'of which tp group: ' + str(tp_per):>44} {sum(tp_formula[mode].values()):>16,}")
    if "pipeline_send_all_stages" in per:
        print(f"{'':6}    pipeline: all stages sent {per['pipeline_send_all_stages']:,} B/step = 2·(p−1)·m·b·T·C·4; ideal bubble (p−1)/(m+p−1) = {1/(M+1):.3f}")
    rows.append({"mode": mode, "np": n, "tok_per_s_per_rank": tok_s(mode)/n, "bytes_per_step": per, "formula": formula[mode],
                 "ring_wire_bytes_per_step": wire, "agree": agree}
                | ({"tp_bytes_per_step": tp_per, "tp_formula": tp_formula[mode]} if mode in tp_formula else {}))
res = {"date": datetime.date.today().isoformat(), "model": {"n_layer": L, "n_embd": C, "block_size": T, "vocab": V, "params": P},
       "batch": B, "micro_batches": M, "steps": steps, "single_tok_per_s": base, "modes": rows}
path = f"bench/results/dist-{res['date']}.json"
json.dump(res, open(path, "w"), indent=1)
print("wrote", path)
sys.exit(0 if ok else 1)
PY
