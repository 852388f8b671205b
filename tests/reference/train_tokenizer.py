#!/usr/bin/env python3
"""Train the small byte-level BPE tokenizer used by every committed test fixture.

The result (tests/fixtures/tokenizer/tokenizer.json + tokenizer_config.json) is committed; the
`cargo xtask fixtures` command copies it into each fixture directory. It is modelled on the LLaMA-3
tokenizer shipped with microsoft/bitnet-b1.58-2B-4T: the same split regex + ByteLevel pre-tokenizer,
ByteLevel decoder, a TemplateProcessing post-processor that prepends <|begin_of_text|>, and the
LLaMA-3 special tokens appended after the regular vocabulary.

Corpus: English prose generated from templates below plus the docstrings of the Python standard
library (deterministic for a given Python version; the output file is what the tests depend on).

Run:  .venv/bin/python tests/reference/train_tokenizer.py
"""

import importlib
import pathlib
import random
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "train"))
from tokenizer import train  # noqa: E402 - the one tokenizer recipe, shared with the trained model

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
VOCAB = 1024  # 256 byte tokens + 763 merges, then the 5 LLaMA-3 special tokens (ids 1019..1023)

SUBJECTS = ["The cat", "A small model", "The engine", "My friend", "The old river", "Every student",
            "The tokenizer", "A quiet village", "The red fox", "Our team", "The weather", "The user"]
VERBS = ["runs", "reads", "writes", "sees", "finds", "builds", "answers", "likes", "moves", "tests"]
OBJECTS = ["the book", "a long story", "the answer", "many words", "the green hill", "a new idea",
           "the fast train", "the open door", "three apples", "the last page", "a simple question"]
TAILS = ["today.", "in the morning.", "every night.", "with great care.", "before dinner.",
         "again and again.", "for the first time.", "because it is fun.", "near the sea."]
CHAT = ["Hello! How are you today?", "What is the capital of France?", "Tell me a short story.",
        "The capital of France is Paris.", "I am fine, thank you.", "Once upon a time there was a king.",
        "User: Hi there<|eot_id|>Assistant: Hello, how can I help you?<|eot_id|>"]


def corpus() -> list[str]:
    rng = random.Random(1234)
    lines = []
    for _ in range(4000):
        lines.append(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}")
    for _ in range(200):
        lines.extend(CHAT)
        lines.append(" ".join(str(rng.randint(0, 99999)) for _ in range(8)))
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in {"antigravity", "this", "idlelib", "tkinter", "turtle"}:
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform-specific modules
            continue
        doc = getattr(mod, "__doc__", None)
        if isinstance(doc, str):
            lines.append(doc)
        for attr in sorted(dir(mod))[:40]:
            d = getattr(getattr(mod, attr, None), "__doc__", None)
            if isinstance(d, str) and len(d) < 4000:
                lines.append(d)
    return lines


def main() -> None:
    check = train(corpus(), VOCAB, OUT, model_max_length=256)
    enc = check.encode("Hello world! The capital of France is Paris.")
    print("vocab", check.get_vocab_size(), "ids", enc.ids, "tokens", enc.tokens)


if __name__ == "__main__":
    main()
