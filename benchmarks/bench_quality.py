"""Quality of the reduced precisions against float32 on the same checkpoint.

    python benchmarks/bench_quality.py                    # small's shape, 4 x 512 positions
    python benchmarks/bench_quality.py --shape medium --json quality.json

For each --dtype (int8, int4, bfloat16, float16): the next-token logits at every position of 4
rows of 512 tokens (2,048 positions) of English text, against float32 on the same weights: top-1
agreement (the argmax is the same token) and the mean KL divergence KL(float32 || ours) in nats.

No trained GPT-2 can be downloaded here, so the weights are random: the speed benchmarks'
checkpoint (std 0.2 everywhere: twelve layers amplify any rounding chaotically, so even float16
disagrees often; a worst case, not a model) and GPT-2's initialisation (residual projections
scaled by 1 / sqrt(2 n_layer)) at weight scales --stds: at 0.02, GPT-2's own, the layers barely
change the embedding and every precision agrees; larger scales make the layers matter more.
None of them is a trained model, whose peaked distributions make top-1 agreement higher.

int8 and int4 weights decode over an int8 key/value cache (a scale per head and position); the
logits here are computed over it as decoding reads it (stored, rounded). --kv-float16 also
measures them over a float16 cache, which is what the int8 cache's own rounding costs.

--llama also measures llama.cpp on the same weights (its GGUF conversions, --llama-types: F32,
a check of the comparison itself, and the quantized types int8 and int4 stand beside, Q8_0 and
Q4_0) against the same float32 reference (gpt2cli's float32, which matches transformers').
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, SHAPES, checkpoint  # noqa: E402

TEXT = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
ROWS, LENGTH = 4, 512


def scaled_checkpoint(shape: str, std: float) -> Path:
    """The speed checkpoint's config and tokenizer, with GPT-2's initialisation at weight scale
    `std` (0.02 is GPT-2's own): residual projections std / sqrt(2 n_layer)."""
    import torch
    from safetensors.torch import save_file

    from tests.support.checkpoints import random_state_dict

    source, folder = checkpoint(shape), CACHE / f"{shape}-std-{std}"
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocab.json", "merges.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    cfg = json.loads((source / "config.json").read_text())
    sd = random_state_dict(cfg, seed=1, std=std)
    residual = std / math.sqrt(2 * cfg["n_layer"])
    g = torch.Generator().manual_seed(2)
    for name, tensor in sd.items():
        if name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight")):
            sd[name] = torch.randn(tensor.shape, generator=g) * residual
        elif name == "wpe.weight":
            sd[name] = torch.randn(tensor.shape, generator=g) * 0.01
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def logits(folder: Path, dtype: str, ids, kv=None):
    """Every position's logits over a cache of `kv` (None: the one the model chooses)."""
    from gpt2cli import load_model
    from gpt2cli.model.gpt2 import KVCache

    lm = load_model(folder, device="cpu", dtype=dtype)
    model = lm.model
    cache = (
        model.new_cache(ROWS) if kv is None else KVCache(model.config, ROWS, model.wpe.device, kv)
    )
    return model(ids, cache, all_logits=True).reshape(ids.numel(), -1)


def llama_logits(shape: str, folder: Path, outtype: str, ids):
    """llama.cpp's logits on `folder`'s weights converted to GGUF `outtype`, or None (said why)."""
    import llama_anchor
    import numpy as np
    import torch

    name = shape if folder == checkpoint(shape) else folder.name
    model = llama_anchor.gguf(name, outtype, folder)
    if model is None:
        return None
    out = CACHE / f"logits-{name}-{outtype}.npy"
    try:
        if llama_anchor.logits(model, ids.tolist(), out) is None:
            return None
        return torch.from_numpy(np.load(out))
    finally:
        out.unlink(missing_ok=True)


def compare(ours, ref) -> dict:
    p, q = ref.log_softmax(-1), ours.log_softmax(-1)
    top1 = (ours.argmax(-1) == ref.argmax(-1)).float().mean().item()
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    return {"top1": round(top1, 4), "kl_nats": float(f"{kl:.3g}")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="small", choices=list(SHAPES))
    ap.add_argument("--dtypes", default="int8,int4,bfloat16,float16")
    ap.add_argument("--stds", default="0.02,0.06,0.1", help="weight scales of GPT-2's init")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--llama", action="store_true", help="also llama.cpp on the same weights")
    ap.add_argument("--llama-types", default="f32,q8_0,q4_0")
    ap.add_argument(
        "--kv-float16", action="store_true", help="int8 / int4 over a float16 cache too"
    )
    args = ap.parse_args()
    import torch
    from tokenizers import Tokenizer

    folders = {"random std 0.2": checkpoint(args.shape)}
    for std in args.stds.split(","):
        folders[f"GPT-2 init, std {std}"] = scaled_checkpoint(args.shape, float(std))
    tok = Tokenizer.from_file(str(folders["random std 0.2"] / "tokenizer.json"))
    text_ids = tok.encode(TEXT).ids
    if len(text_ids) < ROWS * LENGTH:
        raise SystemExit("the README is too short for the positions wanted")
    ids = torch.tensor(text_ids[: ROWS * LENGTH]).view(ROWS, LENGTH)
    results = []
    for kind, folder in folders.items():
        ref = logits(folder, "float32", ids)
        for dtype in args.dtypes.split(","):
            row = {"shape": args.shape, "weights": kind, "dtype": dtype, "positions": ids.numel()}
            results.append(row | compare(logits(folder, dtype, ids), ref))
            print(json.dumps(results[-1]), flush=True)
            if args.kv_float16 and dtype in ("int8", "int4"):
                row = row | {"dtype": f"{dtype}, float16 cache"}
                results.append(row | compare(logits(folder, dtype, ids, torch.float16), ref))
                print(json.dumps(results[-1]), flush=True)
        for outtype in args.llama_types.split(",") if args.llama else []:
            theirs = llama_logits(args.shape, folder, outtype, ids)
            if theirs is None:
                continue
            row = {"shape": args.shape, "weights": kind, "dtype": f"llama.cpp {outtype.upper()}"}
            results.append(row | {"positions": ids.numel()} | compare(theirs, ref))
            print(json.dumps(results[-1]), flush=True)
    print("\n| weights | dtype | top-1 agreement | mean KL (nats) |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['weights']} | {r['dtype']} | {r['top1']:.3f} | {r['kl_nats']:.3g} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
