#!/usr/bin/env python3
"""Analytic scaling model of Kiln's parallel modes (dp, ZeRO-1/2/3, tp, pp and their compositions) on GPUs.

Projections, not measurements. The bytes per step come from the same formulas bench/dist.sh checks against what kiln
hands to MPI; this script first re-derives the bench's numbers from them (fp32, L4 C128 T64 vocab 65 batch 12) and
asserts they equal the measured ones, then applies them to GPT-2 XL and a Llama-2-70B-shaped model in bf16.

Assumptions (GPU part):
  * H100: 989 TFLOP/s bf16 dense, kernels at 40% of it; compute per GPU = 6·P·(tokens per GPU) (attention's own
    FLOPs left out). Weak scaling: tokens per GPU per step fixed (GPT-2 XL 8 × 1024, 70B 4 × 4096), so a model
    replica of t·p GPUs trains t·p times that, and the global batch grows with N.
  * Memory per GPU: mixed-precision Adam, ZeRO paper's accounting: bf16 weights 2 B + bf16 gradients 2 B + fp32
    masters and two moments 12 B per parameter of the GPU's shard (tp splits each block's matrices, pp gives a stage
    L/p blocks; the worst stage holds an embedding too); ZeRO-1 divides the 12 B by dp, ZeRO-2 also the gradients,
    ZeRO-3 everything. Activations, buffers and fragmentation are NOT counted.
  * Wire: ring collectives (all-reduce 2(n−1)/n of its bytes per rank, reduce-scatter and all-gather (n−1)/n),
    bf16 on the wire. Inside an 8-GPU NVLink node 360 GB/s effective per GPU, across nodes InfiniBand 400 Gb/s per
    GPU, 40 GB/s effective. tp stays inside a node (t ≤ 8); pp stages are in different nodes when t·p > 8; dp
    crosses nodes when N > 8.
  * Overlap: dp all-reduce / ZeRO reduce-scatter runs in buckets under the backward (2/3 of compute) — with pp only
    under the last micro-batch's backward, since gradients accumulate over micro-batches; the ZeRO-1/2 all-gather of
    updated parameters follows the optimizer step (exposed); ZeRO-3's gathers are prefetched under forward and
    backward (window = all compute). tp's all-reduces sit on the critical path (fully exposed). pp's p2p overlaps
    the other micro-batches' compute except on the fill and drain (2(p−1) transfers exposed); the bubble
    (p−1)/(m+p−1) stretches compute: step = compute/(1 − bubble) + tp + exposed dp + exposed pp.
  * pp micro-batch = 1 sequence, so m = sequences per replica per step. Compositions with pp run ZeRO-1 over dp
    (ZeRO-3 is refused with pp; ZeRO-2 runs there but cuts no peak memory, as gradients accumulate over the
    micro-batches), and tp 8 × dp also ZeRO-3 (kiln composes every stage with tp).
"""
import math

PEAK, KERNEL_EFF, HBM = 989e12, 0.40, 80e9
NVLINK, IB = 360e9, 40e9
GPUS = [8, 64, 256, 1024]


class Shape:
    """A decoder's shape; params() and the parts the formulas name (root = embeddings, head, final norm)."""

    def __init__(self, name, L, C, T, V, heads, kv_heads=None, ffn=None, tied=True, tokens_per_gpu=None):
        self.name, self.L, self.C, self.T, self.V = name, L, C, T, V
        self.heads, self.kv_heads, self.ffn, self.tied = heads, kv_heads or heads, ffn, tied
        self.tokens_per_gpu = tokens_per_gpu

    @property
    def gpt(self):
        return self.ffn is None

    def block(self):  # parameters of one block
        C = self.C
        if self.gpt:
            return 12 * C * C + 13 * C
        kv = C * self.kv_heads // self.heads
        return 2 * C * C + 2 * C * kv + 3 * C * self.ffn + 2 * C

    def root(self):  # GPT: wte (tied) + wpe + ln_f; Llama: embed + lm_head + final norm
        C = self.C
        return self.V * C + self.T * C + 2 * C if self.gpt else 2 * self.V * C + C

    def params(self):
        return self.root() + self.L * self.block()

    def tp_params(self, t):
        """Parameters per tp rank. GPT as kiln shards it (bench/dist.sh): wpe, LayerNorms, c_proj biases replicated,
        the rest cut t ways with the vocabulary padded to a multiple of t. Llama: the norms replicated."""
        C, L, vt = self.C, self.L, -(-self.V // t) * t
        if self.gpt:
            return self.T * C + 2 * C + 6 * L * C + (vt * C + L * (12 * C * C + 7 * C)) // t
        return C + 2 * L * C + (2 * vt * C + L * (self.block() - 2 * C)) // t

    def stage_params(self, t, p):
        """Parameters per GPU on the worst stage: its L/p blocks cut t ways plus one embedding matrix (all of the
        root when p = 1)."""
        if p == 1:
            return self.tp_params(t)
        blocks = math.ceil(self.L / p) * (self.tp_params(t) - self._tp_root(t)) / self.L
        emb = (-(-self.V // t) * self.C) / t + (self.T * self.C if self.gpt else 0) + self.C
        return blocks + emb

    def _tp_root(self, t):
        C, vt = self.C, -(-self.V // t) * t
        return self.T * C + 2 * C + vt * C // t if self.gpt else C + 2 * vt * C // t


# ---- bytes per step each rank hands to MPI (rank 0), e = bytes per element; the formulas of bench/dist.sh ----

def dp_bytes(P, root, zero, e):
    """The data-parallel collectives over P parameters of which root (ZeRO-3: gathered through backward)."""
    return {0: {"all_reduce": e * P + 8},
            1: {"all_reduce": e * P + 8, "all_gather": e * P},
            2: {"reduce_scatter": e * P, "all_gather": e * P, "all_reduce": 16},
            3: {"reduce_scatter": e * P, "all_gather": e * P + e * (P - root), "all_reduce": 16}}[zero]


def tp_bytes(s, t, rows, e, blocks=None, ends=2, cross_entropy=True):
    """tp group's all-reduces: 4 per block (g ×2 forward, f ×2 backward) of rows·T·C, the embedding's g and the
    head's f (ends), the vocab-parallel cross-entropy's 3 fp64 values per token, the clipping norm."""
    blocks = s.L if blocks is None else blocks
    act = rows * s.T * s.C * e
    return 4 * blocks * act + ends * act + (24 * rows * s.T if cross_entropy else 0) + 8


def pp_bytes(s, m, rows, e, t=1):
    """Stage 0: sends m activations of rows/m·T·C and receives m gradients; all-reduces the tied wte (its tp
    shard) with the last stage, + loss and gradient norm."""
    a = rows // m * s.T * s.C * e
    wte = e * (-(-s.V // t) * t * s.C) // t if s.tied else 0  # its shard of the padded vocabulary
    return {"send": m * a, "recv": m * a, "all_reduce": wte + 16}


def verify_bench():
    """The bench's CPU model in fp32: each formula's bytes next to what bench/dist.sh measured (hard-coded below)."""
    s = Shape("bench GPT", L=4, C=128, T=64, V=65, heads=4)
    B, m, e = 12, 4, 4
    # Measured bytes per step on rank 0: `bench/dist.sh` on 2026-11-23 (L4 C128 T64 vocab 65 batch 12, m 4, fp32),
    # the "measured B/step" column; pp modes: all-reduce + send (recv listed apart, not counted by the bench's total).
    measured = {
        "ddp": 3_239_432, "zero1": 6_478_856, "zero2": 6_478_864, "zero3": 9_651_216,
        "tp2": 7_096_328, "dp2tp2": 5_191_184, "pp2_1f1b": 426_512, "pp2_gpipe": 426_512, "tp2pp2": 3_949_080,
        "dp2tp2z3": 8_426_528,
    }
    P, R = s.params(), s.root()
    pp = pp_bytes(s, m, B, e)
    pp_tp = pp_bytes(s, m, B, e, t=2)
    formula = {
        "ddp": sum(dp_bytes(P, R, 0, e).values()), "zero1": sum(dp_bytes(P, R, 1, e).values()),
        "zero2": sum(dp_bytes(P, R, 2, e).values()), "zero3": sum(dp_bytes(P, R, 3, e).values()),
        "tp2": tp_bytes(s, 2, B, e),
        "dp2tp2": tp_bytes(s, 2, B // 2, e) + e * s.tp_params(2) + 8,
        # dp 2 × tp 2 at ZeRO-3: ZeRO-3's bytes over the tp shard (its root: the wte shard, wpe, ln_f), the norm's
        # sharded and replicated sums over dp (8 more than dp_bytes' one norm double)
        "dp2tp2z3": tp_bytes(s, 2, B // 2, e) + sum(dp_bytes(s.tp_params(2), -(-s.V // 2) * s.C + s.T * s.C + 2 * s.C, 3, e).values()) + 8,
        "pp2_1f1b": pp["send"] + pp["all_reduce"], "pp2_gpipe": pp["send"] + pp["all_reduce"],
        # stage 0 of tp 2 × pp 2: its L/2 blocks, the embedding's g only; no cross-entropy
        "tp2pp2": pp_tp["send"] + pp_tp["all_reduce"]
                  + tp_bytes(s, 2, B, e, blocks=s.L // 2, ends=1, cross_entropy=False),
    }
    print(f"Formulas vs bench/dist.sh (2026-11-23), {s.name} L{s.L} C{s.C} T{s.T} vocab {s.V}, P = {s.params():,}, "
          f"batch {B}, m {m}, fp32 — bytes per step on rank 0\n")
    print("| mode | measured | formula | agree |\n|---|---|---|---|")
    for mode, got in measured.items():
        print(f"| {mode} | {got:,} | {formula[mode]:,} | {'yes' if got == formula[mode] else 'NO'} |")
        assert got == formula[mode], f"{mode}: formula {formula[mode]:,} != measured {got:,}"


# ---- GPU projection ----

def ring(op, n):
    return 0.0 if n == 1 else (2 if op == "all_reduce" else 1) * (n - 1) / n


def layout_step(s, n, t=1, p=1, zero=0):
    """Memory per GPU and step time of dp (N/(t·p)) × tp t × pp p with ZeRO stage zero over dp; None if it does
    not divide N."""
    if n % (t * p) or t > 8:
        return None
    d, e = n // (t * p), 2
    ps = s.stage_params(t, p)
    opt = 12 * ps / (d if zero >= 1 else 1)
    grads = 2 * ps / (d if zero >= 2 else 1)
    weights = 2 * ps / (d if zero >= 3 else 1)
    mem = weights + grads + opt

    compute = 6 * s.params() * s.tokens_per_gpu / (PEAK * KERNEL_EFF)
    seqs = s.tokens_per_gpu * t * p // s.T  # sequences per replica per step
    m = seqs if p > 1 else 1
    bubble = (p - 1) / (m + p - 1)

    # tp: the worst stage's all-reduces over the replica's sequences (NVLink), fully exposed
    ends = 2 if p == 1 else 1
    tp = ring("all_reduce", t) * tp_bytes(s, t, seqs, e, blocks=math.ceil(s.L / p), ends=ends,
                                          cross_entropy=(p == 1)) / NVLINK if t > 1 else 0.0
    # dp: the formulas of dp_bytes on this GPU's shard (ps parameters)
    bw_dp = NVLINK if n <= 8 else IB
    dpb = dp_bytes(ps, s.root() / (t * p), zero, e)
    reduce_t = sum(ring(op, d) * b for op, b in dpb.items() if op != "all_gather") / bw_dp
    gather_t = ring("all_gather", d) * dpb.get("all_gather", 0) / bw_dp
    if p > 1 and s.tied:  # the tied wte summed between first and last stage
        reduce_t += ring("all_reduce", 2) * e * s.V * s.C / t / (IB if t * p > 8 else NVLINK)
    backward = 2 / 3 * compute / m
    if zero == 3:
        dp_exposed = max(0.0, reduce_t + gather_t - compute)
    else:
        dp_exposed = max(0.0, reduce_t - backward) + gather_t
    # pp: fill and drain transfers of one micro-batch's activation
    pp = 2 * (p - 1) * s.T * s.C * e / (IB if t * p > 8 else NVLINK) if p > 1 else 0.0

    step = compute / (1 - bubble) + tp + dp_exposed + pp
    return dict(mem=mem, step=step, compute=compute, bubble=bubble, m=m, tp=tp, dp=dp_exposed, pp=pp,
                tok=s.tokens_per_gpu / step, mfu=6 * s.params() * s.tokens_per_gpu / step / PEAK)


def project(s, layouts):
    print(f"\n{s.name}: P = {s.params() / 1e9:.2f} B, {s.tokens_per_gpu:,} tokens per GPU per step, compute "
          f"{6 * s.params() * s.tokens_per_gpu / (PEAK * KERNEL_EFF):.2f} s per step at 40% of peak")
    print("Cell: memory per GPU (✗ over 80 GB; activations not counted) · step time · tokens/s per GPU · MFU\n")
    print("| layout | " + " | ".join(f"N = {n}" for n in GPUS) + " |")
    print("|---|" + "---|" * len(GPUS))
    detail = []
    for label, t, p, zero in layouts:
        cells = []
        for n in GPUS:
            r = layout_step(s, n, t, p, zero)
            if r is None:
                cells.append("—")
                continue
            fits = " ✗" if r["mem"] > HBM else ""
            cells.append(f"{r['mem'] / 1e9:,.1f} GB{fits} · {r['step']:.2f} s · {r['tok']:,.0f} · {100 * r['mfu']:.0f}%")
            if n == GPUS[-1]:
                detail.append((label, r))
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nWhere the step goes at N = {GPUS[-1]} (seconds):\n")
    print("| layout | compute | bubble (m) | tp | dp exposed | pp exposed |\n|---|---|---|---|---|---|")
    for label, r in detail:
        print(f"| {label} | {r['compute']:.2f} | {100 * r['bubble']:.1f}% ({r['m']}) | {r['tp']:.3f} | "
              f"{r['dp']:.3f} | {r['pp']:.4f} |")


def dp_layouts():
    return [("DDP", 1, 1, 0), ("ZeRO-1", 1, 1, 1), ("ZeRO-2", 1, 1, 2), ("ZeRO-3", 1, 1, 3)]


if __name__ == "__main__":
    verify_bench()
    gpt2xl = Shape("GPT-2 XL", L=48, C=1600, T=1024, V=50257, heads=25, tokens_per_gpu=8 * 1024)
    llama70 = Shape("70 B (Llama-2-70B shape)", L=80, C=8192, T=4096, V=32000, heads=64, kv_heads=8, ffn=28672,
                    tied=False, tokens_per_gpu=4 * 4096)
    # GPT-2 XL fits one GPU, so model parallelism only trades dp traffic for tp/pp traffic: tp 2 and 4, pp 4, tp 2 × pp 2.
    project(gpt2xl, dp_layouts() + [("tp 2 × dp (ZeRO-1)", 2, 1, 1), ("tp 4 × dp (ZeRO-1)", 4, 1, 1),
                                    ("pp 4 × dp (ZeRO-1)", 1, 4, 1), ("tp 2 × pp 2 × dp (ZeRO-1)", 2, 2, 1)])
    # 70B: tp 8 fills a node; pp 8 alone; tp 8 × pp 8 (Megatron's usual 70B layout) and tp 8 × pp 4 (less bubble).
    project(llama70, dp_layouts() + [("tp 8 × dp (ZeRO-1)", 8, 1, 1), ("tp 8 × dp (ZeRO-3)", 8, 1, 3), ("pp 8 × dp (ZeRO-1)", 1, 8, 1),
                                     ("tp 8 × pp 4 × dp (ZeRO-1)", 8, 4, 1), ("tp 8 × pp 8 × dp (ZeRO-1)", 8, 8, 1)])
