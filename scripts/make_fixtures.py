#!/usr/bin/python3
"""Reference fixtures for Kiln's GPT parity test, computed with PyTorch in float64.

What it writes (committed; small):
  src/test/resources/fixtures/gpt_tiny.json         GPT-2 with biases (nanoGPT bias=True)
  src/test/resources/fixtures/gpt_tiny_nobias.json  no biases anywhere (nanoGPT bias=False:
                                                    Linear without bias, LayerNorm without bias)

The model is nanoGPT's GPT-2 with Hugging Face tensor names:
  config n_layer 2, n_head 2, n_embd 16, block_size 8, vocab_size 11, dropout 0; batch B=2, T=8.
  x = wte[idx] + wpe[0..T)
  per block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))
    attn: q,k,v = c_attn(x).split(C); heads (B,H,T,D); causal softmax(q k^T / sqrt(D)) v; c_proj
    mlp:  c_proj(gelu_tanh(c_fc(x)))
  logits = ln_f(x) @ wte^T            (lm_head tied to wte: no separate entry)
  loss = cross_entropy(logits, targets, ignore_index=-1), mean over the non-ignored positions
  LayerNorm eps 1e-5; nn.Linear layout, weight = (out, in).

Weights are deliberately large so every path matters (not the near-linear 0.02 init):
  torch.manual_seed(1234) after the model is built, then, in named_parameters() order:
  Linear/Embedding weights ~ N(0, 0.3), biases ~ N(0, 0.1), LayerNorm weight 1 + N(0, 0.1),
  LayerNorm bias N(0, 0.1). Then idx ~ U[0,V), targets ~ U[0,V) with 3 positions set to -1.
  Both fixtures use the same seed (so they share the draw order up to the missing biases).
Everything is computed in float64 so the reference is exact; Kiln computes in fp32 and compares
with a tolerance of its own.

JSON layout (one top-level key per line; floats written with repr, i.e. full float64 precision):
  "config":  {n_layer, n_head, n_embd, block_size, vocab_size, bias, batch_size, seq_len}
  "idx":     flat B*T ints (row-major (B,T));   "targets": flat B*T ints, -1 = ignored
  "params":  {name: {"shape": [...], "data": [flat row-major]}}  (named_parameters order)
  "loss":    float
  "logits":  {"shape": [B,T,V], "data": [...]}
  "grads":   {name: {"shape", "data"}} for every param; d loss / d transformer.wte.weight holds
             both the embedding and the tied lm-head contributions, as torch computes it.

The script asserts a few central finite-difference checks against autograd before writing.

Re-run (from the repo root; needs Debian's torch: apt-get install python3-torch python3-numpy):
  /usr/bin/python3 scripts/make_fixtures.py
Output is deterministic (same torch version => byte-identical files).
"""

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from fixture_io import finite_difference_check, write_model_fixture

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                       "src", "test", "resources", "fixtures")

N_LAYER, N_HEAD, N_EMBD, BLOCK_SIZE, VOCAB = 2, 2, 16, 8, 11
B, T = 2, 8
SEED = 1234


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nanoGPT: PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, c, n_head, bias):
        super().__init__()
        self.c_attn = nn.Linear(c, 3 * c, bias=bias)
        self.c_proj = nn.Linear(c, c, bias=bias)
        self.n_head = n_head

    def forward(self, x):
        b, t, c = x.size()
        h, d = self.n_head, c // self.n_head
        q, k, v = self.c_attn(x).split(c, dim=2)
        q = q.view(b, t, h, d).transpose(1, 2)  # (B,H,T,D)
        k = k.view(b, t, h, d).transpose(1, 2)
        v = v.view(b, t, h, d).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B,H,T,D)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, c, bias):
        super().__init__()
        self.c_fc = nn.Linear(c, 4 * c, bias=bias)
        self.c_proj = nn.Linear(4 * c, c, bias=bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, c, n_head, bias):
        super().__init__()
        self.ln_1 = LayerNorm(c, bias)
        self.attn = CausalSelfAttention(c, n_head, bias)
        self.ln_2 = LayerNorm(c, bias)
        self.mlp = MLP(c, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, vocab_size, bias):
        super().__init__()
        self.vocab_size = vocab_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList([Block(n_embd, n_head, bias) for _ in range(n_layer)]),
            ln_f=LayerNorm(n_embd, bias),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied

    def forward(self, idx, targets):
        b, t = idx.size()
        pos = torch.arange(t, dtype=torch.long)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, self.vocab_size), targets.view(-1), ignore_index=-1)
        return logits, loss


def init_weights(model):
    """The fixture's init, in named_parameters() order (lm_head.weight is wte's, listed once)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                if name.endswith(".weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, dtype=p.dtype))
                else:
                    p.normal_(0.0, 0.1)
            elif name.endswith(".weight"):
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.1)


def make(bias, filename):
    torch.manual_seed(0)  # construction draws (overwritten below); fixed for tidiness
    model = GPT(N_LAYER, N_HEAD, N_EMBD, BLOCK_SIZE, VOCAB, bias).double()
    torch.manual_seed(SEED)
    init_weights(model)
    idx = torch.randint(0, VOCAB, (B, T), dtype=torch.long)
    targets = torch.randint(0, VOCAB, (B, T), dtype=torch.long)
    ignored = torch.randperm(B * T)[:3]
    targets.view(-1)[ignored] = -1

    model.zero_grad()
    logits, loss = model(idx, targets)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    assert "lm_head.weight" not in grads
    for n, g in grads.items():
        assert torch.isfinite(g).all(), n
        assert g.abs().max() > 0, f"zero gradient for {n}: a path is dead"

    # Sanity: finite differences on entries from the tied embedding (hits both uses), a deep
    # attention weight, an MLP weight, the final LayerNorm and, when present, a bias.
    picks = [("transformer.wte.weight", int(idx[0, 3]) * N_EMBD + 5),  # a used token row
             ("transformer.h.0.attn.c_attn.weight", 37),
             ("transformer.h.1.mlp.c_fc.weight", 200),
             ("transformer.ln_f.weight", 7),
             ("transformer.wpe.weight", 2 * N_EMBD + 1)]
    if bias:
        picks.append(("transformer.h.1.attn.c_proj.bias", 3))
        picks.append(("transformer.h.0.ln_1.bias", 9))
    finite_difference_check(model, idx, targets, grads, picks)

    n_valid = int((targets != -1).sum())
    assert n_valid == B * T - 3
    config = {"n_layer": N_LAYER, "n_head": N_HEAD, "n_embd": N_EMBD,
               "block_size": BLOCK_SIZE, "vocab_size": VOCAB, "bias": bias,
               "batch_size": B, "seq_len": T}
    path = write_model_fixture(config, model, idx, targets, loss, logits, grads, OUT_DIR, filename)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {os.path.relpath(path)}: bias={bias} params={n_params} loss={loss.item()!r}")


def main():
    torch.set_num_threads(1)  # deterministic reduction order
    make(True, "gpt_tiny.json")
    make(False, "gpt_tiny_nobias.json")


if __name__ == "__main__":
    main()
