#!/usr/bin/env python3
"""Checks Kiln's Hugging Face interchange against transformers itself (needs transformers + torch + safetensors;
on this project's machine: /work/hfenv/bin/python, transformers 5.18, torch 2.13 CPU).

Two directions, both in fp32 on CPU:

  hf_check.py compare DIR IO.safetensors
      Loads DIR (kiln export --hf output) with AutoModelForCausalLM (GPT2LMHeadModel / LlamaForCausalLM by
      config.json), refusing any missing or unexpected weight, runs IO's "tokens" (int32 [B, T]) and compares
      the logits with IO's "logits" (Kiln's, float32 [B, T, V]). Prints one JSON line with max_abs_diff and the
      config transformers read. Without "logits" in IO (a model Kiln cannot run yet) it only checks the loading.

  hf_check.py make DIR IO.safetensors --model-type gpt2|llama [--seed S] [--vocab V] [--width C] [--layers L]
                   [--heads H] [--kv-heads K] [--context T] [--batch B]
      Builds a random transformers model (every parameter, biases and norm gains included, perturbed so none is
      trivially 0 or 1), save_pretrained's it to DIR (safetensors), and writes random "tokens" and the model's
      "logits" to IO for Kiln to import DIR and compare. Prints one JSON line.

The JUnit test HfTransformersTest drives both when KILN_HF_PYTHON names such a python; the committed fixtures
under src/test/resources/fixtures/hf/ were made with `make` (see their README there).
"""
import argparse
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig


def compare(args):
    io = load_file(args.io)
    tokens = io["tokens"].long()
    kiln = io.get("logits")
    model, info = AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        print(json.dumps({"error": "transformers did not load every weight", "loading_info": {k: sorted(map(str, v)) for k, v in problems.items()}}))
        sys.exit(1)
    model.eval()
    with torch.no_grad():
        hf = model(tokens).logits
    config = {k: v for k, v in model.config.to_dict().items() if isinstance(v, (int, float, str, bool, dict, list)) or v is None}
    if kiln is None:
        print(json.dumps({"direction": "kiln->transformers", "model": type(model).__name__, "loaded": True, "config": config,
                          "max_abs_logit": hf.abs().max().item()}))
        return
    if hf.shape != kiln.shape:
        print(json.dumps({"error": f"logits shape {list(hf.shape)} from transformers, {list(kiln.shape)} from Kiln"}))
        sys.exit(1)
    diff = (hf - kiln).abs().max().item()
    print(json.dumps({"direction": "kiln->transformers", "model": type(model).__name__, "model_type": model.config.model_type,
                      "tokens": list(tokens.shape), "max_abs_diff": diff, "max_abs_logit": hf.abs().max().item(),
                      "config": config}))


def make(args):
    torch.manual_seed(args.seed)
    if args.model_type == "gpt2":
        cfg = GPT2Config(vocab_size=args.vocab, n_positions=args.context, n_embd=args.width, n_layer=args.layers, n_head=args.heads,
                         bos_token_id=None, eos_token_id=None)
    elif args.model_type == "llama":
        cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.width, intermediate_size=args.intermediate or 3 * args.width,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads or args.heads,
                          max_position_embeddings=args.context, rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None)
    else:
        raise SystemExit(f"unknown --model-type {args.model_type}")
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)  # biases and norm gains away from 0 and 1, weights a little off init
    model.save_pretrained(args.dir, safe_serialization=True)
    tokens = torch.randint(0, args.vocab, (args.batch, args.context), dtype=torch.int64)
    with torch.no_grad():
        logits = model(tokens).logits.float().contiguous()
    save_file({"tokens": tokens.to(torch.int32), "logits": logits}, args.io)
    print(json.dumps({"direction": "transformers->kiln", "model": type(model).__name__, "dir": args.dir, "tokens": list(tokens.shape),
                      "max_abs_logit": logits.abs().max().item()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("dir")
    c.add_argument("io")
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("io")
    m.add_argument("--model-type", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--vocab", type=int, default=65)
    m.add_argument("--width", type=int, default=32)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--kv-heads", type=int, default=0)
    m.add_argument("--intermediate", type=int, default=0)
    m.add_argument("--context", type=int, default=32)
    m.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    (compare if args.cmd == "compare" else make)(args)


if __name__ == "__main__":
    main()
