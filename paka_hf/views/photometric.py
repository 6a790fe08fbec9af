r"""Photometric operations on a *batch* of views, each view with its own factor.

``torchvision.transforms.v2.functional`` applies one scalar factor to a whole batch; DINO
augmentation draws a factor per view. These functions follow torchvision's definitions for ``uint8``
images line by line, with the factor broadcast per view, so that rendering the augmentation of a
whole batch on the accelerator (:func:`paka_hf.views.glim.render_views`) gives what the per-view CPU path
(:class:`paka_hf.views.augment.PhotometricAugment` on one ``uint8`` view) gives.

Views are float32 ``(V, 3, H, W)`` holding *integral values in [0, 255]* ("uint8 semantics"): every
op ends as torchvision's ``uint8`` kernels end — ``clamp(0, 255)`` and the truncating cast
``.to(uint8)`` (here ``trunc``), or ``round`` for the blur — so intermediate results are the same
integers. Factors are float64 ``(V,)`` tensors, cast to float32 where torchvision casts its Python
float, and ``1 − factor`` is formed in float64 as torchvision forms it in Python.

With ``x`` a view, ``f`` its factor and ``⌊·⌋`` the truncating cast:

.. math::

    \mathrm{gray}(x) &= ⌊0.2989\,r + 0.587\,g + 0.114\,b⌋ \\
    \mathrm{blend}(x, o, f) &= ⌊\mathrm{clamp}(f\,x + (1 - f)\,o,\ 0, 255)⌋ \\
    \mathrm{brightness}(x, f) &= \mathrm{blend}(x, 0, f) \qquad
    \mathrm{saturation}(x, f) = \mathrm{blend}(x, \mathrm{gray}(x), f) \\
    \mathrm{contrast}(x, f) &= \mathrm{blend}(x, \overline{\mathrm{gray}(x)}, f) \quad (\text{mean over the view})

hue: RGB → HSV on ``x / 255``, ``h ← (h + f) mod 1``, back to RGB, ``⌊255.999 · rgb⌋``; Gaussian blur:
reflect-padded convolution with the normalised kernel ``softmax(−(t/σ)²)``, ``t`` evenly spaced on
``[−(k−1)/(2√2), (k−1)/(2√2)]``, outer product of two such 1-D kernels, then ``round``.

A factor of 1 (brightness, contrast, saturation) leaves an integral view exactly unchanged, which is
how a view that does not get an op is passed through a batched op without branching (no host–device
synchronisation).
"""

from __future__ import annotations

import functools
import math

import torch
from torch.nn import functional as nnf

# torchvision's luma weights (ITU-R 601-2, as in PIL and torchvision's rgb_to_grayscale)
_LUMA = (0.2989, 0.587, 0.114)
# HSV sector → which of (v, p, q, t) each RGB channel takes (torchvision's _hsv_to_rgb table)
_HSV_SELECT = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))


def _check_views(views: torch.Tensor) -> None:
    if views.ndim != 4 or views.shape[1] != 3 or not views.is_floating_point():
        raise ValueError(
            f"views must be float (V, 3, H, W) with values in [0, 255], got {views.dtype} {tuple(views.shape)}"
        )


def _per_view(factor: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    if factor.shape != views.shape[:1]:
        raise ValueError(f"need one factor per view: {views.shape[0]} views, factors of shape {tuple(factor.shape)}")
    return factor.to(device=views.device)


def to_uint8_values(views: torch.Tensor) -> torch.Tensor:
    """In place: ``clamp(0, 255)`` then truncate, i.e. what ``.to(torch.uint8)`` does to a float tensor.

    Args:
        views: a float tensor, modified in place.

    Returns:
        ``views`` itself.
    """
    return views.clamp_(0, 255).trunc_()


def grayscale(views: torch.Tensor, floor: bool = True) -> torch.Tensor:
    """Luma ``(V, 1, H, W)``: torchvision's ``_rgb_to_grayscale_image``, floored (truncated) as for ``uint8``.

    Args:
        views: ``(V, 3, H, W)`` float views with integral values in [0, 255].
        floor: floor the luma, as ``uint8`` arithmetic does.

    Returns:
        The ``(V, 1, H, W)`` luma.
    """
    r, g, b = views.unbind(dim=-3)
    luma = r.mul(_LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(-3)
    return luma.floor_() if floor else luma


def blend(views: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``⌊clamp(f·x + (1 − f)·other, 0, 255)⌋`` per view (torchvision's ``_blend`` on ``uint8``).

    Args:
        views: ``(V, 3, H, W)`` float views with integral values in [0, 255].
        other: what to blend with, broadcastable against ``views``.
        factor: ``(V,)`` the weight ``f`` of ``views``, one per view.

    Returns:
        The blended ``(V, 3, H, W)`` float views, integral values in [0, 255].

    Raises:
        ValueError: ``factor`` is not ``(V,)``.
    """
    factor = _per_view(factor, views).double()
    ratio = factor.float().view(-1, 1, 1, 1)
    alpha = (1.0 - factor).float().view(-1, 1, 1, 1)  # formed in double, as torchvision forms 1.0 - ratio
    # torchvision's ``add_(other, alpha=1 − f)`` is one fused multiply-add (one rounding); float64 reproduces it
    blended = views.mul(ratio).double().addcmul_(other.double(), alpha.double()).float()
    return to_uint8_values(blended)


def adjust_brightness(views: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-view ``torchvision.transforms.v2.functional.adjust_brightness`` (``x · f``).

    Args:
        views: ``(V, 3, H, W)`` float views with integral values in [0, 255].
        factor: ``(V,)`` one factor per view.

    Returns:
        The adjusted ``(V, 3, H, W)`` float views, integral values in [0, 255].

    Raises:
        ValueError: ``views`` is not a float ``(V, 3, H, W)`` batch, or ``factor`` is not ``(V,)``.
    """
    _check_views(views)
    return to_uint8_values(views.mul(_per_view(factor, views).float().view(-1, 1, 1, 1)))


def adjust_saturation(views: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-view ``adjust_saturation``: blend with the view's own (floored) grayscale.

    Args:
        views: ``(V, 3, H, W)`` float views with integral values in [0, 255].
        factor: ``(V,)`` one factor per view.

    Returns:
        The adjusted ``(V, 3, H, W)`` float views, integral values in [0, 255].

    Raises:
        ValueError: ``views`` is not a float ``(V, 3, H, W)`` batch, or ``factor`` is not ``(V,)``.
    """
    _check_views(views)
    return blend(views, grayscale(views), factor)


def adjust_contrast(views: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-view ``adjust_contrast``: blend with the mean of the view's (floored) grayscale.

    Args:
        views: ``(V, 3, H, W)`` float views with integral values in [0, 255].
        factor: ``(V,)`` one factor per view.

    Returns:
        The adjusted ``(V, 3, H, W)`` float views, integral values in [0, 255].

    Raises:
        ValueError: ``views`` is not a float ``(V, 3, H, W)`` batch, or ``factor`` is not ``(V,)``.
    """
    _check_views(views)
    return blend(views, grayscale(views).mean(dim=(-3, -2, -1), keepdim=True), factor)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_rgb_to_hsv`` (from Pillow's Convert.c) on ``(..., 3, H, W)`` in [0, 1]."""
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    channels_range_divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - image) / channels_range_divisor).unbind(dim=-3)
    mask_maxc_neq_r = maxc != r
    mask_maxc_eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(mask_maxc_eq_g & mask_maxc_neq_r)
    hr = bc.sub_(gc).mul_(~mask_maxc_neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(mask_maxc_neq_r.logical_and_(mask_maxc_eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb)
    h = h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _make_hsv_select_table(device: torch.device) -> torch.Tensor:
    return torch.tensor(_HSV_SELECT, dtype=torch.long, device=device)


_cached_hsv_select_table = functools.lru_cache(maxsize=None)(_make_hsv_select_table)


def _hsv_select_table(device: torch.device) -> torch.Tensor:
    """The (3, 6) sector table, made once per device (torchvision copies it to the device on every call).
    Under ``torch.compile`` it becomes a constant of the graph: no cache there (Dynamo would bypass it, and warn)."""
    if torch.compiler.is_compiling():
        return _make_hsv_select_table(device)
    return _cached_hsv_select_table(device)


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_hsv_to_rgb``, with the sector table cached on the views' device."""
    h, s, v = img.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int64)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    i.remainder_(6)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = _hsv_select_table(img.device)[:, i].moveaxis(0, -3)  # (..., 3, H, W) indices into (v, p, q, t)
    return vpqt.gather(-3, select)


def adjust_hue(views: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-view ``adjust_hue`` (``factor`` in [−0.5, 0.5]): hue rotation in HSV, as torchvision on ``uint8``.

    Args:
        views: ``(V, 3, H, W)`` float views with integral values in [0, 255].
        factor: ``(V,)`` the hue shift of each view, in [−0.5, 0.5].

    Returns:
        The adjusted ``(V, 3, H, W)`` float views, integral values in [0, 255].

    Raises:
        ValueError: ``views`` is not a float ``(V, 3, H, W)`` batch, or ``factor`` is not ``(V,)``.
    """
    _check_views(views)
    shift = _per_view(factor, views).float().view(-1, 1, 1)
    hsv = _rgb_to_hsv(views.mul(1.0 / 255))
    h, s, v = hsv.unbind(dim=-3)
    h = h.add(shift).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return rgb.mul_(255 + 1.0 - 1e-3).trunc_()  # to_dtype(uint8, scale=True)


def rgb_to_grayscale(views: torch.Tensor) -> torch.Tensor:
    """``rgb_to_grayscale(num_output_channels=3)`` on ``uint8``: truncated luma in all three channels.

    Args:
        views: ``(V, 3, H, W)`` float views with integral values in [0, 255].

    Returns:
        ``(V, 3, H, W)``: the luma repeated in the three channels.

    Raises:
        ValueError: ``views`` is not a float ``(V, 3, H, W)`` batch.
    """
    _check_views(views)
    return grayscale(views, floor=False).trunc_().expand_as(views)


def gaussian_kernels(kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """``(V, k, k)`` kernels of torchvision's ``_get_gaussian_kernel2d`` with σ per view (σ > 0).

    Args:
        kernel_size: the kernel's side ``k``, odd.
        sigma: ``(V,)`` σ per view, all > 0.

    Returns:
        ``(V, k, k)`` float32 kernels, each summing to 1.
    """
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32, device=sigma.device)
    kernel1d = torch.softmax(t.div(sigma.float().view(-1, 1)).pow(2).neg(), dim=-1)  # (V, k)
    return kernel1d.unsqueeze(-1) * kernel1d.unsqueeze(-2)


def gaussian_blur(views: torch.Tensor, sigma: torch.Tensor, kernel_size: int = 9) -> torch.Tensor:
    """Per-view ``gaussian_blur(kernel_size=[k, k], sigma=[σ, σ])`` on ``uint8`` (reflect padding, rounded).

    One grouped convolution over the batch: every (view, channel) plane is its own group.
    ``σ ≤ 0`` marks a view to leave untouched (it gets σ = 1 inside and is then passed through).

    Args:
        views: ``(V, 3, H, W)`` float views with integral values in [0, 255].
        sigma: ``(V,)`` σ per view; ≤ 0 for no blur.
        kernel_size: the kernel's side ``k``, odd.

    Returns:
        The blurred ``(V, 3, H, W)`` float views, integral values in [0, 255].

    Raises:
        ValueError: ``views`` is not a float ``(V, 3, H, W)`` batch, ``sigma`` is not ``(V,)``, or ``kernel_size``
            is even or non-positive.
    """
    _check_views(views)
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    sigma = _per_view(sigma, views)
    blur = sigma > 0
    kernels = gaussian_kernels(kernel_size, torch.where(blur, sigma, torch.ones_like(sigma)))
    count, channels, height, width = views.shape
    weight = kernels.repeat_interleave(channels, dim=0).unsqueeze(1)  # (V·3, 1, k, k)
    pad = kernel_size // 2
    padded = nnf.pad(views.reshape(1, count * channels, height, width), [pad] * 4, mode="reflect")
    blurred = nnf.conv2d(padded, weight, groups=count * channels).view_as(views).round_()
    return torch.where(blur.view(-1, 1, 1, 1), blurred, views)
