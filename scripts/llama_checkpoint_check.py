#!/usr/bin/python3
"""Reads a Kiln Llama checkpoint with plain torch and checks it computes what Kiln computed.

The checkpoint's model.safetensors is loaded by name into the plain-torch LlamaForCausalLM of
scripts/make_llama_fixtures.py (Hugging Face's math, HF state-dict names), with the shape taken from the
checkpoint's trainer.json; every tensor must be consumed and match in shape. Then the mean next-token loss of
the first --windows windows of a train.bin is compared with the scores Kiln wrote for the same windows
(`kiln prepare --out DIR --score RUN` writes DIR/train.scores: one float32 mean loss per window).

  /usr/bin/python3 scripts/llama_checkpoint_check.py CHECKPOINT_DIR DATA_DIR [--windows N]

Prints the largest difference and exits 1 if it exceeds --tol (default 1e-4: Kiln scores in fp32).
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_llama_fixtures as ref  # noqa: E402


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: dtype {info['dtype']}"
        a, b = info["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype="<f4").copy()).reshape(info["shape"])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("data_dir")
    p.add_argument("--windows", type=int, default=256)
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()

    m = json.load(open(os.path.join(a.checkpoint, "trainer.json")))["config"]["model"]
    assert m["arch"] == "llama", m
    kv = m["n_kv_head"] or m["n_head"]
    inter = m["intermediate_size"] or (8 * m["n_embd"] // 3 + 255) // 256 * 256
    ref.EPS = m["norm_eps"]
    model = ref.LlamaForCausalLM(m["n_layer"], m["n_embd"], m["n_head"], kv, inter, m["vocab_size"], m["rope_theta"], False).double()
    tensors = read_safetensors(os.path.join(a.checkpoint, "model.safetensors"))
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(tensors), set(params) ^ set(tensors)
    with torch.no_grad():
        for k, t in tensors.items():
            assert params[k].shape == t.shape, (k, params[k].shape, t.shape)
            params[k].copy_(t.double())

    tokens = np.fromfile(os.path.join(a.data_dir, "train.bin"), dtype="<u2", offset=256 * 4).astype(np.int64)
    sc = open(os.path.join(a.data_dir, "train.scores"), "rb").read()
    magic, version, count, window = struct.unpack("<4i", sc[:16])
    assert magic == 20251110 and window == m["block_size"], (magic, window)
    scores = np.frombuffer(sc[1024:], dtype="<f4")
    n = min(a.windows, count)
    x = torch.from_numpy(np.stack([tokens[k * window: k * window + window] for k in range(n)]))
    y = torch.from_numpy(np.stack([tokens[k * window + 1: k * window + window + 1] for k in range(n)]))
    with torch.no_grad():
        logits = model.lm_head(model.model(x))
        losses = F.cross_entropy(logits.reshape(-1, m["vocab_size"]), y.reshape(-1), reduction="none").view(n, window).mean(1)
    diff = np.abs(losses.numpy() - scores[:n].astype(np.float64))
    print(f"{n} windows of {window}: torch mean loss {losses.mean().item():.6f}, Kiln {scores[:n].mean():.6f}; "
          f"max |diff| {diff.max():.3e} (window {int(diff.argmax())})")
    sys.exit(0 if diff.max() <= a.tol else 1)


if __name__ == "__main__":
    main()
