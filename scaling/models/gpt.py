"""GPT: a pre-norm decoder-only transformer, GPT-2 style.

    idx (B, T) -> token embedding + learned position embedding
               -> n_layers x [x + attn(ln_1(x)); x + mlp(ln_2(x))]
               -> ln_f -> head -> logits (B, T, vocab_size)

Biases: every Linear inside a block has a bias (as GPT-2); the output head has none, so a tied
head is exactly the token embedding matrix. LayerNorms have a weight and a bias. The parameter
count in `scaling.counting.count_params` follows these choices exactly, and a test checks it
against `sum(p.numel())`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from scaling.families import family_of
from scaling.families.gpt import GPTConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = True  # a ViT's blocks attend both ways
        # Attention logits scale 1/sqrt(d_head), or under muP sqrt(d_head_base) / d_head (Yang et
        # al. 2022: 1/d keeps the logits' scale as d_head grows); None leaves SDPA's default, so
        # the base shape computes exactly what sp computes.
        self.scale = None
        head_dim, base = cfg.d_model // cfg.n_heads, getattr(cfg, "mup", None)
        if cfg.parametrization == "mup" and base.base_head_dim not in (None, head_dim):
            self.scale = math.sqrt(base.base_head_dim) / head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape  # (batch, seq, d_model)
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        # (B, T, D) -> (B, n_heads, T, head_dim)
        q = q.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)
        k = k.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)
        v = v.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)  # (B, H, T, head_dim)
        y = y.transpose(1, 2).contiguous().view(B, T, D)  # (B, T, D)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))  # (B, T, d_ff) inside, (B, T, D) out


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        # muP's depth multiplier (base_depth / depth)^alpha on each residual branch; 1 under sp.
        self.residual = family_of(cfg).mup(cfg).residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual == 1.0:
            x = x + self.attn(self.ln_1(x))  # (B, T, D)
            return x + self.mlp(self.ln_2(x))  # (B, T, D)
        x = x + self.residual * self.attn(self.ln_1(x))
        return x + self.residual * self.mlp(self.ln_2(x))


def init_transformer(model: nn.Module, cfg: Any, std: float = 0.02) -> None:
    """GPT-2's init, shared with the ViT: every Linear and Embedding N(0, std), zero biases, and
    the projections that write into the residual stream N(0, std / sqrt(2 n_layers)) so the
    stream's variance does not grow with depth (two residual writes per layer). LayerNorms keep
    ones and zeros. Under muP the matrices inside the blocks (hidden) get std x 1/sqrt(width_mult),
    and the residual factor is taken at the base depth: depth is scaled by the branch multiplier
    instead, not twice. Modules are visited in the same order under both parametrizations, so sp
    draws the same initial weights as it always has."""
    scales = family_of(cfg).mup(cfg)
    hidden = std * scales.hidden_init
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=hidden if name.startswith("blocks.") else std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    depth = cfg.mup.base_depth if cfg.parametrization == "mup" else cfg.n_layers
    for block in model.blocks:
        nn.init.normal_(block.attn.proj.weight, mean=0.0, std=hidden / math.sqrt(2 * depth))
        nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=hidden / math.sqrt(2 * depth))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.vocab_size is not None and cfg.seq_len is not None, "use scaling.models.build_model"
        self.cfg = cfg
        # Set by the trainer; recomputes each block in backward instead of storing activations.
        self.activation_checkpointing: bool = False
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.mup = family_of(cfg).mup(cfg)
        if cfg.tie_embeddings:
            self.head.weight = self.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        init_transformer(self, self.cfg)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape  # (batch, seq)
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than model.seq_len={self.cfg.seq_len}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, D)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.ln_f(x)  # (B, T, D)
        logits = self.head(x)  # (B, T, vocab_size)
        return logits if self.mup.output == 1.0 else logits * self.mup.output  # muP: x 1/width_mult
