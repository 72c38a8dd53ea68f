#!/usr/bin/env python3
"""PyTorch GPU peer for Kiln's GPU run: nanoGPT's GPT-2 124M trained in bf16 on one GPU, eager or torch.compile.

Model as bench/torch_gpt.py (nanoGPT GPT-2: pre-LN, biases, tanh-GELU, tied lm_head, dropout 0, GPT-2 init) but
attention through F.scaled_dot_product_attention (flash) as nanoGPT does on a GPU. Recipe: AdamW (betas 0.9/0.95,
eps 1e-8, weight decay 0.1 on 2-D params, fused), bf16 autocast, grad-norm clip 1.0, constant lr 6e-4 (throughput
does not depend on the schedule). Batches: random windows of an llm.c token shard (--data), or random tokens.

Run (on the GPU machine):
  python3 bench/torch_gpt2_gpu.py --data data/cache/tinyshakespeare-gpt2/train.bin [--compile]

The LAST line of stdout is one JSON object:
  {"impl":"pytorch-eager"|"pytorch-compile","tok_per_s","ms_per_step","peak_mem_gib","steps","loss_first","loss_last",
   "batch_size","block_size","torch","gpu"}
  steps       = timed steps (after --warmup-steps untimed ones; torch.compile compiles during those)
  tok_per_s   = batch_size*block_size*steps / wall time of the timed steps (cuda synchronized at both ends)
  peak_mem_gib= torch.cuda.max_memory_allocated() / 2^30 over the whole run
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--data", default="", help="llm.c token shard (train.bin); random tokens when absent")
p.add_argument("--n-layer", type=int, default=12)
p.add_argument("--n-head", type=int, default=12)
p.add_argument("--n-embd", type=int, default=768)
p.add_argument("--block-size", type=int, default=1024)
p.add_argument("--vocab-size", type=int, default=50304)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup-steps", type=int, default=5)
p.add_argument("--compile", action="store_true")
a = p.parse_args()


class Block(nn.Module):
    def __init__(s, c, h):
        super().__init__()
        s.h = h
        s.ln_1, s.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        s.c_attn, s.attn_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        s.c_fc, s.mlp_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(s, x):
        b, t, c = x.shape
        q, k, v = s.c_attn(s.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, s.h, c // s.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(b, t, c)
        x = x + s.attn_proj(y)
        return x + s.mlp_proj(F.gelu(s.c_fc(s.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(s):
        super().__init__()
        s.wte, s.wpe = nn.Embedding(a.vocab_size, a.n_embd), nn.Embedding(a.block_size, a.n_embd)
        s.h = nn.ModuleList([Block(a.n_embd, a.n_head) for _ in range(a.n_layer)])
        s.ln_f = nn.LayerNorm(a.n_embd)
        for m in s.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for n, w in s.named_parameters():
            if n.endswith("proj.weight"):
                nn.init.normal_(w, 0.0, 0.02 / math.sqrt(2 * a.n_layer))

    def forward(s, idx, targets):
        x = s.wte(idx) + s.wpe(torch.arange(idx.size(1), device=idx.device))
        for blk in s.h:
            x = blk(x)
        logits = F.linear(s.ln_f(x), s.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


torch.manual_seed(1337)
dev = "cuda"
model = GPT().to(dev)
decay = [w for w in model.parameters() if w.dim() >= 2]
rest = [w for w in model.parameters() if w.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                        lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
step_fn = torch.compile(model) if a.compile else model

if a.data:
    hdr = np.fromfile(a.data, dtype=np.int32, count=256)
    if hdr[0] != 20240520:
        sys.exit(f"{a.data}: not an llm.c token shard")
    tokens = np.memmap(a.data, dtype=np.uint16, mode="r", offset=1024, shape=(int(hdr[2]),))
else:
    tokens = np.random.default_rng(1337).integers(0, 50257, size=4_000_000, dtype=np.uint16)
gen = np.random.default_rng(1337)


def batch():
    ix = gen.integers(0, len(tokens) - a.block_size - 1, size=a.batch_size)
    xy = np.stack([tokens[i:i + a.block_size + 1].astype(np.int64) for i in ix])
    xy = torch.from_numpy(xy).pin_memory().to(dev, non_blocking=True)
    return xy[:, :-1], xy[:, 1:]


losses = []
t0 = None
for it in range(a.warmup_steps + a.steps):
    if it == a.warmup_steps:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
    x, y = batch()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = step_fn(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())
    print(f"step {it} loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
torch.cuda.synchronize()
dt = time.perf_counter() - t0
print(json.dumps({"impl": "pytorch-compile" if a.compile else "pytorch-eager",
                  "tok_per_s": round(a.batch_size * a.block_size * a.steps / dt),
                  "ms_per_step": round(1000 * dt / a.steps, 2),
                  "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                  "steps": a.steps, "loss_first": losses[0], "loss_last": losses[-1],
                  "batch_size": a.batch_size, "block_size": a.block_size,
                  "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}))
