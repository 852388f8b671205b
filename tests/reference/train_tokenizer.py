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
import json
import pathlib
import random
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tokenizer"

REGULAR_VOCAB = 1019  # 256 byte tokens + 763 merges
SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
]  # ids 1019..1023 -> vocab 1024 (a multiple of 64)

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Chat template modelled on microsoft/bitnet-b1.58-2B-4T's tokenizer_config.json.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

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
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=REGULAR_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert tok.get_vocab_size() == REGULAR_VOCAB, tok.get_vocab_size()
    tok.add_special_tokens(SPECIALS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos)],
        ),
    ])
    OUT.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"), pretty=True)

    config = {
        "added_tokens_decoder": {
            str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": True}
            for s in SPECIALS
        },
        "bos_token": "<|begin_of_text|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 256,
        "pad_token": None,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    check = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    enc = check.encode("Hello world! The capital of France is Paris.")
    assert enc.ids[0] == bos, enc.ids
    assert check.decode(enc.ids, skip_special_tokens=True) == "Hello world! The capital of France is Paris."
    print("vocab", check.get_vocab_size(), "ids", enc.ids, "tokens", enc.tokens)


if __name__ == "__main__":
    main()
