#!/usr/bin/python3
"""Reference fixtures for Kiln's Llama parity test, computed with PyTorch in float64.

What it writes (committed; small):
  src/test/resources/fixtures/llama_tiny.json       grouped-query attention (4 query heads over 2 K/V heads),
                                                    untied LM head, rope_theta 10000
  src/test/resources/fixtures/llama_tiny_mqa.json   one K/V head for all 4 query heads (multi-query),
                                                    LM head tied to the embedding, rope_theta 100

The model is Hugging Face's LlamaForCausalLM written out in plain torch (Debian's torch 1.13 has no
transformers), with HF's state-dict names, following transformers' modeling_llama.py:
  config n_layer 2, n_head 4, n_embd (hidden_size) 16 → head_dim 4, intermediate_size 24,
  block_size 8, vocab_size 11, rms_norm_eps 1e-5; batch B=2, T=8; no biases anywhere.
  x = embed_tokens[idx]
  per layer: x = x + o_proj(attn(input_layernorm(x))); x = x + down_proj(silu(gate_proj(h)) * up_proj(h)),
             h = post_attention_layernorm(x)
    RMSNorm: x * rsqrt(mean(x^2, -1) + eps) * weight   (HF upcasts to fp32 first: the identity for an fp32
             model; here everything is float64, so the reference keeps float64)
    attn: q = q_proj(x) (B,T,H,D) → (B,H,T,D); k, v likewise with n_kv_head heads;
          inv_freq = theta^(-arange(0, D, 2)/D); freqs = outer(positions, inv_freq); emb = cat(freqs, freqs);
          q, k ← q·cos(emb) + rotate_half(q)·sin(emb), rotate_half(x) = cat(−x[..., D/2:], x[..., :D/2]);
          k, v ← repeat_kv (each K/V head repeated n_head/n_kv_head times, head h reads K/V head h // group);
          causal softmax(q k^T / sqrt(D)) v; heads merged (B,T,H·D); o_proj
  logits = lm_head(norm(x))   (untied: lm_head.weight of its own; tied: embed_tokens.weight, not listed again)
  loss = cross_entropy(logits, targets, ignore_index=-1), mean over the non-ignored positions
  nn.Linear layout, weight = (out, in).

Weights are deliberately large so every path matters (not the near-linear 0.02 init): torch.manual_seed(4321)
after the model is built, then in named_parameters() order: Linear/Embedding weights ~ N(0, 0.3), RMSNorm
weights 1 + N(0, 0.1). Then idx ~ U[0,V), targets ~ U[0,V) with 3 positions set to -1.

JSON layout: as scripts/make_fixtures.py's (one top-level key per line, floats at full float64 precision):
  "config": {n_layer, n_head, n_kv_head, n_embd, intermediate_size, block_size, vocab_size, rope_theta,
             norm_eps, tie_word_embeddings, batch_size, seq_len}
  "idx", "targets", "params", "loss", "logits", "grads" (every parameter; a tied embedding's gradient holds
  both uses, as torch computes it).

The script asserts central finite-difference checks against autograd before writing.

Re-run (from the repo root; needs Debian's torch: apt-get install python3-torch python3-numpy):
  /usr/bin/python3 scripts/make_llama_fixtures.py
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

N_LAYER, N_HEAD, N_EMBD, INTERMEDIATE, BLOCK_SIZE, VOCAB, EPS = 2, 4, 16, 24, 8, 11, 1e-5
B, T = 2, 8
SEED = 4321


class LlamaRMSNorm(nn.Module):
    def __init__(self, c, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotary_cos_sin(t, d, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def repeat_kv(x, n_rep):
    b, kvh, t, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kvh, n_rep, t, d).reshape(b, kvh * n_rep, t, d)


class LlamaAttention(nn.Module):
    def __init__(self, c, n_head, n_kv_head, theta):
        super().__init__()
        self.n_head, self.n_kv_head, self.d, self.theta = n_head, n_kv_head, c // n_head, theta
        self.q_proj = nn.Linear(c, n_head * self.d, bias=False)
        self.k_proj = nn.Linear(c, n_kv_head * self.d, bias=False)
        self.v_proj = nn.Linear(c, n_kv_head * self.d, bias=False)
        self.o_proj = nn.Linear(n_head * self.d, c, bias=False)

    def forward(self, x):
        b, t, c = x.size()
        h, kvh, d = self.n_head, self.n_kv_head, self.d
        q = self.q_proj(x).view(b, t, h, d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, kvh, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, kvh, d).transpose(1, 2)
        cos, sin = rotary_cos_sin(t, d, self.theta)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = repeat_kv(k, h // kvh)
        v = repeat_kv(v, h // kvh)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, h * d)
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    def __init__(self, c, inter):
        super().__init__()
        self.gate_proj = nn.Linear(c, inter, bias=False)
        self.up_proj = nn.Linear(c, inter, bias=False)
        self.down_proj = nn.Linear(inter, c, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c, n_head, n_kv_head, inter, theta):
        super().__init__()
        # registration order = HF's state-dict order: self_attn, mlp, input_layernorm, post_attention_layernorm
        self.self_attn = LlamaAttention(c, n_head, n_kv_head, theta)
        self.mlp = LlamaMLP(c, inter)
        self.input_layernorm = LlamaRMSNorm(c, EPS)
        self.post_attention_layernorm = LlamaRMSNorm(c, EPS)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, n_layer, c, n_head, n_kv_head, inter, vocab, theta):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, c)
        self.layers = nn.ModuleList([LlamaDecoderLayer(c, n_head, n_kv_head, inter, theta) for _ in range(n_layer)])
        self.norm = LlamaRMSNorm(c, EPS)

    def forward(self, idx):
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, n_layer, c, n_head, n_kv_head, inter, vocab, theta, tied):
        super().__init__()
        self.vocab = vocab
        self.model = LlamaModel(n_layer, c, n_head, n_kv_head, inter, vocab, theta)
        self.lm_head = nn.Linear(c, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, idx, targets):
        logits = self.lm_head(self.model(idx))
        loss = F.cross_entropy(logits.view(-1, self.vocab), targets.view(-1), ignore_index=-1)
        return logits, loss


def init_weights(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, dtype=p.dtype))
            else:
                p.normal_(0.0, 0.3)


def make(n_kv_head, theta, tied, filename):
    torch.manual_seed(0)
    model = LlamaForCausalLM(N_LAYER, N_EMBD, N_HEAD, n_kv_head, INTERMEDIATE, VOCAB, theta, tied).double()
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
    assert ("lm_head.weight" in grads) != tied
    for n, g in grads.items():
        assert torch.isfinite(g).all(), n
        assert g.abs().max() > 0, f"zero gradient for {n}: a path is dead"

    picks = [("model.embed_tokens.weight", int(idx[0, 3]) * N_EMBD + 5),
             ("model.layers.0.self_attn.q_proj.weight", 37),
             ("model.layers.0.self_attn.k_proj.weight", 21),
             ("model.layers.1.self_attn.v_proj.weight", 9),
             ("model.layers.1.mlp.gate_proj.weight", 200),
             ("model.layers.0.mlp.up_proj.weight", 101),
             ("model.layers.1.input_layernorm.weight", 3),
             ("model.norm.weight", 7)]
    if not tied:
        picks.append(("lm_head.weight", 40))
    finite_difference_check(model, idx, targets, grads, picks)

    config = {"n_layer": N_LAYER, "n_head": N_HEAD, "n_kv_head": n_kv_head, "n_embd": N_EMBD,
               "intermediate_size": INTERMEDIATE, "block_size": BLOCK_SIZE, "vocab_size": VOCAB,
               "rope_theta": theta, "norm_eps": EPS, "tie_word_embeddings": tied,
               "batch_size": B, "seq_len": T}
    path = write_model_fixture(config, model, idx, targets, loss, logits, grads, OUT_DIR, filename)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {os.path.relpath(path)}: n_kv_head={n_kv_head} tied={tied} params={n_params} loss={loss.item()!r}")


def main():
    torch.set_num_threads(1)
    make(2, 10000.0, False, "llama_tiny.json")
    make(1, 100.0, True, "llama_tiny_mqa.json")


if __name__ == "__main__":
    main()
