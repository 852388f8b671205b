#!/usr/bin/env python3
"""Train a BitNet b1.58 model from scratch (and its full-precision twin), export it, evaluate it.

    python train/train.py --config train/configs/pydoc-12m.toml [--variant ternary|fp|both] [--steps N]

One run: corpus → tokenizer (trained on the training split, cached per vocabulary size) → token
streams → training (seeded: the same batches in the same order for both variants) → for the ternary
variant, export in the microsoft/bitnet-b1.58-2B-4T packed layout → evaluation of the *exported*
weights (perplexity over the held-out split, as `tern perplexity` windows it). Figures go to
<out>/<name>-<variant>.json. See train/README.md for the recipe and what was changed for this scale.
"""

import argparse
import json
import math
import pathlib
import random
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn.functional as F

import corpus
import export
import tokenizer as tern_tokenizer
from model import BitNet, Shape

ROOT = pathlib.Path(__file__).resolve().parent


def load_config(path: pathlib.Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def prepare_tokens(cfg: dict, work: pathlib.Path):
    """(tokenizer, training stream, validation text) — the streams cached as .npy files."""
    vocab = cfg["model"]["vocab"]
    tok_dir = work / f"tokenizer-{vocab}"
    train_docs, valid_docs = corpus.split()
    if not (tok_dir / "tokenizer.json").exists():
        tern_tokenizer.train((text for _, text in train_docs), vocab, tok_dir, cfg["model"]["max_positions"])
    tok = export.load_tokenizer(tok_dir)
    stream_path = work / f"train-{vocab}.npy"
    if not stream_path.exists():
        eos = tok.token_to_id(tern_tokenizer.EOS)
        pairs = corpus.chat_pairs({path for path, _ in train_docs})
        chats = [tern_tokenizer.chat_text([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
                 for q, a in pairs]
        # Documents and chat samples interleaved in a fixed order: every training window can hold both.
        pieces = [text for _, text in train_docs] + chats
        random.Random(0).shuffle(pieces)
        ids = []
        for enc, piece in zip(tok.encode_batch(pieces, add_special_tokens=False), pieces):
            prefix = [] if piece.startswith(tern_tokenizer.BOS) else [tok.token_to_id(tern_tokenizer.BOS)]
            ids.extend(prefix + enc.ids + [eos])
        np.save(stream_path, np.array(ids, dtype=np.uint16))
    valid_text = "\n\n".join(text for _, text in valid_docs)
    return tok, tok_dir, np.load(stream_path).astype(np.int64), valid_text


def schedule(step: int, total: int, train: dict) -> tuple[float, float]:
    """(learning rate, weight decay) at `step`: the two-stage schedule of the BitNet b1.58 reports.

    Stage 1 (first half): linear warm-up to the peak, then cosine decay toward half the peak; weight
    decay follows a cosine from its peak to 0. Stage 2 (cooldown): the rate drops to
    `cooldown_lr_ratio` × peak and decays linearly to 0; weight decay is off.
    """
    peak, warmup, half = train["peak_lr"], train["warmup_steps"], total // 2
    if step < warmup:
        return peak * (step + 1) / warmup, train["weight_decay"]
    if step < half:
        progress = (step - warmup) / max(1, half - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return peak * (0.5 + 0.5 * cosine), train["weight_decay"] * cosine
    progress = (step - half) / max(1, total - half)
    return peak * train["cooldown_lr_ratio"] * (1 - progress), 0.0


def batches(stream: np.ndarray, seq_len: int, batch: int, steps: int, seed: int):
    """Random windows of seq_len + 1 tokens, the same sequence for a given seed."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(stream) - seq_len - 1, size=batch)
        yield torch.from_numpy(np.stack([stream[s:s + seq_len + 1] for s in starts]))


@torch.no_grad()
def perplexity(model: BitNet, ids: list[int], window: int) -> tuple[float, int]:
    """exp(mean NLL) over non-overlapping windows, each from an empty context (as `tern perplexity`)."""
    nll, count = 0.0, 0
    for start in range(0, len(ids), window):
        chunk = torch.tensor(ids[start:start + window])
        if len(chunk) < 2:
            continue
        logits = model(chunk[None])[0, :-1]
        nll += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
        count += len(chunk) - 1
    return math.exp(nll / count), count


def train_variant(cfg: dict, variant: str, stream: np.ndarray, steps: int) -> BitNet:
    train = cfg["train"]
    torch.manual_seed(train["seed"])
    shape = Shape(**cfg["model"])
    model = BitNet(shape, ternary=variant == "ternary")
    decay = [p for n, p in model.named_parameters() if n.endswith("proj.weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("proj.weight")]
    opt = torch.optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=train["peak_lr"], betas=(0.9, 0.95), eps=1e-8)
    # Compiled, the quantize/dequantize elementwise work fuses: ~1.5x faster on a 2-core CPU.
    forward = torch.compile(model) if train.get("compile", False) else model
    seq_len, batch = train["seq_len"], train["batch"]
    print(f"[{variant}] parameters {model.parameter_counts()}, {steps} steps of {batch}×{seq_len} tokens", flush=True)
    start = time.time()
    for step, window in enumerate(batches(stream, seq_len, batch, steps, train["seed"])):
        lr, wd = schedule(step, steps, train)
        opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"] = lr, wd
        opt.param_groups[1]["lr"] = lr
        logits = forward(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, shape.vocab), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            rate = (step + 1) * batch * seq_len / (time.time() - start)
            print(f"[{variant}] step {step} loss {loss.item():.4f} lr {lr:.2e} wd {wd:.3f} {rate:.0f} tok/s", flush=True)
    model.train_seconds = time.time() - start
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=pathlib.Path, required=True)
    parser.add_argument("--variant", choices=["ternary", "fp", "both"], default="ternary")
    parser.add_argument("--steps", type=int, help="override the config's step count (smoke runs)")
    parser.add_argument("--out", type=pathlib.Path, help="export directory (default: the config's)")
    parser.add_argument("--work", type=pathlib.Path, default=ROOT / "out", help="caches and run reports")
    args = parser.parse_args()

    cfg = load_config(args.config)
    torch.set_num_threads(cfg["train"].get("threads", torch.get_num_threads()))
    name = args.config.stem
    args.work.mkdir(parents=True, exist_ok=True)
    tok, tok_dir, stream, valid_text = prepare_tokens(cfg, args.work)
    valid_ids = tok.encode(valid_text).ids
    steps = args.steps or cfg["train"]["steps"]
    window = cfg["train"]["seq_len"]
    print(f"corpus: {len(stream)} training tokens, {len(valid_ids)} validation tokens", flush=True)

    for variant in (["ternary", "fp"] if args.variant == "both" else [args.variant]):
        model = train_variant(cfg, variant, stream, steps)
        model.eval()
        report = {
            "config": name, "variant": variant, "steps": steps,
            "tokens_seen": steps * cfg["train"]["batch"] * window,
            "train_seconds": round(model.train_seconds, 1),
            "parameters": model.parameter_counts(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        ppl, count = perplexity(model, valid_ids, window)
        report["valid_perplexity_latent"] = ppl
        report["valid_tokens"] = count
        if variant == "ternary":
            out = args.out or ROOT.parent / cfg["export"]["dir"]
            export.write_hf(model, tok_dir, out, cfg)
            exported = export.load_hf(out)
            report["valid_perplexity_exported"], _ = perplexity(exported, valid_ids, window)
            out = out.resolve()
            report["export_dir"] = str(out.relative_to(ROOT.parent) if out.is_relative_to(ROOT.parent) else out)
        (args.work / f"{name}-{variant}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    sys.exit(main())
