"""BitNet b1.58 in PyTorch: the microsoft/bitnet-b1.58-2B-4T block at any size.

RMSNorm (gain, no offset), RoPE in the NeoX half-split layout, grouped-query attention, a ReLU² FFN
with gate and up, the sub-norms before the output and down projections, no biases, and an LM head
tied to the embedding. Every projection is a BitLinear: f32 latent weights, and in the forward pass
absmean ternary weights and per-token absmax int8 activations, trained through the straight-through
estimator. `ternary=False` gives the full-precision twin (plain linear layers, all else equal).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def absmean_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmean quantization: t = clamp(round(W / s), -1, 1) with s = mean|W|."""
    scale = w.abs().mean().clamp(min=1e-5)
    return (w / scale).round().clamp(-1, 1), scale


def absmax_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax quantization: q = clamp(round(x · 127 / max|x|), -128, 127) (round half even)."""
    absmax = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * (127.0 / absmax)).round().clamp(-128, 127), absmax


class BitLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, ternary: bool):
        super().__init__(in_features, out_features, bias=False)
        self.ternary = ternary
        # Set by `load_ternary` for evaluation of exported weights: exact codes and the stored scale.
        self.register_buffer("codes", None, persistent=False)
        self.register_buffer("stored_scale", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ternary:
            return F.linear(x, self.weight)
        q, absmax = absmax_int8(x)
        if self.codes is not None:
            # As an inference engine computes it: an exact integer dot, then both scales.
            return F.linear(q, self.codes) * (absmax / 127.0) * self.stored_scale
        t, scale = absmean_ternary(self.weight)
        # Straight-through estimator: quantized values forward, identity gradient backward.
        x_q = x + (q * (absmax / 127.0) - x).detach()
        w_q = self.weight + (t * scale - self.weight).detach()
        return F.linear(x_q, w_q)

    def load_ternary(self, codes: torch.Tensor, scale: float) -> None:
        self.codes = codes.float()
        self.stored_scale = torch.tensor(scale, dtype=torch.float32)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_tables(shape: Shape, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = shape.rope_theta ** (-torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim)
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Block(nn.Module):
    def __init__(self, shape: Shape, ternary: bool):
        super().__init__()
        s, q_dim, kv_dim = shape, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        self.shape = s
        self.input_layernorm = RMSNorm(s.hidden, s.rms_eps)
        self.q_proj = BitLinear(s.hidden, q_dim, ternary)
        self.k_proj = BitLinear(s.hidden, kv_dim, ternary)
        self.v_proj = BitLinear(s.hidden, kv_dim, ternary)
        self.attn_sub_norm = RMSNorm(q_dim, s.rms_eps)
        self.o_proj = BitLinear(q_dim, s.hidden, ternary)
        self.post_attention_layernorm = RMSNorm(s.hidden, s.rms_eps)
        self.gate_proj = BitLinear(s.hidden, s.intermediate, ternary)
        self.up_proj = BitLinear(s.hidden, s.intermediate, ternary)
        self.ffn_sub_norm = RMSNorm(s.intermediate, s.rms_eps)
        self.down_proj = BitLinear(s.intermediate, s.hidden, ternary)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        s = self.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(batch, tokens, s.heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, tokens, s.kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, tokens, s.kv_heads, s.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = s.heads // s.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        attn = attn.transpose(1, 2).reshape(batch, tokens, s.heads * s.head_dim)
        x = x + self.o_proj(self.attn_sub_norm(attn))
        h = self.post_attention_layernorm(x)
        ffn = F.relu(self.gate_proj(h)).square() * self.up_proj(h)
        return x + self.down_proj(self.ffn_sub_norm(ffn))


class BitNet(nn.Module):
    def __init__(self, shape: Shape, ternary: bool = True):
        super().__init__()
        self.shape = shape
        self.embed_tokens = nn.Embedding(shape.vocab, shape.hidden)
        self.layers = nn.ModuleList(Block(shape, ternary) for _ in range(shape.layers))
        self.norm = RMSNorm(shape.hidden, shape.rms_eps)
        cos, sin = rope_tables(shape, shape.max_positions)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [batch, tokens, vocab] (f32) of each position given the ones before it."""
        tokens = ids.shape[1]
        cos, sin = self.cos[:tokens], self.sin[:tokens]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return F.linear(self.norm(x), self.embed_tokens.weight)

    def parameter_counts(self) -> dict[str, int]:
        projections = sum(p.numel() for n, p in self.named_parameters() if n.endswith("proj.weight"))
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "projections": projections, "embedding": self.embed_tokens.weight.numel()}
