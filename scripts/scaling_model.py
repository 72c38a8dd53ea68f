#!/usr/bin/env python3
"""Analytic scaling model of data parallelism and ZeRO for the README's scaling section (no measurement).

Per GPU, mixed-precision Adam as in the ZeRO paper (Rajbhandari et al. 2020): bf16 parameters (2 B) and gradients
(2 B), fp32 master weights + two moments (12 B), i.e. 16 B per parameter unsharded:
  DDP    2P + 2P + 12P          ZeRO-1  2P + 2P + 12P/N
  ZeRO-2 2P + (2P + 12P)/N      ZeRO-3  (2P + 2P + 12P)/N
Activations, buffers and fragmentation are not counted (they depend on micro-batch and recompute).
Bytes each GPU sends per step with ring algorithms (bf16 gradients and parameters):
  DDP, ZeRO-1, ZeRO-2: 2(N-1)/N * 2P  (all-reduce = reduce-scatter + all-gather)
  ZeRO-3:              3(N-1)/N * 2P  (all-gather in forward and again in backward, reduce-scatter)
Compute per step: 6 * P * tokens per GPU / (989 TFLOP/s H100 bf16 dense * 40% MFU).
Bandwidth per GPU: 8 GPUs = one NVLink node, 360 GB/s effective; more = the ring crosses InfiniBand,
400 Gb/s per GPU, 40 GB/s effective. Communication is overlapped with backward when it takes less than compute.
"""
PEAK, MFU = 989e12, 0.40
MODELS = {  # name: (parameters, tokens per GPU per step)
    "GPT-2 XL (1.56 B)": (1.558e9, 8 * 1024),
    "70 B (Llama-2-70B shape)": (68.98e9, 4 * 4096),
}
GPUS = [8, 64, 256, 1024]
HBM = 80e9

def memory(mode, p, n):
    return {"DDP": 16 * p, "ZeRO-1": 4 * p + 12 * p / n, "ZeRO-2": 2 * p + 14 * p / n, "ZeRO-3": 16 * p / n}[mode]

def sent(mode, p, n):
    return (3 if mode == "ZeRO-3" else 2) * (n - 1) / n * 2 * p

for name, (p, tokens) in MODELS.items():
    compute = 6 * p * tokens / (PEAK * MFU)
    print(f"\n{name}: {tokens:,} tokens per GPU per step, compute {compute:.2f} s per step")
    print("| mode | " + " | ".join(f"N = {n}" for n in GPUS) + " |")
    print("|---|" + "---|" * len(GPUS))
    for mode in ["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"]:
        cells = []
        for n in GPUS:
            mem = memory(mode, p, n)
            bw = 360e9 if n <= 8 else 40e9
            comm = sent(mode, p, n) / bw
            fits = "" if mem < HBM else " ✗"
            cells.append(f"{mem / 1e9:,.1f} GB{fits}, comm {comm:.2f} s")
        print(f"| {mode} | " + " | ".join(cells) + " |")
