"""Batched CIFAR augmentation on the device: random crop with zero padding, then horizontal flip.

Equivalent in distribution to torchvision's ``RandomCrop(H, padding=p)`` followed by
``RandomHorizontalFlip()``, but done for a whole batch with two ``gather`` calls instead of a Python
loop over images. The random numbers are drawn on the CPU from an explicit generator, so CPU and
CUDA runs see the same crops and flips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_crop_flip(
    batch_size: int, padding: int, hflip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop offsets, int64 (B, 2) in [0, 2*padding] as (row, col), and flips, bool (B,), on CPU.

    Both are always drawn (flips ignored when ``hflip`` is False) so that toggling one option does not
    shift the random stream of the other.
    """
    offsets = torch.randint(0, 2 * padding + 1, (batch_size, 2), generator=generator)
    flips = torch.rand(batch_size, generator=generator) < 0.5
    if not hflip:
        flips = torch.zeros_like(flips)
    return offsets, flips


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each zero-padded image at its offset and mirror it where ``flips`` is set.

    Args:
        images: (B, C, H, W), any dtype (uint8 here), on any device.
        offsets: int64 (B, 2): top-left corner (row, col) of the crop in the padded image, in
            [0, 2*padding]; offset (padding, padding) is the un-shifted image.
        flips: bool (B,): mirror left-right after cropping.
        padding: zero padding added on every side before cropping, in pixels.

    Returns:
        (B, C, H, W) tensor of the input's dtype and device.
    """
    batch, channels, height, width = images.shape
    device = images.device
    offsets = offsets.to(device)
    flips = flips.to(device)
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = offsets[:, :1] + torch.arange(height, device=device)  # (B, H)
    cols = torch.arange(width, device=device).expand(batch, width)
    # Mirroring the crop = reading its columns right to left, so the flip folds into the column index.
    cols = torch.where(flips[:, None], width - 1 - cols, cols) + offsets[:, 1:]  # (B, W)
    padded_width = padded.shape[-1]
    out = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, padded_width))
    return out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))
