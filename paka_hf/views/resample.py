r"""Crop-and-resize of many boxes at once, as Pillow's bicubic ``Image.resize(size, box=...)`` does it.

The CPU path renders a view with ``PIL.Image.resize((S, S), BICUBIC, box=(x1, y1, x2, y2))``. Pillow
resamples separably, horizontal pass first, each pass a weighted sum of input pixels rounded to
8 bits. For an axis, box ``[a, b)`` of an ``n``-pixel input and ``S`` outputs (Pillow's
``precompute_coeffs``):

.. math::

    s = \frac{b - a}{S},\quad \phi = \max(s, 1),\quad c_i = a + (i + \tfrac12)\,s,\quad
    w_{ij} \propto K\!\left(\frac{j + \tfrac12 - c_i}{\phi}\right)\ \text{for}\
    \lfloor c_i - 2\phi + \tfrac12 \rfloor \le j < \lfloor c_i + 2\phi + \tfrac12 \rfloor,\ 0 \le j < n

normalised to sum 1 per row, with ``K`` the bicubic kernel (a = −0.5). ``φ > 1`` widens the kernel
when downscaling: that is Pillow's antialiasing. Here the weights of every box form a matrix, and a
pass is one batched matrix product: ``(B, 3H, W) @ (B, W, n·S)`` horizontally for the ``n`` boxes of
each image, then ``(B·n, S, H) @ (B·n, H, 3S)`` vertically, each followed by Pillow's 8-bit rounding
``clamp(⌊x + ½⌋, 0, 255)`` (on CUDA each product is two TF32 products, float32-accurate: :func:`_split_matmul`). Pillow stores the weights as 22-bit fixed point; float32 weights differ
from those by less than 1e-6, so a pixel differs from Pillow's at most by one level, where a sum
falls within round-off of a half (measured: mean absolute difference ~1e-3 levels; tests/test_views_device_rendering.py).

A horizontal flip of the output is folded into the weights (their rows reversed): free.
Images of different sizes share a zero-padded batch; each image's weights stop at its own size.
"""

from __future__ import annotations

import math

import torch


def bicubic_kernel(x: torch.Tensor) -> torch.Tensor:
    """Pillow's bicubic filter (Keys, a = −0.5), support 2.

    Args:
        x: distances from the sample point, any shape.

    Returns:
        The filter's weights, same shape; 0 for ``|x| >= 2``.
    """
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resize_weights(
    start: torch.Tensor, end: torch.Tensor, in_size: torch.Tensor, out_size: int, length: int
) -> torch.Tensor:
    """Pillow's bicubic resampling weights for one axis of many boxes: ``(K, out_size, length)`` float32.

    ``start``/``end`` ``(K,)``: the box on this axis in input pixels, inside the image; ``in_size``
    ``(K,)``: the image's size on this axis (weights stop there); ``length``: the padded axis length
    (≥ every ``in_size``). Row ``i`` holds the weights of output pixel ``i`` (module docstring).

    Only the taps of each row are computed (at most ``⌈4φ_max⌉ + 2``, φ_max = max(length / out_size, 1)),
    in float64 as Pillow does, then scattered into the dense matrix the matrix products need.

    Args:
        start: ``(K,)`` box start on this axis, input pixels.
        end: ``(K,)`` box end on this axis, input pixels.
        in_size: ``(K,)`` the image's size on this axis.
        out_size: the output side ``S``.
        length: the padded axis length.

    Returns:
        ``(K, S, length)`` float32, each row summing to 1.
    """
    start, end = start.double(), end.double()
    scale = (end - start) / out_size  # (K,)
    filter_scale = scale.clamp_min(1.0)[:, None, None]
    support = 2.0 * filter_scale
    centre = start[:, None] + (torch.arange(out_size, device=start.device, dtype=torch.float64) + 0.5) * scale[:, None]
    centre = centre[..., None]  # (K, S, 1)
    low = torch.trunc(centre - support + 0.5).clamp_min(0)  # Pillow's (int) casts
    high = torch.minimum(torch.trunc(centre + support + 0.5), in_size.to(centre)[:, None, None])
    taps = math.ceil(4.0 * max(length / out_size, 1.0)) + 2  # a static bound on high - low
    j = low + torch.arange(taps, device=start.device, dtype=torch.float64)  # (K, S, taps)
    weights = bicubic_kernel((j - centre + 0.5) / filter_scale) * (j < high)
    total = weights.sum(-1, keepdim=True)
    weights = (weights / torch.where(total == 0, torch.ones_like(total), total)).float()
    index = j.clamp_max(length - 1).long()  # taps past the end carry weight 0: adding them changes nothing
    dense = torch.zeros(*weights.shape[:2], length, dtype=torch.float32, device=weights.device)
    return dense.scatter_add_(2, index, weights)


def _split_matmul(weights_left: bool, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (batched) to float32 accuracy, where the operand that is not the weights holds integers ≤ 255.

    On CUDA with two TF32 products instead of one float32 product (about 3× faster on Hopper): the
    weights ``w = w_hi + w_lo`` with ``w_hi`` cut to TF32's 10-bit mantissa, so ``x @ w_hi`` is exact
    up to float32 accumulation, and ``x @ w_lo`` carries the rest with a relative error of 2⁻¹¹ of a
    term already 2⁻¹¹ smaller; the pixels (integers < 2¹¹) are exact in TF32. Elsewhere a plain float32 product.
    """
    if a.device.type != "cuda":
        return torch.bmm(a, b)
    weights = a if weights_left else b
    high = (weights.view(torch.int32) & -8192).view(torch.float32)  # keep sign, exponent and 10 mantissa bits
    low = weights - high
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        if weights_left:
            return torch.bmm(high, b).add_(torch.bmm(low, b))
        return torch.bmm(a, high).add_(torch.bmm(a, low))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _round_to_uint8_values(values: torch.Tensor) -> torch.Tensor:
    """Pillow's ``clip8`` after each pass: round half up, clamp to [0, 255] (kept as float)."""
    return values.add_(0.5).floor_().clamp_(0, 255)


def resample_boxes(
    images: torch.Tensor,
    image_sizes: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop ``boxes`` out of ``images`` and resize each to ``size`` × ``size``, bicubic, Pillow-exact.

    Args:
        images: ``(B, 3, H, W)`` float, integral values in [0, 255] (zero-padded beyond each image's size).
        image_sizes: ``(B, 2)`` each image's true ``(height, width)``.
        boxes: ``(B, n, 4)`` float ``(x1, y1, x2, y2)`` in pixels of the image.
        size: output side ``S``.
        flips: optional ``(B, n)`` bool, mirror the view horizontally.

    Returns:
        ``(B, n, 3, S, S)`` float32 with integral values in [0, 255] (what ``pil_to_tensor`` of the
        Pillow view holds, up to one level where Pillow's fixed point rounds the other way).

    Raises:
        ValueError: ``images``, ``boxes`` or ``image_sizes`` do not have the shapes above.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be (B={batch}, n, 4), got {tuple(boxes.shape)}")
    if image_sizes.shape != (batch, 2):
        raise ValueError(f"image_sizes must be (B={batch}, 2) as (height, width), got {tuple(image_sizes.shape)}")
    n = boxes.shape[1]
    flat = boxes.reshape(-1, 4)
    heights = image_sizes[:, 0].repeat_interleave(n)
    widths = image_sizes[:, 1].repeat_interleave(n)
    wx = resize_weights(flat[:, 0], flat[:, 2], widths, size, width)  # (B·n, S, W)
    wy = resize_weights(flat[:, 1], flat[:, 3], heights, size, height)  # (B·n, S, H)
    if flips is not None:
        wx = torch.where(flips.reshape(-1, 1, 1).to(wx.device), wx.flip(1), wx)
    # horizontal pass, the n boxes of an image side by side: (B, 3H, W) @ (B, W, n·S)
    wx_t = wx.view(batch, n * size, width).transpose(1, 2)
    rows = _round_to_uint8_values(_split_matmul(False, images.float().reshape(batch, 3 * height, width), wx_t))
    rows = rows.view(batch, 3, height, n, size).permute(0, 3, 2, 1, 4).reshape(batch * n, height, 3 * size)
    # vertical pass per box: (B·n, S, H) @ (B·n, H, 3·S)
    out = _round_to_uint8_values(_split_matmul(True, wy, rows))
    return out.view(batch, n, size, 3, size).permute(0, 1, 3, 2, 4)
