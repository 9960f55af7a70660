"""CNN: a ResNet-style image classifier (He et al. 2016, the CIFAR variant with basic blocks).

    x (B, C, H, W) -> stem: conv3x3 -> norm -> relu              (B, width, H, W)
                   -> n_stages x depth basic blocks; stage i has width * 2**i channels and
                      halves the resolution at its first block (except stage 0)
                   -> global average pool                         (B, width * 2**(n_stages-1))
                   -> linear head                                 (B, n_classes)

Normalization is GroupNorm, not BatchNorm: GroupNorm normalizes each image on its own, so the
forward pass is the same whatever the batch is split into. With BatchNorm a run on 2 processes
would see different batch statistics than the same run on 1 process, and the loss curves would
differ.

Biases: convolutions have none (a norm follows each of them, whose shift plays the bias's role);
the head has one. `scaling.counting` follows these choices exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from scaling.families import family_of
from scaling.families.cnn import CNNConfig, cnn_blocks


def norm_groups(channels: int) -> int:
    """GroupNorm groups for `channels`: the most groups (at most 32) that still leave at least 8
    channels per group, so a group never degenerates to one channel on a 1x1 feature map."""
    for groups in range(min(32, channels // 8), 1, -1):
        if channels % groups == 0:
            return groups
    return 1


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, residual: float = 1.0):
        super().__init__()
        self.residual = residual  # muP's depth multiplier on the branch; 1 under sp
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.norm2 = norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            # A 1x1 projection, so the residual add sees the same shape on both sides.
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))  # (B, c_out, H / stride, W / stride)
        out = self.norm2(self.conv2(out))  # (B, c_out, H / stride, W / stride)
        if self.residual != 1.0:
            out = self.residual * out
        return F.relu(out + self.shortcut(x))


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig):
        super().__init__()
        assert cfg.in_channels is not None and cfg.n_classes is not None, "use scaling.models.build_model"
        self.cfg = cfg
        # Set by the trainer; recomputes each block in backward instead of storing activations.
        self.activation_checkpointing: bool = False
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.width, 3, padding=1, bias=False), norm(cfg.width), nn.ReLU()
        )
        # The layout is shared with the analytic count, so the two cannot drift apart.
        self.mup = family_of(cfg).mup(cfg)
        blocks = [BasicBlock(c_in, c_out, stride, self.mup.residual) for c_in, c_out, stride, _ in cnn_blocks(cfg)]
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cfg.width * 2 ** (cfg.n_stages - 1), cfg.n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for convs followed by ReLU; the last norm of each residual branch starts at
        # zero so every block starts as the identity (Goyal et al. 2017), which keeps deep
        # ladders trainable without tuning per size. He init's variance, 2 / fan_out, already
        # falls as 1/width for the hidden convs, as muP asks; the stem is an input weight, whose
        # scale muP keeps constant in width, so under muP its fan is taken at the base width.
        stem = self.stem[0]
        for module in self.modules():
            if module is stem and self.cfg.parametrization == "mup":
                fan = self.cfg.mup.base_width * stem.kernel_size[0] * stem.kernel_size[1]
                with torch.no_grad():
                    stem.weight.normal_(0, math.sqrt(2.0) / math.sqrt(fan))  # kaiming_normal_'s draw
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for block in self.blocks:
            nn.init.zeros_(block.norm2.weight)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, width, H, W)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = x.mean(dim=(2, 3))  # (B, channels of the last stage)
        logits = self.head(x)  # (B, n_classes)
        return logits if self.mup.output == 1.0 else logits * self.mup.output  # muP: x 1/width_mult
