"""Export in the microsoft/bitnet-b1.58-2B-4T packed layout, and load it back for evaluation.

Layout (what Tern and transformers read): every projection `…_proj.weight` is U8 [out/4, in] with
the 2-bit codes t + 1 of four output-row blocks (`packed[r, k] = Σ_i code[i·out/4 + r, k] << 2i`) and
`…_proj.weight_scale` BF16 [1], a multiplier (`linear_class: autobitlinear`); the embedding (also
the tied LM head) and the norms are BF16.
"""

import json
import pathlib
import shutil

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

import tokenizer as tern_tokenizer
from model import BitNet, Shape, absmean_ternary

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN = ("gate_proj", "up_proj", "down_proj")


def load_tokenizer(directory: pathlib.Path) -> Tokenizer:
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


def tensor_name(layer: int, module: str) -> str:
    """The checkpoint name of a block's module (this package's flat names → the 2B-4T's)."""
    if module in ATTENTION or module == "attn_sub_norm":
        return f"model.layers.{layer}.self_attn.{module}"
    if module in FFN or module == "ffn_sub_norm":
        return f"model.layers.{layer}.mlp.{module}"
    return f"model.layers.{layer}.{module}"


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Ternary [out, in] → U8 [out/4, in] (output-axis blocks of out/4 rows, block i at bits 2i)."""
    out = codes.shape[0]
    assert out % 4 == 0, f"{out} output rows: not a multiple of 4"
    c = (codes + 1).to(torch.uint8).view(4, out // 4, -1)
    return c[0] | (c[1] << 2) | (c[2] << 4) | (c[3] << 6)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    blocks = [((packed >> (2 * i)) & 3).to(torch.int8) - 1 for i in range(4)]
    return torch.cat(blocks, dim=0)


def config_json(shape: Shape, tok: Tokenizer) -> dict:
    return {
        "architectures": ["BitNetForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tok.token_to_id(tern_tokenizer.BOS),
        "eos_token_id": tok.token_to_id(tern_tokenizer.EOS),
        "hidden_act": "relu2",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate,
        "max_position_embeddings": shape.max_positions,
        "model_type": "bitnet",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "quantization_config": {"linear_class": "autobitlinear", "quant_method": "bitnet",
                                "quantization_mode": "offline"},
        "rms_norm_eps": shape.rms_eps,
        "rope_scaling": None,
        "rope_theta": shape.rope_theta,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": shape.vocab,
    }


@torch.no_grad()
def write_hf(model: BitNet, tok_dir: pathlib.Path, out: pathlib.Path, cfg: dict) -> None:
    bf16 = lambda t: t.detach().to(torch.bfloat16).contiguous()  # noqa: E731
    tensors = {"model.embed_tokens.weight": bf16(model.embed_tokens.weight),
               "model.norm.weight": bf16(model.norm.weight)}
    for i, layer in enumerate(model.layers):
        for module_name, module in layer.named_children():
            name = tensor_name(i, module_name)
            if module_name.endswith("proj"):
                codes, scale = absmean_ternary(module.weight)
                tensors[f"{name}.weight"] = pack(codes.to(torch.int8))
                tensors[f"{name}.weight_scale"] = bf16(scale.reshape(1))
            else:
                tensors[f"{name}.weight"] = bf16(module.weight)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok = load_tokenizer(tok_dir)
    config = config_json(model.shape, tok)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "do_sample": True,
                  "eos_token_id": [config["eos_token_id"], tok.token_to_id(tern_tokenizer.EOT)],
                  "max_length": model.shape.max_positions, "temperature": 0.6, "top_p": 0.9}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok_dir / name, out / name)
    card = out / "README.md"
    if "card" in cfg.get("export", {}):
        card.write_text(cfg["export"]["card"].strip() + "\n")


def load_hf(directory: pathlib.Path) -> BitNet:
    """The exported checkpoint as a BitNet that computes with exactly the stored codes and scales."""
    config = json.loads((directory / "config.json").read_text())
    shape = Shape(hidden=config["hidden_size"], layers=config["num_hidden_layers"],
                  heads=config["num_attention_heads"], kv_heads=config["num_key_value_heads"],
                  intermediate=config["intermediate_size"], vocab=config["vocab_size"],
                  max_positions=config["max_position_embeddings"], rope_theta=config["rope_theta"],
                  rms_eps=config["rms_norm_eps"])
    tensors = load_file(str(directory / "model.safetensors"))
    model = BitNet(shape, ternary=True)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(tensors["model.embed_tokens.weight"].float())
        model.norm.weight.copy_(tensors["model.norm.weight"].float())
        for i, layer in enumerate(model.layers):
            for module_name, module in layer.named_children():
                name = tensor_name(i, module_name)
                if module_name.endswith("proj"):
                    module.load_ternary(unpack(tensors[f"{name}.weight"]),
                                        tensors[f"{name}.weight_scale"].float().item())
                else:
                    module.weight.copy_(tensors[f"{name}.weight"].float())
    return model.eval()
