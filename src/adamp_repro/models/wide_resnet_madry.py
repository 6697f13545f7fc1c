"""The Madry-style Wide-ResNet of the adversarial-training table (project page P4a; docs/paper.md §3).

Read from the codebase the AdamP page links to (louis2889184/pytorch-adversarial-training, commit
4c18cef, ``src/model/madry_model.py``): Zagoruyko & Komodakis' WRN-d-k with BN-ReLU pre-activation
basic blocks, except that where a block changes width or resolution its shortcut is
``AvgPool2d(stride) + zero channel padding`` (zeros split evenly before and after) instead of a 1x1
conv. As in that code, such a block feeds the *pre-activated* input relu(bn1(x)) to both branches,
while a same-width block adds the raw input x. Activation: ReLU (the 2020-08 commit 5972322 switched
to LeakyReLU(0.1); the paper predates it). Input pixels in [0, 1] with no normalisation in that code.

Registered with timm: ``wide_resnet34_10_madry`` (WRN-34-10, 45.9M parameters at 10 classes) and the
test-sized ``wide_resnet10_2_madry``; ``MadryWideResNet(depth, widen_factor)`` builds any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from adamp_repro.models.layers import (
    LinearHeadClassifier,
    drop_timm_plumbing,
    he_normal_fan_out_,
    pad_channels,
    reject_pretrained,
)


class PoolPadShortcut(nn.Module):
    """AvgPool2d(kernel=stride, stride=stride) + zero channel padding: (B, C, H, W) -> (B, out, H/s, W/s)."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride, self.stride)
        return pad_channels(x, self.out_channels)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3, plus the shortcut (no activation after the sum)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_channels == out_channels and stride == 1
        self.shortcut = None if self.equal_in_out else PoolPadShortcut(out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(activated))


class MadryWideResNet(LinearHeadClassifier):
    """WRN-depth-widen_factor, Madry variant. Input (B, in_chans, H, W) -> logits (B, num_classes).

    Args:
        depth: 6n+4 (10, 16, 22, 28, 34, ...): n pre-activation blocks in each of 3 stages.
        widen_factor: stage widths are 16k, 32k, 64k after a 16-filter 3x3 stem.
        num_classes: outputs of the classifier.
        drop_rate: dropout between the two convs of each block (0 in the codebase).
        in_chans: input channels.
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        drop_rate: float = 0.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"Wide-ResNet depth must be 6n+4 with n >= 1 (10, 16, 28, 34, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive integer, got {widen_factor}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.num_classes, self.drop_rate, self.num_features = num_classes, drop_rate, widths[-1]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        stages, in_channels = [], widths[0]
        for index, width in enumerate(widths[1:]):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(PreActBlock(in_channels, width, stride, drop_rate))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        # The codebase's init: He normal (fan-out) convs, BN weight 1 / bias 0, linear bias 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                he_normal_fan_out_(module)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> activated feature maps (B, 64k, H/4, W/4)."""
        return F.relu(self.bn(self.stages(self.conv1(x))))


@register_model
def wide_resnet34_10_madry(pretrained: bool = False, **kwargs) -> MadryWideResNet:
    """WRN-34-10, Madry variant: the network of the adversarial-training table (P4a)."""
    reject_pretrained("wide_resnet34_10_madry", pretrained)
    return MadryWideResNet(**{"depth": 34, "widen_factor": 10, **drop_timm_plumbing(kwargs)})


@register_model
def wide_resnet10_2_madry(pretrained: bool = False, **kwargs) -> MadryWideResNet:
    """WRN-10-2, Madry variant (0.3M parameters): the same code path at test size."""
    reject_pretrained("wide_resnet10_2_madry", pretrained)
    return MadryWideResNet(**{"depth": 10, "widen_factor": 2, **drop_timm_plumbing(kwargs)})
