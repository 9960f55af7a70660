"""ViT: a Vision Transformer classifier (Dosovitskiy et al. 2021).
    x (B, C, H, W) -> patch embedding: conv p x p, stride p, with bias   (B, d, H/p, W/p)
                   -> flatten to tokens                                  (B, P, d)
                   -> [class token] + learned position embedding         (B, T, d)
                   -> n_layers x the GPT's pre-norm block, attention not masked
                   -> ln_f -> class token (pool=cls) or mean over tokens (B, d)
                   -> linear head                                        (B, n_classes)
The blocks are `scaling.models.gpt.Block`, so the two transformer families share one attention
and one MLP. `scaling.families.vit` counts these choices exactly, and a test checks it against
`sum(p.numel())` and FlopCounterMode.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from scaling.families.vit import ViTConfig
from scaling.families import family_of
from scaling.models.gpt import Block, init_transformer


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        assert cfg.in_channels is not None and cfg.n_classes is not None, "use scaling.models.build_model"
        self.cfg = cfg
        # Set by the trainer; recomputes each block in backward instead of storing activations.
        self.activation_checkpointing: bool = False
        d = cfg.d_model
        self.patch = nn.Conv2d(cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "cls" else None
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_tokens, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        for block in self.blocks:
            block.attn.causal = False  # every patch sees every other
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.n_classes)
        self.mup = family_of(cfg).mup(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        # As the GPT (init_transformer, muP included). The position table and class token are
        # N(0, 0.02); the patch projection is a linear map of a flattened patch, initialised like
        # one (fan-in, constant in width: an input weight under muP). The head starts at zero, so
        # the first loss is ln(n_classes) whatever the width (as in Dosovitskiy et al.).
        init_transformer(self, self.cfg)
        nn.init.normal_(self.pos, std=0.02)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)
        fan_in = self.patch.in_channels * self.cfg.patch_size**2
        nn.init.normal_(self.patch.weight, std=1 / math.sqrt(fan_in))
        nn.init.zeros_(self.patch.bias)
        nn.init.zeros_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)  # (B, d, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, P, d)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, T, d)
        x = x + self.pos  # (B, T, d)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.ln_f(x)  # (B, T, d)
        x = x[:, 0] if self.cls is not None else x.mean(dim=1)  # (B, d)
        logits = self.head(x)  # (B, n_classes)
        return logits if self.mup.output == 1.0 else logits * self.mup.output  # muP: x 1/width_mult
