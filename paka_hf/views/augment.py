"""DINO-style photometric augmentation of a student view, with parameters from a ``torch.Generator``.

DINO's recipe (Caron et al., 2021; docs/METHOD.md §2): colour jitter (brightness, contrast, saturation 0.8, hue 0.2) applied with p = 0.8 in a
random order, grayscale with p = 0.2, Gaussian blur with σ ~ U[0.1, 2] and p = 0.5. The operations
are torchvision's (``transforms.v2.functional``) on ``uint8`` tensors; only the random draws are
ours, so that a seeded generator makes a sample reproducible (``transforms.v2.ColorJitter`` draws
from the global RNG).

Drawing and applying are separate steps, so that the draws can be made on the CPU and the
operations run elsewhere: :meth:`PhotometricAugment.sample` returns a packed parameter vector
(:data:`PARAM_FIELDS`), :meth:`~PhotometricAugment.apply` applies it to one ``uint8`` view with
torchvision, and :meth:`~PhotometricAugment.apply_batch` applies a ``(V, P)`` stack of them to a
batch of views with :mod:`paka_hf.views.photometric` (per-view factors, same definitions). The parameter
vector, float64, ``P = 11``::

    [jitter, order_0..order_3, brightness, contrast, saturation, hue, grayscale, sigma]

``jitter``/``grayscale`` are 0 or 1; ``order`` is the permutation of the four jitter ops (0
brightness, 1 contrast, 2 saturation, 3 hue); a factor whose range is empty is stored as its
identity (1, 1, 1, 0) and skipped; ``sigma = 0`` means no blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F

from paka_hf.views import photometric

PARAM_FIELDS = (
    "jitter",
    "order0",
    "order1",
    "order2",
    "order3",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "grayscale",
    "sigma",
)
NUM_PARAMS = len(PARAM_FIELDS)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
_IDENTITY = (1.0, 1.0, 1.0, 0.0)  # factors that leave a view unchanged
_SINGLE_VIEW_OPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(p: float, generator: torch.Generator | None) -> bool:
    return p > 0 and torch.rand((), generator=generator).item() < p


@dataclass
class PhotometricAugment:
    """Callable: ``augment(view_uint8 (3, H, W), generator) -> (3, H, W) uint8``.

    Args:
        brightness: brightness jitter strength; factors drawn from ``[max(0, 1 − b), 1 + b]``.
        contrast: contrast jitter strength, likewise.
        saturation: saturation jitter strength, likewise.
        hue: hue jitter, shifts drawn from ``[−hue, hue]``, in ``[0, 0.5]``.
        jitter_p: probability of the color jitter.
        grayscale_p: probability of turning the view gray.
        blur_p: probability of the Gaussian blur.
        blur_sigma: ``(min, max)`` range of the blur's σ.
        blur_kernel_size: the blur kernel's side, odd.

    Raises:
        ValueError: a strength below 0, a hue outside ``[0, 0.5]``, a probability outside ``[0, 1]``, an even or
            non-positive kernel size, or a σ range that is not ``0 < min <= max``.
    """

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
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {tuple(self.blur_sigma)}")

    def _ranges(self) -> list[tuple[float, float]]:
        return [
            (max(0.0, 1 - self.brightness), 1 + self.brightness),
            (max(0.0, 1 - self.contrast), 1 + self.contrast),
            (max(0.0, 1 - self.saturation), 1 + self.saturation),
            (-self.hue, self.hue),
        ]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one view's parameters: a float64 ``(P,)`` vector (layout in the module docstring).

        The draws, in order: jitter?, then (if jittered) the op order and each op's factor in that
        order, grayscale?, blur?, then (if blurred) σ — one ``torch.rand``/``randperm`` each.

        Args:
            generator: the random generator; None for torch's global one.

        Returns:
            The ``(P,)`` float64 parameters.
        """
        params = [0.0, 0.0, 1.0, 2.0, 3.0, *_IDENTITY, 0.0, 0.0]  # plain floats: a tensor at the end, once
        if _chance(self.jitter_p, generator):
            params[0] = 1.0
            order = torch.randperm(4, generator=generator).tolist()
            params[1:5] = [float(i) for i in order]
            ranges = self._ranges()
            for index in order:
                low, high = ranges[index]
                if high > low:
                    params[5 + index] = _uniform(low, high, generator)
        if _chance(self.grayscale_p, generator):
            params[9] = 1.0
        if _chance(self.blur_p, generator):
            params[10] = _uniform(*self.blur_sigma, generator)
        return torch.tensor(params, dtype=torch.float64)

    def apply(self, view: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """One ``uint8`` view ``(3, H, W)`` with torchvision's ops (the CPU path, and the reference).

        Args:
            view: a ``(3, H, W)`` uint8 view.
            params: the ``(P,)`` parameters :meth:`sample` drew.

        Returns:
            The augmented ``(3, H, W)`` uint8 view.
        """
        values = params.tolist()
        if values[0]:
            ranges = self._ranges()
            for index in (int(i) for i in values[1:5]):
                low, high = ranges[index]
                if high > low:
                    view = _SINGLE_VIEW_OPS[index](view, values[5 + index])
        if values[9]:
            view = F.rgb_to_grayscale(view, num_output_channels=3)
        if values[10] > 0:
            sigma = values[10]
            view = F.gaussian_blur(view, kernel_size=[self.blur_kernel_size] * 2, sigma=[sigma, sigma])
        return view

    def __call__(self, view: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(view, self.sample(generator))

    @staticmethod
    def apply_batch(views: torch.Tensor, params: torch.Tensor, kernel_size: int = 9) -> torch.Tensor:
        """A batch ``(V, 3, H, W)`` (float, integral values in [0, 255]) with per-view ``params`` ``(V, P)``.

        Same result as :meth:`apply` on each view (:mod:`paka_hf.views.photometric` follows torchvision's
        ``uint8`` definitions), without any branch on the parameters' values. A view's jitter is a
        sequence of blends (brightness, contrast, saturation: one formula, blend with 0, the mean
        gray or the gray) with one hue rotation somewhere in it. So: the blends before each view's
        hue (positions 0–2; factor 1, the identity, where a view has no blend there), one hue
        rotation for the whole batch (kept where the view has one), the blends after it
        (positions 1–3); then grayscale and blur where drawn. The expensive hue runs once, not at
        each of the four positions.

        Args:
            views: ``(V, 3, H, W)`` float views with integral values in [0, 255].
            params: ``(V, P)`` parameters, one row per view (:meth:`sample`).
            kernel_size: the blur kernel's side, odd.

        Returns:
            The augmented ``(V, 3, H, W)`` float views, integral values in [0, 255].

        Raises:
            ValueError: ``params`` is not ``(V, P)``, ``views`` is not a float ``(V, 3, H, W)`` batch, or
                ``kernel_size`` is even or non-positive.
        """
        if params.ndim != 2 or params.shape != (views.shape[0], NUM_PARAMS):
            raise ValueError(
                f"params must be ({views.shape[0]}, {NUM_PARAMS}), one row per view, got {tuple(params.shape)}"
            )
        params = params.to(device=views.device, dtype=torch.float64)
        jitter = params[:, 0] > 0
        order = params[:, 1:5].long()
        factors = params[:, 5:9]
        hue_position = (order == HUE).long().argmax(dim=1)  # (V,)

        def blends(views: torch.Tensor, positions: range, before_hue: bool) -> torch.Tensor:
            for position in positions:
                op = order[:, position]
                factor = factors.gather(1, op[:, None]).squeeze(1)
                here = (position < hue_position) if before_hue else (position > hue_position)
                active = jitter & here & (op != HUE)
                gray = photometric.grayscale(views)
                mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
                op_ = op.view(-1, 1, 1, 1)
                other = torch.where(
                    op_ == BRIGHTNESS, torch.zeros_like(mean), torch.where(op_ == CONTRAST, mean, gray)
                )
                views = photometric.blend(views, other, torch.where(active, factor, torch.ones_like(factor)))
            return views

        views = blends(views, range(0, 3), before_hue=True)
        hue = factors[:, HUE]
        rotate = jitter & (hue != 0)
        rotated = photometric.adjust_hue(views, torch.where(rotate, hue, torch.zeros_like(hue)))
        views = torch.where(rotate.view(-1, 1, 1, 1), rotated, views)
        views = blends(views, range(1, 4), before_hue=False)
        gray_views = photometric.rgb_to_grayscale(views)
        views = torch.where((params[:, 9] > 0).view(-1, 1, 1, 1), gray_views, views)
        return photometric.gaussian_blur(views, params[:, 10], kernel_size)
