"""A byte-level BPE tokenizer in the LLaMA-3 style of microsoft/bitnet-b1.58-2B-4T's.

The same split regex + ByteLevel pre-tokenizer, ByteLevel decoder, a TemplateProcessing
post-processor that prepends <|begin_of_text|>, the LLaMA-3 special tokens after the regular
vocabulary, and a chat template modelled on the 2B-4T's (`Role: content<|eot_id|>` turns, BOS before
the first message, `Assistant: ` as the generation prompt). Used for the trained model
(train/train.py) and for the test fixtures' tokenizer (tests/reference/train_tokenizer.py).
"""

import json
import pathlib
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIALS = [BOS, EOS, EOT, "<|start_header_id|>", "<|end_header_id|>"]

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def chat_text(messages: list[dict]) -> str:
    """The chat template above, rendered in Python (training data for the chat stage)."""
    turns = [f"{m['role'].capitalize()}: {m['content'].strip()}{EOT}" for m in messages]
    return BOS + "".join(turns)


def train(texts: Iterable[str], vocab_size: int, out: pathlib.Path, model_max_length: int) -> Tokenizer:
    """Trains on `texts`, writes tokenizer.json + tokenizer_config.json into `out`.

    `vocab_size` counts the special tokens, which take the last ids.
    """
    regular = vocab_size - len(SPECIALS)
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=regular,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == regular, tok.get_vocab_size()
    tok.add_special_tokens(SPECIALS)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single=f"{BOS} $A",
            pair=f"{BOS} $A {BOS}:1 $B:1",
            special_tokens=[(BOS, bos)],
        ),
    ])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=True)

    config = {
        "added_tokens_decoder": {
            str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": True}
            for s in SPECIALS
        },
        "bos_token": BOS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOT,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "pad_token": None,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    check = Tokenizer.from_file(str(out / "tokenizer.json"))
    sentence = "Hello world! The capital of France is Paris."
    enc = check.encode(sentence)
    assert enc.ids[0] == bos, enc.ids
    assert check.decode(enc.ids, skip_special_tokens=True) == sentence
    return check
