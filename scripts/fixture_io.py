"""Shared by the float64 model fixture scripts (make_fixtures.py, make_llama_fixtures.py): tensors as JSON,
finite-difference checks of autograd, and the fixture file layout (one top-level key per line, one tensor per
line: readable diffs, still plain JSON, written atomically)."""
import json
import os

import torch


def tensor_json(t):
    return {"shape": list(t.shape), "data": [float(v) for v in t.detach().reshape(-1).tolist()]}


def finite_difference_check(model, idx, targets, grads, picks, eps=1e-6, rtol=1e-6, atol=1e-9):
    """Central differences in float64 on a few entries; asserts they match autograd."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, flat_i in picks:
            p = params[name].view(-1)
            orig = p[flat_i].item()
            p[flat_i] = orig + eps
            _, lp = model(idx, targets)
            p[flat_i] = orig - eps
            _, lm = model(idx, targets)
            p[flat_i] = orig
            fd = (lp.item() - lm.item()) / (2 * eps)
            ag = grads[name].view(-1)[flat_i].item()
            assert abs(fd - ag) <= atol + rtol * max(abs(fd), abs(ag)), \
                f"finite-difference mismatch {name}[{flat_i}]: fd={fd!r} autograd={ag!r}"
            print(f"  fd check {name}[{flat_i}]: fd={fd:.10e} autograd={ag:.10e}")


def write_fixture(doc, out_dir, filename):
    """Writes doc (with "params" and "grads" maps of tensor_json values) to out_dir/filename; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    lines = []
    for key, value in doc.items():
        if key in ("params", "grads"):
            inner = ",\n".join(f"  {json.dumps(n)}: {json.dumps(t)}" for n, t in value.items())
            lines.append(f"{json.dumps(key)}: {{\n{inner}\n}}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    assert json.loads(text) == json.loads(json.dumps(doc))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_model_fixture(config, model, idx, targets, loss, logits, grads, out_dir, filename):
    """A model parity fixture: config, the batch, every parameter, loss, logits and every parameter's gradient."""
    doc = {
        "config": config,
        "idx": idx.reshape(-1).tolist(),
        "targets": targets.reshape(-1).tolist(),
        "params": {n: tensor_json(p) for n, p in model.named_parameters()},
        "loss": float(loss.item()),
        "logits": tensor_json(logits),
        "grads": {n: tensor_json(g) for n, g in grads.items()},
    }
    return write_fixture(doc, out_dir, filename)
