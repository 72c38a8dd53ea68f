#!/usr/bin/env bash
# GPU verification in one command. Two halves, because the GPU machine has no Java or Maven:
#
#   bench/gpu_verify.sh --prepare   (on the build machine) build target/kiln.jar and jlink a Java runtime
#                                   into .carry/jre (git-ignored; ~45 MB) if it is missing
#   bench/gpu_verify.sh --device    (on the GPU machine, in the repository root, with target/kiln.jar and
#                                   .carry/jre carried over) run `kiln gpu-check` (discovery, device, copies,
#                                   allocator, NVRTC, every kernel source, cuBLAS vs CPU GEMM, NCCL at world
#                                   size 1, timings), then
#                                   `kiln gpu-check --ops` (every op with a CUDA kernel vs the CPU backend, fp32
#                                   and bf16), then the training runs on the GPU: 50 fp32 steps of the default job on
#                                   the GPU and on the CPU (parity), the same 50 on the GPU with data parallelism over
#                                   NCCL at world size 1 (parallel.backend nccl: must equal the plain GPU run), the whole default job in bf16 (val loss against
#                                   the CPU's bar), and GPT-2 124M (L12 H12 C768 T1024, GPT-2 BPE, B16, bf16) for tok/s
#                                   and peak memory, with PyTorch eager and torch.compile on the same shard beside it
#                                   (bench/torch_gpt2_gpu.py)
#   bench/gpu_verify.sh --dry-run   (no GPU needed) the same training steps on the CPU, tiny, to check the plumbing
#   bench/gpu_verify.sh             both, when this machine has a GPU (nvidia-smi works)
#
# Results go to $OUT (if set, e.g. by the device runner) or bench/results/: gpu.txt, gpu_check.txt, gpu_check.json
# (the check's last line), gpu_nccl.txt (its NCCL line), gpu_ops.txt,
# train_parity.txt, train_nccl_ws1.txt, train_bf16_default.txt, gpt2_kiln.txt, gpt2_torch.txt and summary.txt (every figure in a few
# lines). Exit code: 0 when every check and run passed.
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
mode=${1:-all}

prepare() {
    # shellcheck source=bin/common.sh
    . "$root/bin/common.sh"
    find_java
    need_maven
    maven_env
    echo ">> building target/kiln.jar" >&2
    mvn -q -B -Dstyle.color=never -Dmaven.test.skip=true package >&2 || { echo "gpu_verify: build failed" >&2; exit 1; }
    if [[ ! -x .carry/jre/bin/java ]]; then
        echo ">> jlinking a runtime into .carry/jre" >&2
        mkdir -p .carry
        "$JAVA_HOME/bin/jlink" --add-modules java.base,jdk.incubator.vector,java.logging,jdk.unsupported,java.management \
            --strip-debug --no-man-pages --no-header-files --compress=zip-9 --output .carry/jre >&2 \
            || { echo "gpu_verify: jlink failed" >&2; exit 1; }
    fi
    du -sh target/kiln.jar .carry/jre >&2
}

device() {
    local java=.carry/jre/bin/java out=${OUT:-$root/bench/results} rc dev=cuda quick=${1:-}
    [[ -x $java ]] || java=$(command -v java || true)
    [[ -n $java && -f target/kiln.jar ]] || { echo "gpu_verify: needs target/kiln.jar and .carry/jre (run --prepare first)" >&2; exit 1; }
    mkdir -p "$out"
    local work; work=$(mktemp -d)   # runs and their checkpoints stay out of $OUT (only the reports come back)
    local jvm=("$java" --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -XX:+UseParallelGC -Xmx16g -jar target/kiln.jar)
    # --dry-run (no GPU): the same steps on the CPU, tiny, to check the script's plumbing
    local parity_steps=50 default_iters=2000 g2=(--set model.n_layer=12 --set model.n_head=12 --set model.n_embd=768
        --set model.block_size=1024 --set train.batch_size=16) g2_steps=30
    if [[ $quick == dry ]]; then
        dev=cpu parity_steps=3 default_iters=20 g2_steps=2
        g2=(--set model.n_layer=2 --set model.n_head=2 --set model.n_embd=64 --set model.block_size=64 --set train.batch_size=2)
    fi
    rc=0
    if [[ $quick != dry ]]; then
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
        echo ">> kiln gpu-check" >&2
        "${jvm[@]}" gpu-check 2>&1 | tee "$out/gpu_check.txt"
        rc=${PIPESTATUS[0]}
        tail -n 1 "$out/gpu_check.txt" >"$out/gpu_check.json"
        # NCCL at world size 1 (communicator, every collective in fp32/bf16 through the group's stream, a timed
        # all-reduce): one line of gpu-check; libnccl.so.2 from KILN_NCCL_LIB, /usr/lib/x86_64-linux-gnu or pip's wheels
        grep -E '^(ok|FAIL) +nccl ' "$out/gpu_check.txt" | tee "$out/gpu_nccl.txt" >&2 || echo "gpu_verify: no NCCL line in gpu-check's output" >&2
        echo ">> kiln gpu-check --ops" >&2
        "${jvm[@]}" gpu-check --ops 2>&1 | tee "$out/gpu_ops.txt"
        [[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
    fi
    local common=(--set train.out_dir="$work/runs" --set train.log_interval=1 --set train.sample_tokens=0)

    # 1. fp32 on the GPU tracks the CPU: the default model, the same steps on both devices
    echo ">> fp32 parity: $parity_steps steps of the default job on $dev and on cpu" >&2
    for run in "device $dev" "cpu cpu"; do
        set -- $run
        "${jvm[@]}" train --device "$2" --name "parity_$1" "${common[@]}" --set train.max_iters="$parity_steps" \
            --set train.final_eval_iters=10 --set train.eval_interval=1000 || rc=1
    done >"$out/train_parity.txt" 2>&1
    # 1b. data parallelism over NCCL at world size 1 (no mpirun): gradient buckets packed on the GPU, all-reduced by
    # NCCL on its own stream, copied back; averaging over one rank changes nothing, so the losses must equal 1.'s device
    # run's bit for bit. The dry run (CPU) cannot take NCCL: it runs backend auto, only to check the plumbing
    local nccl_backend=nccl
    [[ $quick == dry ]] && nccl_backend=auto
    echo ">> NCCL data parallelism at world size 1: $parity_steps steps on $dev, parallel.backend $nccl_backend" >&2
    "${jvm[@]}" train --device "$dev" --name parity_nccl "${common[@]}" --set parallel.backend="$nccl_backend" \
        --set train.max_iters="$parity_steps" --set train.final_eval_iters=10 --set train.eval_interval=1000 >"$out/train_nccl_ws1.txt" 2>&1 || rc=1
    # 2. bf16 (autocast) on the GPU: the whole default job, against the CPU's val-loss bar (README: 1.8909 fp32)
    echo ">> bf16 default job on $dev ($default_iters steps)" >&2
    "${jvm[@]}" train --device "$dev" --name bf16_default "${common[@]}" --set train.precision=bf16 \
        --set train.max_iters="$default_iters" >"$out/train_bf16_default.txt" 2>&1 || rc=1
    # 3. GPT-2 124M (L12 H12 C768 T1024, GPT-2 BPE, vocab 50304), B16, bf16: Kiln, then PyTorch eager and torch.compile
    echo ">> GPT-2 124M bf16 on $dev: kiln ($g2_steps steps)" >&2
    "${jvm[@]}" train --device "$dev" --name gpt2_bf16 "${common[@]}" --set data.tokenizer=gpt2 "${g2[@]}" \
        --set model.vocab_size=50304 --set train.precision=bf16 --set train.max_iters="$g2_steps" --set optim.warmup_iters=2 \
        --set optim.lr_decay_iters="$g2_steps" --set train.eval_interval=1000 --set train.final_eval_iters=0 >"$out/gpt2_kiln.txt" 2>&1 || rc=1
    : >"$out/gpt2_torch.txt"
    local shard; shard=$(ls data/cache/*-gpt2/train.bin 2>/dev/null | head -n 1)
    if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        for c in "" --compile; do
            echo ">> GPT-2 124M bf16: pytorch ${c:-eager}" >&2
            python3 bench/torch_gpt2_gpu.py --data "$shard" --steps "$g2_steps" $c >>"$out/gpt2_torch.txt" 2>"$work/torch_err.txt" \
                || { tail -n 5 "$work/torch_err.txt" >>"$out/gpt2_torch.txt"; rc=1; }
        done
    else
        echo "no CUDA for PyTorch here: the PyTorch peer was not run" >>"$out/gpt2_torch.txt"
    fi
    summary "$work/runs" "$out" | tee "$out/summary.txt"
    rm -rf "$work"
    return "$rc"
}

# Every figure in one table: parity (max |Δloss| per step), the bf16 default job's val loss, tok/s and peak memory.
summary() {
    python3 - "$1" "$2" <<'PY'
import json, pathlib, sys
runs, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def metrics(name):
    f = runs / name / "metrics.jsonl"
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.exists() else []
def steps(name):
    return [m for m in metrics(name) if "loss" in m]
def last(name, key):
    vals = [m[key] for m in metrics(name) if key in m]
    return vals[-1] if vals else None
a, b = steps("parity_device"), steps("parity_cpu")
if a and b and len(a) == len(b):
    d = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    print(f"fp32 parity, {len(a)} steps (device vs cpu): max |dloss| {d:.3g}; last loss {a[-1]['loss']:.5f} vs {b[-1]['loss']:.5f}; "
          f"final val {last('parity_device', 'val_loss')} vs {last('parity_cpu', 'val_loss')}")
else:
    print(f"fp32 parity: runs missing or of different lengths ({len(a)} vs {len(b)} steps)")
n = steps("parity_nccl")
ran = (out / "train_nccl_ws1.txt").read_text() if (out / "train_nccl_ws1.txt").exists() else ""
path = "over NCCL" if "data parallel over NCCL" in ran else "NCCL path NOT taken (dry run: backend auto on the CPU)"
comm = [l for l in ran.splitlines() if l.startswith("kiln: communication")]
if n and a and len(n) == len(a):
    same = all(x["loss"] == y["loss"] for x, y in zip(n, a))
    d = max(abs(x["loss"] - y["loss"]) for x, y in zip(n, a))
    print(f"NCCL data parallel, world size 1, {len(n)} steps ({path}) vs the plain device run: "
          f"{'losses identical bit for bit' if same else f'losses DIFFER, max |dloss| {d:.3g}'}; "
          f"final val {last('parity_nccl', 'val_loss')} vs {last('parity_device', 'val_loss')}" + (f"; {comm[-1][6:]}" if comm else ""))
else:
    print(f"NCCL data parallel, world size 1: runs missing or of different lengths ({len(n)} vs {len(a)} steps); see train_nccl_ws1.txt")
print(f"bf16 default job: final val loss {last('bf16_default', 'val_loss')} (CPU fp32 bar 1.8909)")
g = steps("gpt2_bf16")
timed = [m["tok_per_s"] for m in g[3:] if "tok_per_s" in m]
peak = last("gpt2_bf16", "mem_peak_total")
print(f"kiln GPT-2 124M bf16: {len(g)} steps, loss {g[0]['loss']:.4f} -> {g[-1]['loss']:.4f}; " if g else "kiln GPT-2 124M bf16: no steps; ", end="")
print(f"median tok/s after 3 steps {sorted(timed)[len(timed) // 2]:,.0f}; " if timed else "", end="")
print(f"peak memory (account) {peak / 2**30:.2f} GiB" if peak else "")
t = out / "gpt2_torch.txt"
for line in (t.read_text().splitlines() if t.exists() else []):
    if line.startswith("{"):
        r = json.loads(line)
        print(f"{r['impl']} GPT-2 124M bf16: {r['tok_per_s']:,} tok/s, {r['ms_per_step']} ms/step, peak {r['peak_mem_gib']} GiB, loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}")
PY
}

case $mode in
    --prepare) prepare ;;
    --device) device ;;
    --dry-run) device dry ;;
    all)
        prepare
        if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then device
        else echo "gpu_verify: no GPU here; prepared target/kiln.jar and .carry/jre for 'bench/gpu_verify.sh --device' on a GPU machine" >&2; fi ;;
    *) echo "usage: bench/gpu_verify.sh [--prepare|--device|--dry-run]" >&2; exit 2 ;;
esac
