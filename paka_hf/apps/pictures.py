"""Pictures of dense features for the model card: PCA-to-RGB maps, overclustering overlays, patch retrieval.

Each picture puts the base model and the PaKA-adapted model side by side on the same images, so a reader
sees what post-training changed:

* ``pca.png`` -- the first three principal components of each model's last-layer patch tokens as RGB
  (PCA fitted per model, jointly over all images shown, so colours are comparable across images).
* ``clusters.png`` -- k-means with ``n_clusters`` clusters on the L2-normalised patch tokens of each model
  (one clustering over all images), overlaid on the images.
* ``retrieval.png`` -- cosine similarity of every patch to one query patch (white box), for each model,
  with the ``top_k`` most similar patches of the other images boxed in black.

Only PIL, NumPy and scikit-learn are used (no matplotlib). Example::

    >>> from paka_hf.apps.pictures import make_pictures
    >>> make_pictures("facebook/dinov2-with-registers-small", "out/", ["a.jpg", "b.jpg"], "out/pictures")
    {'pca': PosixPath('out/pictures/pca.png'), 'clusters': ..., 'retrieval': ...}

The files go to ``<output_dir>/pictures/`` where :func:`paka_hf.hub.render_model_card` finds and embeds them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from paka_hf.modeling.backbones import PatchBackbone
from paka_hf.utils.errors import ConfigError

# 20 well-separated colours (the "tab20" hues) for cluster overlays.
PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (174, 199, 232),
        (255, 187, 120),
        (152, 223, 138),
        (255, 152, 150),
        (197, 176, 213),
        (196, 156, 148),
        (247, 182, 210),
        (199, 199, 199),
        (219, 219, 141),
        (158, 218, 229),
    ],
    dtype=np.uint8,
)
# Anchors of the "viridis" colour map (dark blue = dissimilar, yellow = similar).
VIRIDIS = np.array(
    [
        (68, 1, 84),
        (72, 40, 120),
        (62, 74, 137),
        (49, 104, 142),
        (38, 130, 142),
        (31, 158, 137),
        (53, 183, 121),
        (109, 205, 89),
        (180, 222, 44),
        (253, 231, 37),
    ],
    dtype=np.float32,
)


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------


def as_backbone(model: Any, **load_kwargs: Any) -> PatchBackbone:
    """A :class:`PatchBackbone` in eval mode from a Hub id, a local folder, a transformers model or a backbone.

    Args:
        model: a Hub id, a local folder, a ``transformers`` vision model or a :class:`PatchBackbone`.
        **load_kwargs: passed to :meth:`PatchBackbone.from_pretrained` for an id or folder.

    Returns:
        The backbone, in eval mode.

    Raises:
        ConfigError: an unsupported model.
    """
    if isinstance(model, PatchBackbone):
        backbone = model
    elif isinstance(model, (str, os.PathLike)):
        backbone = PatchBackbone.from_pretrained(model, **load_kwargs)
    else:
        backbone = PatchBackbone(model)
    return backbone.eval()


def resize_and_crop(
    image: Image.Image, resolution: int, patch_size: int, resample: int = Image.BICUBIC
) -> Image.Image:
    """Resize so the short side is ``resolution``, then center-crop both sides to multiples of ``patch_size``.

    Use ``resample=Image.NEAREST`` to bring a label mask onto the same pixels as its image.

    Args:
        image: the image.
        resolution: the short side after resizing, in pixels.
        patch_size: the backbone's patch size.
        resample: the Pillow resampling filter.

    Returns:
        The resized, cropped image.

    Raises:
        ConfigError: ``resolution < patch_size``.
    """
    if resolution < patch_size:
        raise ConfigError(f"resolution {resolution} is smaller than the patch size {patch_size}")
    scale = resolution / min(image.size)
    width, height = max(patch_size, round(image.width * scale)), max(patch_size, round(image.height * scale))
    image = image.resize((width, height), resample)
    crop_w, crop_h = width // patch_size * patch_size, height // patch_size * patch_size
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h))


def prepare_image(
    image: Image.Image | str | os.PathLike,
    resolution: int,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[Image.Image, torch.Tensor]:
    """:func:`resize_and_crop` an image (RGB) and normalize it: ``(x / 255 − mean) / std`` per channel, with the
    backbone's ``image_mean`` / ``image_std`` (its checkpoint's image processor).

    ``mean`` / ``std`` default to ImageNet's (DINOv2); pass a checkpoint's own (its image processor's
    ``image_mean`` / ``image_std``) for other families. Returns the resized image (what the pictures show)
    and its ``(1, 3, H, W)`` float32 tensor.

    Args:
        image: a PIL image or an image file's path.
        resolution: the short side after resizing, in pixels.
        patch_size: the backbone's patch size.
        mean: the per-channel normalization mean.
        std: the per-channel normalization std.

    Returns:
        ``(resized image, pixel_values)``.

    Raises:
        ConfigError: ``resolution < patch_size``.
    """
    if not isinstance(image, Image.Image):
        image = Image.open(image)
    image = resize_and_crop(image.convert("RGB"), resolution, patch_size)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return image, torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


@torch.no_grad()
def patch_features(backbone: PatchBackbone, pixel_values: torch.Tensor) -> np.ndarray:
    """Last-layer patch tokens of one image as an ``(h, w, D)`` float32 array.

    Args:
        backbone: the backbone.
        pixel_values: ``(1, 3, H, W)`` normalized image.

    Returns:
        The ``(h, w, D)`` array.
    """
    param = next(backbone.parameters())
    grid = backbone(pixel_values.to(device=param.device, dtype=param.dtype))
    return grid[0].permute(1, 2, 0).float().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Analyses (pure NumPy / scikit-learn, tested on their own)
# ----------------------------------------------------------------------------------------------


def pca_rgb(feature_maps: Sequence[np.ndarray], clip_percentile: float = 1.0) -> list[np.ndarray]:
    """Project ``(h, w, D)`` maps on their first 3 principal components (fitted jointly) as uint8 RGB.

    Each component is rescaled to [0, 255] between its ``clip_percentile`` and ``100 - clip_percentile``
    percentiles over all patches, so a few extreme patches do not wash out the picture. The sign of each
    component is fixed so its mean over the first image's patches is non-negative, making the colours
    reproducible.

    Args:
        feature_maps: ``(h_i, w_i, D)`` patch-feature maps.
        clip_percentile: the percentile clipped at each end of every component.

    Returns:
        One ``(h_i, w_i, 3)`` uint8 array per map.

    Raises:
        ValueError: fewer than 3 patches or 3 feature dimensions in all.
    """
    flat = np.concatenate([f.reshape(-1, f.shape[-1]) for f in feature_maps]).astype(np.float64)
    if flat.shape[0] < 3 or flat.shape[1] < 3:
        raise ValueError(f"PCA to RGB needs at least 3 patches and 3 feature dims, got {flat.shape}")
    mean = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    components = vt[:3]
    first = feature_maps[0].reshape(-1, flat.shape[1])
    signs = np.sign(((first - mean) @ components.T).mean(0))
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    projected = (flat - mean) @ components.T
    low = np.percentile(projected, clip_percentile, axis=0)
    high = np.percentile(projected, 100 - clip_percentile, axis=0)
    scaled = np.clip((projected - low) / np.maximum(high - low, 1e-12), 0, 1)
    out, start = [], 0
    for f in feature_maps:
        n = f.shape[0] * f.shape[1]
        out.append((scaled[start : start + n].reshape(f.shape[0], f.shape[1], 3) * 255).round().astype(np.uint8))
        start += n
    return out


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """``x / max(‖x‖₂, 1e-12)`` along the last axis (feature vectors), so dot products are cosines.

    Args:
        x: an array of vectors along its last axis.

    Returns:
        The normalized array, same shape.
    """
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cluster_labels(feature_maps: Sequence[np.ndarray], n_clusters: int, seed: int = 0) -> list[np.ndarray]:
    """k-means (scikit-learn) on the L2-normalised patch tokens of all maps jointly; ``(h, w)`` int labels.

    Args:
        feature_maps: ``(h_i, w_i, D)`` patch-feature maps.
        n_clusters: ``K`` (at most the number of patches).
        seed: the k-means random state.

    Returns:
        One ``(h_i, w_i)`` int64 label map per map.
    """
    from sklearn.cluster import KMeans

    flat = np.concatenate([f.reshape(-1, f.shape[-1]) for f in feature_maps])
    n_clusters = int(min(n_clusters, len(flat)))
    kmeans = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(l2_normalize(flat))
    out, start = [], 0
    for f in feature_maps:
        n = f.shape[0] * f.shape[1]
        out.append(kmeans.labels_[start : start + n].reshape(f.shape[:2]).astype(np.int64))
        start += n
    return out


def similarity_maps(
    feature_maps: Sequence[np.ndarray], query: tuple[int, int, int], normalized: bool = False
) -> list[np.ndarray]:
    """Cosine similarity of every patch of every map to the query patch ``(image index, row, col)``.

    ``s[i][r, c] = <f_i[r, c], q> / (‖f_i[r, c]‖ ‖q‖)`` with ``q = f_index[row, col]``: ``(h_i, w_i)``
    float32 maps in [-1, 1]. ``normalized=True`` says the maps are already :func:`l2_normalize`-d (the
    explorer keeps them so, making a click one matrix-vector product per map).

    Args:
        feature_maps: ``(h_i, w_i, D)`` patch-feature maps.
        query: ``(image index, row, col)`` of the query patch.
        normalized: the maps are already L2-normalized.

    Returns:
        One similarity map per map.
    """
    index, row, col = query
    maps = feature_maps if normalized else [l2_normalize(f) for f in feature_maps]
    q = maps[index][row, col]
    return [(f @ q).astype(np.float32) for f in maps]


def top_matches(similarity: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` (row, col) positions of highest similarity, best first.

    Args:
        similarity: an ``(h, w)`` similarity map.
        k: the number of positions.

    Returns:
        ``[(row, col), ...]``.
    """
    order = np.argsort(similarity.ravel())[::-1][:k]
    return [tuple(int(v) for v in np.unravel_index(i, similarity.shape)) for i in order]


def patch_at(x: float, y: float, image_size: tuple[int, int], grid_shape: tuple[int, int]) -> tuple[int, int]:
    """The ``(row, col)`` of the patch under pixel ``(x, y)`` of an image of ``image_size = (width, height)``
    pixels shown over a ``grid_shape = (h, w)`` patch grid (clamped to the grid).

    Args:
        x: the pixel's column.
        y: the pixel's row.
        image_size: ``(width, height)`` of the shown image.
        grid_shape: ``(h, w)`` of the patch grid.

    Returns:
        ``(row, col)``.
    """
    (width, height), (h, w) = image_size, grid_shape
    row = min(h - 1, max(0, int(y * h / height)))
    col = min(w - 1, max(0, int(x * w / width)))
    return row, col


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """``(h, w)`` integer labels as :data:`PALETTE` colours (cycled).

    Args:
        labels: the label map.

    Returns:
        ``(h, w, 3)`` uint8 RGB.
    """
    return PALETTE[labels % len(PALETTE)]


def colorize_similarity(similarity: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Map values in [low, high] to viridis RGB (uint8); the fixed range keeps the two models comparable
    (cosine similarities of dense features are rarely negative, so negatives are clipped to ``low``).

    Args:
        similarity: a similarity map, any shape.
        low: the value shown as the scale's first colour.
        high: the value shown as its last colour.

    Returns:
        ``(..., 3)`` uint8 RGB.
    """
    t = np.clip((similarity - low) / max(high - low, 1e-12), 0, 1) * (len(VIRIDIS) - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, len(VIRIDIS) - 1)
    frac = (t - lo)[..., None]
    return (VIRIDIS[lo] * (1 - frac) + VIRIDIS[hi] * frac).round().astype(np.uint8)


def _upsample(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> Image.Image:
    return Image.fromarray(array).resize(size, Image.NEAREST if nearest else Image.BILINEAR)


def _blend(image: Image.Image, overlay: Image.Image, alpha: float) -> Image.Image:
    return Image.blend(image.convert("RGB"), overlay.convert("RGB"), alpha)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _box(draw: ImageDraw.ImageDraw, row: int, col: int, cell: tuple[float, float], colour, width: int = 2) -> None:
    ch, cw = cell
    draw.rectangle([col * cw, row * ch, (col + 1) * cw - 1, (row + 1) * ch - 1], outline=colour, width=width)


def _cell(image: Image.Image, grid_shape: tuple[int, int]) -> tuple[float, float]:
    """Height and width in pixels of one patch of a ``grid_shape`` grid shown over ``image``."""
    return image.size[1] / grid_shape[0], image.size[0] / grid_shape[1]


def pca_picture(rgb: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """An ``(h, w, 3)`` :func:`pca_rgb` map bilinearly upsampled to ``size = (width, height)`` pixels.

    Args:
        rgb: the ``(h, w, 3)`` uint8 map.
        size: ``(width, height)`` in pixels.

    Returns:
        The picture.
    """
    return _upsample(rgb, size)


def cluster_overlay(image: Image.Image, labels: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """``(h, w)`` cluster labels as :data:`PALETTE` colours (nearest upsampling) blended over ``image``.

    Args:
        image: the image shown under the labels.
        labels: the ``(h, w)`` label map.
        alpha: the overlay's weight.

    Returns:
        A new RGB image.
    """
    return _blend(image, _upsample(colorize_labels(labels), image.size, True), alpha)


def similarity_overlay(
    image: Image.Image,
    similarity: np.ndarray,
    *,
    query: tuple[int, int] | None = None,
    matches: Sequence[tuple[int, int]] = (),
    alpha: float = 0.7,
    low: float = 0.0,
    high: float = 1.0,
) -> Image.Image:
    """An ``(h, w)`` similarity map in viridis over ``image`` on the fixed scale [low, high], so maps of two
    models read on the same colours; the ``query`` patch boxed in white and ``matches`` in black.

    Args:
        image: the image shown under the map.
        similarity: the ``(h, w)`` similarity map.
        query: ``(row, col)`` of the patch boxed in white, or None.
        matches: ``(row, col)`` of the patches boxed in black.
        alpha: the overlay's weight.
        low: the scale's low end.
        high: the scale's high end.

    Returns:
        A new RGB image.
    """
    tile = _blend(image, _upsample(colorize_similarity(similarity, low, high), image.size), alpha)
    return mark_patches(tile, similarity.shape, query=query, matches=matches)


def mark_patches(
    image: Image.Image,
    grid_shape: tuple[int, int],
    *,
    query: tuple[int, int] | None = None,
    matches: Sequence[tuple[int, int]] = (),
) -> Image.Image:
    """Box, in place, the ``query`` patch in white and the ``matches`` in black on ``image`` shown over a
    ``grid_shape = (h, w)`` patch grid; returns ``image``.

    Args:
        image: the image, drawn on in place.
        grid_shape: ``(h, w)`` of the patch grid.
        query: ``(row, col)`` boxed in white, or None.
        matches: ``(row, col)`` boxed in black.

    Returns:
        ``image``.
    """
    draw = ImageDraw.Draw(image)
    cell = _cell(image, grid_shape)
    if query is not None:
        _box(draw, query[0], query[1], cell, "white", 3)
    for r, c in matches:
        _box(draw, r, c, cell, "black", 2)
    return image


def compose_grid(
    rows: Sequence[Sequence[Image.Image]],
    column_titles: Sequence[str],
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    pad: int = 6,
) -> Image.Image:
    """Paste equally-sized tiles into a labelled grid on a white background.

    Args:
        rows: the tiles, row by row.
        column_titles: one title per column, drawn above it.
        row_titles: one title per row, drawn at its left, or None.
        title: a title above everything, or None.
        pad: the space between tiles, in pixels.

    Returns:
        The grid as a new RGB image.
    """
    tile_w = max(t.width for r in rows for t in r)
    tile_h = max(t.height for r in rows for t in r)
    font = _font(max(12, tile_h // 18))
    text_h = font.getbbox("Ag")[3] + 2 * pad
    left = 0
    if row_titles:
        left = max(int(font.getlength(t)) for t in row_titles) + 2 * pad
    top = text_h * (2 if title else 1)
    n_cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (left + n_cols * (tile_w + pad) + pad, top + len(rows) * (tile_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    for c, name in enumerate(column_titles):
        x = left + pad + c * (tile_w + pad)
        draw.text((x + (tile_w - font.getlength(name)) / 2, top - text_h + pad), name, fill="black", font=font)
    for r, tiles in enumerate(rows):
        y = top + pad + r * (tile_h + pad)
        if row_titles:
            draw.text((pad, y + tile_h / 2 - text_h / 2 + pad), row_titles[r], fill="black", font=font)
        for c, tile in enumerate(tiles):
            canvas.paste(tile, (left + pad + c * (tile_w + pad), y))
    return canvas


# ----------------------------------------------------------------------------------------------
# The three pictures
# ----------------------------------------------------------------------------------------------


def make_pictures(
    base: Any,
    adapted: Any,
    images: Sequence[Image.Image | str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    resolution: int = 448,
    n_clusters: int = 10,
    query: tuple[float, float] = (0.6, 0.5),
    top_k: int = 5,
    seed: int = 0,
    labels: tuple[str, str] = ("Base", "PaKA"),
) -> dict[str, Path]:
    """Write ``pca.png``, ``clusters.png`` and ``retrieval.png`` comparing ``base`` and ``adapted``.

    ``base`` / ``adapted``: Hub id, local folder, ``transformers`` vision model of a supported family or
    ``PatchBackbone``.
    ``images``: paths or PIL images (2–4 read best). ``resolution``: short side in pixels before cropping to
    multiples of the patch size. ``query``: the query patch of ``retrieval.png`` as (row, col) fractions of
    the first image. Returns ``{"pca": path, "clusters": path, "retrieval": path}``.

    Args:
        base: the base model (as above).
        adapted: the adapted model (as above).
        images: the images.
        output_dir: the folder the pictures go to (created when missing).
        resolution: the short side in pixels.
        n_clusters: ``K`` of the cluster picture.
        query: the query patch as ``(row, col)`` fractions of the first image.
        top_k: the best matches boxed in each image.
        seed: the k-means random state.
        labels: the two models' names in the pictures.

    Returns:
        The three pictures' paths by name.

    Raises:
        ValueError: no images.
        ConfigError: the models' patch sizes differ, ``resolution`` is smaller than the patch size, or a model is
            not supported.
    """
    if not images:
        raise ValueError("make_pictures needs at least one image")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbones = [as_backbone(base), as_backbone(adapted)]
    patch = backbones[0].patch_size
    if backbones[1].patch_size != patch:
        raise ConfigError(f"base and adapted models have different patch sizes ({patch} vs {backbones[1].patch_size})")

    shown, features = [], [[], []]
    for image in images:
        for m, backbone in enumerate(backbones):  # each model sees the image normalized its own way
            resized, pixels = prepare_image(image, resolution, patch, backbone.image_mean, backbone.image_std)
            features[m].append(patch_features(backbone, pixels))
        shown.append(resized)

    def tiles_for(maps_per_model, render):
        return [[image] + [render(maps_per_model[m][i], image) for m in range(2)] for i, image in enumerate(shown)]

    paths = {}
    # 1. PCA to RGB
    pca = [pca_rgb(features[m]) for m in range(2)]
    grid = compose_grid(
        tiles_for(pca, lambda rgb, image: pca_picture(rgb, image.size)),
        ["Image", f"{labels[0]}: PCA", f"{labels[1]}: PCA"],
    )
    paths["pca"] = out / "pca.png"
    grid.save(paths["pca"])

    # 2. Overclustering overlays
    clusters = [cluster_labels(features[m], n_clusters, seed) for m in range(2)]
    grid = compose_grid(
        tiles_for(clusters, lambda lab, image: cluster_overlay(image, lab)),
        ["Image", f"{labels[0]}: k-means, K={n_clusters}", f"{labels[1]}: k-means, K={n_clusters}"],
    )
    paths["clusters"] = out / "clusters.png"
    grid.save(paths["clusters"])

    # 3. Nearest-patch retrieval
    h, w = features[0][0].shape[:2]
    q = (0, min(h - 1, int(query[0] * h)), min(w - 1, int(query[1] * w)))
    rows, row_titles = [], []
    query_tile = shown[0].copy()
    _box(ImageDraw.Draw(query_tile), q[1], q[2], _cell(shown[0], (h, w)), "white", 3)
    rows.append([query_tile] + [s for s in shown[1:]])
    row_titles.append("Images")
    for m in range(2):
        sims = similarity_maps(features[m], q)
        tiles = [
            similarity_overlay(image, sim, query=q[1:])
            if i == 0
            else similarity_overlay(image, sim, matches=top_matches(sim, top_k))
            for i, (sim, image) in enumerate(zip(sims, shown))
        ]
        rows.append(tiles)
        row_titles.append(labels[m])
    grid = compose_grid(rows, ["Query image"] + [f"Image {i + 1}" for i in range(1, len(shown))], row_titles)
    paths["retrieval"] = out / "retrieval.png"
    grid.save(paths["retrieval"])
    return paths
