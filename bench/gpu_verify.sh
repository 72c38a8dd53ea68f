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
#                                   and bf16), then a short GPT-2 124M training on the GPU
#   bench/gpu_verify.sh             both, when this machine has a GPU (nvidia-smi works)
#
# Results go to $OUT (if set, e.g. by the device runner) or bench/results/: gpu_check.txt, gpu_check.json
# (the check's last line), gpu_nccl.txt (its NCCL line), gpu_ops.txt, gpu_train.txt. Exit code: 0 when gpu-check and gpu-check --ops passed.
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
    local java=.carry/jre/bin/java out=${OUT:-$root/bench/results} rc
    [[ -x $java ]] || java=$(command -v java || true)
    [[ -n $java && -f target/kiln.jar ]] || { echo "gpu_verify: needs target/kiln.jar and .carry/jre (run --prepare first)" >&2; exit 1; }
    mkdir -p "$out"
    local jvm=("$java" --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -XX:+UseParallelGC -Xmx16g -jar target/kiln.jar)
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
    # GPT-2 124M (n_layer 12, n_head 12, n_embd 768, block 1024, GPT-2 BPE) on the bundled corpus, a few steps.
    echo ">> kiln train --device cuda (GPT-2 124M, 20 steps)" >&2
    "${jvm[@]}" train --device cuda --name gpu_gpt2 --set train.out_dir="$out/runs" --set data.tokenizer=gpt2 \
        --set model.n_layer=12 --set model.n_head=12 --set model.n_embd=768 --set model.block_size=1024 \
        --set model.vocab_size=50304 --set train.batch_size=16 --set train.max_iters=20 --set optim.lr_decay_iters=20 \
        --set optim.warmup_iters=2 --set train.eval_interval=1000 --set train.final_eval_iters=0 \
        --set train.sample_tokens=0 --set train.log_interval=1 2>&1 | tee "$out/gpu_train.txt"
    echo ">> training exit code ${PIPESTATUS[0]} (2 with 'not available yet' = the trainer does not place the run on the GPU yet)" >&2
    return "$rc"
}

case $mode in
    --prepare) prepare ;;
    --device) device ;;
    all)
        prepare
        if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then device
        else echo "gpu_verify: no GPU here; prepared target/kiln.jar and .carry/jre for 'bench/gpu_verify.sh --device' on a GPU machine" >&2; fi ;;
    *) echo "usage: bench/gpu_verify.sh [--prepare|--device]" >&2; exit 2 ;;
esac
