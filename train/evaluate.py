#!/usr/bin/env python3
"""Reference figures of an exported model, computed by PyTorch from the exported tensors themselves.

    python train/evaluate.py --model models/tern-pydoc-6m [--golden tests/reference/goldens/tern-pydoc-6m]

Prints the perplexity over the whole held-out split (windows of the model's context, as
`tern perplexity --ctx N` windows it) and writes the golden files Tern's tests compare against:
  <golden>.safetensors  p{i}.ids/logits/greedy/greedy_margin for a few prompts (the format of
                        tests/reference/goldens), and eval.ids/top1/margin/nll/perplexity over a
                        validation excerpt, in non-overlapping windows;
  <golden>-valid.txt    that excerpt (so `tern perplexity --file` sees the same text);
  <golden>.json         the perplexities (whole split and excerpt), printed too.
"""

import argparse
import json
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import corpus
import export
import tokenizer as tern_tokenizer

EXCERPT_TOKENS = 2048  # eight 256-token windows: quick on a software adapter, enough for 0.5 %
GREEDY_TOKENS = 32


@torch.no_grad()
def window_figures(model, ids: list[int], window: int) -> dict[str, torch.Tensor]:
    """Per predicted position: the reference's top-1 id, its top-2 margin, the target's NLL."""
    top1, margin, nll = [], [], []
    for start in range(0, len(ids), window):
        chunk = torch.tensor(ids[start:start + window])
        if len(chunk) < 2:
            continue
        logits = model(chunk[None])[0, :-1]
        best = logits.topk(2, dim=-1)
        top1.append(best.indices[:, 0])
        margin.append(best.values[:, 0] - best.values[:, 1])
        nll.append(F.cross_entropy(logits, chunk[1:], reduction="none"))
    figures = {"top1": torch.cat(top1), "margin": torch.cat(margin), "nll": torch.cat(nll)}
    figures["perplexity"] = figures["nll"].double().mean().exp().float().reshape(1)
    return figures


@torch.no_grad()
def greedy(model, ids: list[int], steps: int) -> tuple[list[int], list[float]]:
    """The greedy continuation and the top-2 margin at each step (full recompute: exact, not fast)."""
    ids, out, margins = list(ids), [], []
    for _ in range(steps):
        best = model(torch.tensor(ids)[None])[0, -1].topk(2)
        out.append(int(best.indices[0]))
        margins.append(float(best.values[0] - best.values[1]))
        ids.append(out[-1])
    return out, margins


def excerpt(text: str, tok, tokens: int) -> str:
    """The shortest run of whole paragraphs at the start of `text` that encodes to ≥ `tokens` ids."""
    paragraphs, taken = text.split("\n\n"), []
    for paragraph in paragraphs:
        taken.append(paragraph)
        if len(tok.encode("\n\n".join(taken)).ids) >= tokens:
            break
    return "\n\n".join(taken)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=pathlib.Path, required=True)
    parser.add_argument("--golden", type=pathlib.Path, help="golden path prefix (writes the golden files)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = export.load_hf(args.model)
    tok = export.load_tokenizer(args.model)
    window = model.shape.max_positions
    _, valid_docs = corpus.split()
    valid_text = "\n\n".join(text for _, text in valid_docs)
    whole = window_figures(model, tok.encode(valid_text).ids, window)
    figures = {"model": args.model.name, "window": window, "valid_tokens": len(whole["nll"]),
               "valid_perplexity": float(whole["perplexity"])}
    if not args.golden:
        print(json.dumps(figures))
        return

    sample = excerpt(valid_text, tok, EXCERPT_TOKENS)
    ids = tok.encode(sample).ids
    tensors = {f"eval.{k}": v for k, v in window_figures(model, ids, window).items()}
    tensors["eval.ids"] = torch.tensor(ids)
    tensors["eval.window"] = torch.tensor([window])
    prompts = [
        tok.encode(valid_docs[1][1][:300]).ids[:64],
        tok.encode(tern_tokenizer.chat_text([{"role": "user", "content": "What does os.path.join do?"}])
                   + "Assistant: ", add_special_tokens=False).ids,
    ]
    for p, prompt in enumerate(prompts):
        tensors[f"p{p}.ids"] = torch.tensor(prompt)
        tensors[f"p{p}.logits"] = model(torch.tensor(prompt)[None])[0].contiguous()
        continuation, margins = greedy(model, prompt, GREEDY_TOKENS)
        tensors[f"p{p}.greedy"] = torch.tensor(continuation)
        tensors[f"p{p}.greedy_margin"] = torch.tensor(margins)
    args.golden.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.golden) + ".safetensors")
    pathlib.Path(str(args.golden) + "-valid.txt").write_text(sample)
    figures |= {"excerpt_tokens": len(ids), "excerpt_perplexity": float(tensors["eval.perplexity"])}
    pathlib.Path(str(args.golden) + ".json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
