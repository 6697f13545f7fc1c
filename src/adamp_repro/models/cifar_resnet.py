"""CIFAR ResNets, registered with timm: ``timm.create_model("cifar_resnet20", num_classes=10)``.

- ``cifar_resnet20/32/56``: He et al. 2016 ("Deep Residual Learning", arXiv 1512.03385, section 4.2):
  a 3x3 conv with 16 filters, then 3 stages of n basic blocks (two 3x3 convs, BN after every conv) with
  16/32/64 filters on 32/16/8-pixel maps, global average pooling and one linear layer; depth 6n+2.
  Shortcuts are option A by default, as in the paper for CIFAR: identity, subsampled by taking every
  second pixel and zero-padded in channels where a stage starts (no parameters). ``shortcut="B"`` uses
  a 1x1 conv + BN projection there instead.
- ``cifar_resnet18``: timm's ImageNet ResNet-18 (basic blocks, 64-512 filters, 1x1 conv + BN projection
  shortcuts) with the CIFAR stem used throughout the CIFAR literature: one 3x3 stride-1 conv and no
  max-pool, so a 32x32 input reaches the last stage at 4x4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import ResNet
from torch import nn

from adamp_repro.models.layers import (
    LinearHeadClassifier,
    drop_timm_plumbing,
    he_normal_fan_out_,
    pad_channels,
    reject_pretrained,
)

SHORTCUTS = ("A", "B")


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU: (B, in, H, W) -> (B, out, H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride, self.out_channels = stride, out_channels
        self.shortcut_type = shortcut
        self.downsample: nn.Module | None = None
        if shortcut == "B" and (stride != 1 or in_channels != out_channels):
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            return self.downsample(x)
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return pad_channels(x, self.out_channels) if x.shape[1] != self.out_channels else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(LinearHeadClassifier):
    """He et al. 2016 CIFAR ResNet of depth 6n+2. Input (B, in_chans, H, W) -> logits (B, num_classes).

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...).
        num_classes: outputs of the last linear layer.
        shortcut: "A" (parameter-free, the paper's CIFAR choice) or "B" (1x1 conv + BN projection).
        widths: filters of the three stages.
        in_chans: input channels.
        drop_rate: dropout before the classifier (0 in the paper).
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        shortcut: str = "A",
        widths: tuple[int, int, int] = (16, 32, 64),
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 56, ...), got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        blocks_per_stage = (depth - 2) // 6
        self.num_classes, self.head_drop_rate, self.num_features = num_classes, drop_rate, widths[-1]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_channels = [], widths[0]
        for index, width in enumerate(widths):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, shortcut))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(self.num_features, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                he_normal_fan_out_(module)  # "We initialize the weights as in [13]" (He et al. 2016, 4.2)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> feature maps (B, widths[-1], H/4, W/4)."""
        return self.stages(F.relu(self.bn1(self.conv1(x))))


def _cifar_resnet(name: str, depth: int, pretrained: bool, kwargs: dict) -> CifarResNet:
    reject_pretrained(name, pretrained)
    return CifarResNet(depth=depth, **drop_timm_plumbing(kwargs))


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (He et al. 2016, 0.27M parameters), option-A shortcuts by default."""
    return _cifar_resnet("cifar_resnet20", 20, pretrained, kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR (He et al. 2016, 0.46M parameters), option-A shortcuts by default."""
    return _cifar_resnet("cifar_resnet32", 32, pretrained, kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR (He et al. 2016, 0.85M parameters), option-A shortcuts by default."""
    return _cifar_resnet("cifar_resnet56", 56, pretrained, kwargs)


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18 (11.2M parameters at 10 classes), 3x3 stride-1 stem and no max-pool, for 32x32 inputs."""
    reject_pretrained("cifar_resnet18", pretrained)
    kwargs = drop_timm_plumbing(kwargs)
    model = ResNet(block=TimmBasicBlock, layers=(2, 2, 2, 2), **kwargs)
    # Swap the ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool) for the CIFAR one.
    model.conv1 = nn.Conv2d(kwargs.get("in_chans", 3), 64, 3, stride=1, padding=1, bias=False)
    he_normal_fan_out_(model.conv1)  # timm's own conv init (kaiming normal, fan_out, relu)
    model.maxpool = nn.Identity()
    for info in model.feature_info:  # every stage now sees 4x less downsampling than in the ImageNet net
        info["reduction"] = max(1, info["reduction"] // 4)
    return model
