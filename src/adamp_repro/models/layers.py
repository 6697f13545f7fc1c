"""Small building blocks shared by the CIFAR networks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pad_channels(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) to (B, out_channels, H, W), zeros split evenly before and after the channels."""
    extra = out_channels - x.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {x.shape[1]} channels down to {out_channels}")
    return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


def he_normal_fan_out_(conv: nn.Conv2d) -> None:
    """He et al. 2015 init, N(0, 2 / (k*k*out_channels)), as in the CIFAR ResNet and WRN codebases."""
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))


def reject_pretrained(name: str, pretrained: bool) -> None:
    """Our CIFAR networks have no published weights: refuse ``pretrained=True`` instead of ignoring it."""
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; set model.pretrained=false")


# Keys timm.create_model passes to every entrypoint; our plain nn.Module constructors do not take them.
TIMM_PLUMBING = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def drop_timm_plumbing(kwargs: dict) -> dict:
    """``kwargs`` without timm's factory plumbing keys (see ``TIMM_PLUMBING``)."""
    return {k: v for k, v in kwargs.items() if k not in TIMM_PLUMBING}


class LinearHeadClassifier(nn.Module):
    """timm's classifier interface for the CIFAR networks: global average pooling, then the ``fc`` Linear head.

    Subclasses define ``forward_features`` (B, C, H, W) -> (B, num_features, h, w), ``fc``, ``num_features``,
    ``num_classes``; ``head_drop_rate`` (default 0) applies dropout before the head.
    """

    head_drop_rate: float = 0.0

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = F.dropout(x, self.head_drop_rate, self.training) if self.head_drop_rate else x
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
