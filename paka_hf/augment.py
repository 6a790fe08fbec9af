"""DINO-style photometric augmentation of a student view, with parameters from a ``torch.Generator``.

SPEC §1: colour jitter (brightness, contrast, saturation 0.8, hue 0.2) applied with p = 0.8 in a
random order, grayscale with p = 0.2, Gaussian blur with σ ~ U[0.1, 2] and p = 0.5. The operations
are torchvision's (``transforms.v2.functional``) on ``uint8`` tensors; only the random draws are
ours, so that a seeded generator makes a sample reproducible (``transforms.v2.ColorJitter`` draws
from the global RNG).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(p: float, generator: torch.Generator | None) -> bool:
    return p > 0 and torch.rand((), generator=generator).item() < p


@dataclass
class PhotometricAugment:
    """Callable: ``augment(view_uint8 (3, H, W), generator) -> (3, H, W) uint8``."""

    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int = 9

    def __post_init__(self):
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} jitter strength must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {self.hue}")
        for name in ("jitter_p", "grayscale_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.blur_kernel_size % 2 == 0 or self.blur_kernel_size < 1:
            raise ValueError(f"blur_kernel_size must be odd and positive, got {self.blur_kernel_size}")

    def __call__(self, view: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if _chance(self.jitter_p, generator):
            view = self._jitter(view, generator)
        if _chance(self.grayscale_p, generator):
            view = F.rgb_to_grayscale(view, num_output_channels=3)
        if _chance(self.blur_p, generator):
            sigma = _uniform(*self.blur_sigma, generator)
            view = F.gaussian_blur(view, kernel_size=[self.blur_kernel_size] * 2, sigma=[sigma, sigma])
        return view

    def _jitter(self, view: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        ops = [
            (F.adjust_brightness, max(0.0, 1 - self.brightness), 1 + self.brightness),
            (F.adjust_contrast, max(0.0, 1 - self.contrast), 1 + self.contrast),
            (F.adjust_saturation, max(0.0, 1 - self.saturation), 1 + self.saturation),
            (F.adjust_hue, -self.hue, self.hue),
        ]
        for index in torch.randperm(len(ops), generator=generator).tolist():
            op, low, high = ops[index]
            if high > low:
                view = op(view, _uniform(low, high, generator))
        return view
