r"""Known-warp correspondence: a label-free dense correspondence benchmark on any folder of images.

Keypoint benchmarks (SPair-71k, NAVI, ScanNet pairs) need annotated pairs. Here the pairs are made: each image
is rendered twice, once as it is (the *source view*) and once through a random warp whose coordinate map is
known exactly (the *warped view*), so the true match of every source patch is known without a label.

**Views.** Coordinates are continuous pixel coordinates ``(x, y)`` of a view of ``H × W`` pixels, origin at
the top-left corner, ``x`` to the right, ``y`` down; pixel ``(r, c)`` covers ``[c, c+1) × [r, r+1)`` and
its centre is ``(c + ½, r + ½)``. The source view ``S`` is the whole image resized to ``H × W`` (antialiased,
the aspect changes as in the other protocols), ``H`` and ``W`` multiples of the patch size ``p``.

**Warp** (drawn per image, :func:`sample_warp`). With ``m = (W/2, H/2)`` the view's centre:

* crop and scale: a side fraction ``s ~ U[crop_fraction]`` and a crop centre
  ``c ~ U[sW/2, W − sW/2] × U[sH/2, H − sH/2]``; the ``sW × sH`` crop fills the warped view (zoom ``1/s``);
* flip: ``f = −1`` with probability ``flip_p``, else ``1``;
* rotation: ``θ ~ U[−max_rotation, max_rotation]`` degrees, about the crop's centre;
* mild homography: each corner of the warped view moves by ``(δ_x W, δ_y H)``, ``δ ~ U[−perspective,
  perspective]``; ``K`` is the homography that maps the four corners to the moved ones.

The affine map from the (unperspective) warped view back to the source is

.. math::

    G = T(c)\, R(θ)\, \mathrm{diag}(s, s, 1)\, \mathrm{diag}(f, 1, 1)\, T(−m),

(``T`` a translation, ``R`` a rotation, 3 × 3 homogeneous), and the warp is the homography
``M = K G^{-1}``: a source point ``p`` appears at ``q ≃ M p`` in the warped view (``≃``: up to the
homogeneous scale, ``q = (M p)_{xy} / (M p)_z``). The warped view is rendered by inverse mapping,
``Ŝ(q) = S(M^{-1} q)``, bilinear (``grid_sample`` with ``align_corners=False``, so a pixel centre maps to a
pixel centre), black outside the source, rounded to 8 bits. With ``s = 1``, ``θ = 0``, no perspective and
``f = 1`` the warp is the identity and ``Ŝ = S`` exactly; with ``f = −1`` alone it is an exact left-right
flip. Then photometric jitter (brightness, contrast, saturation, hue in a random order:
:class:`~paka_hf.views.augment.PhotometricAugment`, torchvision's ``uint8`` operations) is applied to the
warped view only. Every draw of image ``i`` comes from a generator seeded with ``(seed, i)``
(``numpy.random.default_rng([seed, i])``), always in the same order, so the warp of an image does not depend
on the batch size, on the order of the images, on the other images or on the probability settings of other
draws.

**Matching.** Both views are normalised with the backbone's statistics and encoded by the frozen backbone
into last-layer patch grids ``(D, h, w)``, ``h = H/p``, ``w = W/p``. Source patch ``k`` has centre
``p_k = ((j + ½) p, (i + ½) p)``; its true location is ``q_k ≃ M p_k``; it is *evaluated* when ``q_k`` lies
in the warped view at least ``b = border_patches · p`` pixels from its edge. Its prediction is the
centre ``\hat q_k`` of the warped view's patch whose feature is the nearest by cosine,
``\hat t_k = \arg\max_t \langle F_k, \hat F_t\rangle / (\|F_k\| \|\hat F_t\|)`` (ties: the first), and its error
``e_k = \|\hat q_k − q_k\|_2`` pixels of the warped view.

**PCK.** For a threshold of ``τ`` patches (``τ p`` pixels),

.. math::

    \mathrm{PCK}_n(τ) = 100 \cdot \frac{|\{k \in V_n : e_k \le τ p\}|}{|V_n|},

``V_n`` the evaluated patches of image ``n``; :attr:`CorrespondenceResult.pck` is the mean of
``PCK_n`` over the images with ``V_n ≠ ∅`` and :attr:`~CorrespondenceResult.pck_pooled` the same ratio over
all evaluated patches together. Predictions are patch centres, so even a perfect matcher has errors up to
``p/√2`` (the distance from ``q_k`` to the nearest patch centre): a threshold of at least ``√2/2 ≈ 0.71``
patch is needed for 100 %. The *chance* level is the expected PCK of a uniformly random prediction,
``|\{t : \|c_t − q_k\| \le τ p\}| / (h w)`` averaged like the PCK (``c_t`` the patch centres). A match is
*mutual* when ``k`` is in turn the source patch nearest to ``\hat t_k``.

**Relation to SPair-71k.** SPair-71k's PCK@α\ :sub:`bbox` counts a keypoint as correct when its error is at
most ``α · max(h_bbox, w_bbox)`` in the target image (α = 0.1 usually, also 0.05 and 0.01). Taking the whole
warped view as the "object", a threshold of ``τ`` patches is α = ``τ p / max(H, W)``
(:attr:`~CorrespondenceResult.alpha`): at 448 × 448 with ``p = 14``, τ = 1, 2, 4 patches is α ≈ 0.031,
0.063, 0.125. The numbers are not comparable with SPair's: here source and target are the same instance under
a known geometric and photometric change (no intra-class variation, no viewpoint change beyond a
homography, no occlusion), every patch is a query (not a few keypoints), and predictions are patch centres
(no upsampling or soft-argmax). It measures how stable and how discriminative the patch features are
under a warp, which is what post-training on one's own images may improve or damage.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from paka_hf.evaluation.features import as_size, backbone_normalization, normalize_uint8_views
from paka_hf.utils.errors import (
    ConfigError,
    MissingPathError,
    check_fraction,
    check_positive_int,
)
from paka_hf.utils.imaging import is_image_file, to_rgb
from paka_hf.views.augment import PhotometricAugment

#: Uniform draws per image, in order: crop fraction, crop centre x, crop centre y, flip, rotation, then the
#: four corners' (δx, δy) of the perspective jitter. Always all drawn, so one setting never shifts another draw.
_GEOMETRIC_DRAWS = 13
#: The warped view's corners, as fractions of (W, H), in the order the perspective jitter moves them.
_CORNERS = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
#: The largest rotation and perspective jitter accepted: beyond them a "mild" warp folds the view.
MAX_ROTATION_DEGREES = 45.0
MAX_PERSPECTIVE = 0.25


@dataclass
class CorrespondenceConfig:
    """Settings of the known-warp correspondence benchmark (the module docstring gives the maths).

    Args:
        input_size: the side, or ``(height, width)``, of both views; multiples of the backbone's patch size.
        thresholds: the PCK thresholds ``τ``, in patches (``τ p`` pixels); at least ``√2/2`` for a perfect
            matcher to reach 100 %.
        crop_fraction: ``(low, high)`` range of the crop's side as a fraction of the source view's side, in
            ``(0, 1]``; the crop fills the warped view, so the zoom is ``1 / fraction``.
        flip_p: the probability of a left-right flip.
        max_rotation: rotations are drawn from ``[−max_rotation, max_rotation]`` degrees (at most 45).
        perspective: each corner of the warped view moves by up to this fraction of its side (at most 0.25).
        brightness: brightness jitter strength of the warped view, factors in ``[1 − b, 1 + b]``; 0 for none.
        contrast: contrast jitter strength, likewise.
        saturation: saturation jitter strength, likewise.
        hue: hue shifts drawn from ``[−hue, hue]``, in ``[0, 0.5]``.
        border_patches: a source patch is evaluated when its true location is at least this many patches
            from the warped view's edge.
        seed: the seed of every draw; image ``i`` draws from ``(seed, i)``.
        batch_size: images per forward pass (each gives two views).
        max_images: evaluate the first images only; None for all.

    Raises:
        ConfigError: a value outside the ranges above.

    Example::

        CorrespondenceConfig(input_size=224, thresholds=(1, 2, 4), max_images=50)
    """

    input_size: int | tuple[int, int] = 448
    thresholds: Sequence[float] = (1.0, 2.0, 4.0)
    crop_fraction: tuple[float, float] = (0.6, 1.0)
    flip_p: float = 0.5
    max_rotation: float = 10.0
    perspective: float = 0.05
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    border_patches: float = 0.5
    seed: int = 0
    batch_size: int = 16
    max_images: int | None = None

    def __post_init__(self):
        try:
            self.input_size = as_size(self.input_size)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"input_size must be a side or (height, width): {error}") from None
        for side in self.input_size:
            check_positive_int("input_size", side)
        self.thresholds = tuple(float(t) for t in self.thresholds)
        if not self.thresholds or any(not t > 0 or not math.isfinite(t) for t in self.thresholds):
            raise ConfigError(f"thresholds must be one or more positive numbers of patches, got {self.thresholds}")
        low, high = (float(v) for v in self.crop_fraction)
        if not 0 < low <= high <= 1:
            raise ConfigError(f"crop_fraction must be (low, high) with 0 < low <= high <= 1, got {self.crop_fraction}")
        self.crop_fraction = (low, high)
        check_fraction("flip_p", self.flip_p, "the probability of a flip")
        if not 0 <= self.max_rotation <= MAX_ROTATION_DEGREES:
            raise ConfigError(f"max_rotation must be in [0, {MAX_ROTATION_DEGREES}] degrees, got {self.max_rotation}")
        if not 0 <= self.perspective <= MAX_PERSPECTIVE:
            raise ConfigError(
                f"perspective must be in [0, {MAX_PERSPECTIVE}] (a corner's shift), got {self.perspective}"
            )
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} jitter strength must be >= 0 (0 for none), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"hue jitter must be in [0, 0.5] (0 for none), got {self.hue}")
        if self.border_patches < 0:
            raise ConfigError(f"border_patches must be >= 0, got {self.border_patches}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        check_positive_int("batch_size", self.batch_size)
        if self.max_images is not None:
            check_positive_int("max_images", self.max_images)

    def photometric(self) -> PhotometricAugment:
        """The warped view's jitter: always applied, in a random order; no grayscale, no blur.

        Returns:
            The :class:`~paka_hf.views.augment.PhotometricAugment`.
        """
        return PhotometricAugment(
            brightness=self.brightness,
            contrast=self.contrast,
            saturation=self.saturation,
            hue=self.hue,
            jitter_p=1.0,
            grayscale_p=0.0,
            blur_p=0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for a results JSON).

        Returns:
            ``{field: value}``, sequences as lists.
        """
        out = asdict(self)
        for key in ("input_size", "thresholds", "crop_fraction"):
            out[key] = list(out[key])
        return out


@dataclass
class KnownWarp:
    """One image's warp: the homography and the draws it was built from.

    Args:
        matrix: ``(3, 3)`` float64 ``M``, source-view pixels → warped-view pixels (homogeneous).
        crop_fraction: ``s``.
        crop_centre: ``c = (x, y)`` in source-view pixels.
        flip: whether the view is flipped left-right.
        rotation: ``θ`` in degrees.
        corner_shifts: ``(4, 2)`` the corners' ``(δx, δy)`` as fractions of ``(W, H)``.
        photometric: the ``(P,)`` jitter parameters (:meth:`PhotometricAugment.sample`).
        view_size: ``(H, W)`` of both views.
    """

    matrix: np.ndarray
    crop_fraction: float
    crop_centre: tuple[float, float]
    flip: bool
    rotation: float
    corner_shifts: np.ndarray
    photometric: torch.Tensor
    view_size: tuple[int, int]


def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def homography_from_points(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The homography ``K`` (``K_{33} = 1``) with ``target_i ≃ K source_i`` for four point pairs (the DLT system).

    Args:
        source: ``(4, 2)`` points, no three on a line.
        target: ``(4, 2)`` their images.

    Returns:
        ``(3, 3)`` float64 ``K``; the identity, exactly, when ``target == source``.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if np.array_equal(source, target):
        return np.eye(3)  # exact, so that an identity warp renders the view bit for bit
    rows, rhs = [], []
    for (x, y), (u, v) in zip(source, target):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        rhs.extend([u, v])
    h = np.linalg.solve(np.array(rows), np.array(rhs))
    return np.append(h, 1.0).reshape(3, 3)


def sample_warp(config: CorrespondenceConfig, index: int, view_size: tuple[int, int] | None = None) -> KnownWarp:
    """The warp of image ``index``, from the generator seeded with ``(config.seed, index)`` only.

    Args:
        config: the benchmark's settings (warp ranges, jitter, seed).
        index: the image's position in the sorted folder (or dataset).
        view_size: ``(H, W)`` of the views; None for ``config.input_size``.

    Returns:
        The :class:`KnownWarp`.
    """
    height, width = view_size or config.input_size
    rng = np.random.default_rng([int(config.seed), int(index)])
    u = rng.random(_GEOMETRIC_DRAWS)
    photometric_seed = int(rng.integers(2**63 - 1))
    low, high = config.crop_fraction
    s = low + (high - low) * u[0]
    cx = s * width / 2 + (width - s * width) * u[1]
    cy = s * height / 2 + (height - s * height) * u[2]
    flip = bool(u[3] < config.flip_p)
    theta = config.max_rotation * (2 * u[4] - 1)
    shifts = config.perspective * (2 * u[5:].reshape(4, 2) - 1)
    rad = math.radians(theta)
    rotation = np.array([[math.cos(rad), -math.sin(rad), 0.0], [math.sin(rad), math.cos(rad), 0.0], [0.0, 0.0, 1.0]])
    unwarp = _translation(cx, cy) @ rotation @ np.diag([s * (-1.0 if flip else 1.0), s, 1.0])
    unwarp = unwarp @ _translation(-width / 2, -height / 2)  # G: warped view (before K) → source view
    corners = np.array(_CORNERS) * (width, height)
    perspective = homography_from_points(corners, corners + shifts * (width, height))
    matrix = perspective @ np.linalg.inv(unwarp)
    params = config.photometric().sample(torch.Generator().manual_seed(photometric_seed))
    return KnownWarp(matrix, float(s), (float(cx), float(cy)), flip, float(theta), shifts, params, (height, width))


def warp_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points ``p`` → ``(M p)_{xy} / (M p)_z``.

    Args:
        matrix: ``(3, 3)`` homography.
        points: ``(N, 2)`` ``(x, y)`` points.

    Returns:
        ``(N, 2)`` float64 mapped points; ``inf`` where the point maps to infinity (it never does for the mild
        warps of :func:`sample_warp` on points of the view).
    """
    points = np.asarray(points, np.float64)
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ np.asarray(matrix).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return homogeneous[:, :2] / homogeneous[:, 2:]


def pixel_centres(height: int, width: int, step: int = 1) -> np.ndarray:
    """The centres of a ``height × width`` grid of ``step``-pixel cells, row-major: ``((j + ½) step, (i + ½) step)``.

    Args:
        height: rows of cells.
        width: columns of cells.
        step: the cell's side in pixels (1 for pixels, ``p`` for patches).

    Returns:
        ``(height · width, 2)`` float64 ``(x, y)`` centres.
    """
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1) * step


def render_warp(view: torch.Tensor, warp: KnownWarp, photometric: PhotometricAugment | None = None) -> torch.Tensor:
    """The warped view ``Ŝ(q) = S(M^{-1} q)`` of a ``uint8`` source view, then its photometric jitter.

    Args:
        view: ``(3, H, W)`` uint8 source view.
        warp: its :class:`KnownWarp` (``view_size`` must be ``(H, W)``).
        photometric: the jitter :meth:`CorrespondenceConfig.photometric` gives; None for none.

    Returns:
        ``(3, H, W)`` uint8 warped view (black where ``M^{-1} q`` falls outside the source view).

    Raises:
        ValueError: the view is not ``(3, H, W)`` uint8 of the warp's size.
    """
    height, width = warp.view_size
    if view.dtype != torch.uint8 or tuple(view.shape) != (3, height, width):
        raise ValueError(f"view must be uint8 (3, {height}, {width}), got {view.dtype} {tuple(view.shape)}")
    source = warp_points(np.linalg.inv(warp.matrix), pixel_centres(height, width))
    # align_corners=False: normalised −1 and 1 are the outer pixel edges, so x ↦ 2x/W − 1 exactly
    grid = torch.from_numpy(source / (width / 2, height / 2) - 1.0).reshape(1, height, width, 2)
    sampled = F.grid_sample(view[None].double(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = sampled[0].round_().clamp_(0, 255).to(torch.uint8)
    return warped if photometric is None else photometric.apply(warped, warp.photometric)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (recursively; hidden files and folders left out), sorted by relative path.

    Args:
        folder: the folder.

    Returns:
        The paths (any suffix of :data:`~paka_hf.utils.imaging.IMAGE_SUFFIXES`, in any case).

    Raises:
        MissingPathError: ``folder`` does not exist.
        ConfigError: ``folder`` is a file, or holds no image.
    """
    root = Path(folder)
    if not root.exists():
        raise MissingPathError(f"image folder {str(folder)!r} does not exist (resolved from {os.getcwd()})")
    if not root.is_dir():
        raise ConfigError(f"{str(folder)!r} is a file; pass the folder of images it is in")
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if not any(part.startswith(".") for part in relative.parts) and path.is_file() and is_image_file(path):
            files.append(relative.as_posix())
    if not files:
        raise ConfigError(f"no image files in {str(folder)!r} (looked for .jpg, .png, ... in it and its sub-folders)")
    return [root / name for name in sorted(files)]


class _ImageSource:
    """A folder (sorted image files) or a dataset (items a PIL image or a tuple starting with one), as
    ``(name, load(i) -> RGB PIL image)``."""

    def __init__(self, images: Any):
        if isinstance(images, (str, os.PathLike)):
            self.paths: list[Path] | None = list_images(images)
            self.names = [str(p.relative_to(images)) for p in self.paths]
            self.dataset = None
        elif hasattr(images, "__len__") and hasattr(images, "__getitem__"):
            if len(images) == 0:
                raise ConfigError("the dataset of images is empty; nothing to evaluate")
            self.paths, self.dataset = None, images
            self.names = [str(i) for i in range(len(images))]
        else:
            raise ConfigError(f"images must be a folder or a dataset of images, got {type(images).__name__}")

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> Image.Image:
        if self.paths is not None:
            try:
                with Image.open(self.paths[index]) as opened:
                    return to_rgb(opened).copy()
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise ConfigError(
                    f"{self.paths[index]}: cannot read it as an image ({error}); remove or convert it"
                ) from None
        item = self.dataset[index]
        image = item[0] if isinstance(item, tuple) else item
        if not isinstance(image, Image.Image):
            raise ConfigError(f"dataset item {index} is a {type(image).__name__}, not a PIL image (or a tuple of one)")
        return to_rgb(image)


def source_view(image: Image.Image, view_size: tuple[int, int]) -> torch.Tensor:
    """The whole image resized (antialiased) to ``view_size``: the ``(3, H, W)`` uint8 source view.

    Args:
        image: an RGB image.
        view_size: ``(H, W)``.

    Returns:
        The source view.
    """
    return TF.resize(TF.pil_to_tensor(image), list(view_size), antialias=True)


@dataclass
class ImageMatches:
    """The matches of one image (:func:`match_patches`), every array over the ``h·w`` source patches.

    Args:
        valid: ``(h·w,)`` bool, the evaluated patches (true location inside the warped view, off its border).
        truth: ``(h·w, 2)`` true locations ``q_k`` in warped-view pixels.
        predicted: ``(h·w,)`` index of the nearest warped-view patch.
        error: ``(h·w,)`` ``‖q̂_k − q_k‖`` in pixels.
        mutual: ``(h·w,)`` bool, mutual nearest neighbours.
        chance: ``(h·w, T)`` fraction of the warped view's patch centres within each threshold of ``q_k``.
    """

    valid: np.ndarray
    truth: np.ndarray
    predicted: np.ndarray
    error: np.ndarray
    mutual: np.ndarray
    chance: np.ndarray


def match_patches(
    source: torch.Tensor,
    warped: torch.Tensor,
    matrix: np.ndarray,
    patch_size: int,
    thresholds_pixels: Sequence[float],
    border: float,
) -> ImageMatches:
    """Cosine nearest neighbours of the source patches among the warped view's, scored against the warp.

    Args:
        source: ``(D, h, w)`` source-view patch grid.
        warped: ``(D, h, w)`` warped-view patch grid.
        matrix: the warp ``M`` (source → warped pixels).
        patch_size: ``p``.
        thresholds_pixels: the thresholds in pixels, for the chance level.
        border: the margin ``b`` in pixels.

    Returns:
        The :class:`ImageMatches`.
    """
    _, h, w = source.shape
    a = F.normalize(source.float().flatten(1).T, dim=1)  # (h·w, D)
    b = F.normalize(warped.float().flatten(1).T, dim=1)
    similarity = a @ b.T  # (source patch, warped patch)
    predicted = similarity.argmax(dim=1)
    back = similarity.argmax(dim=0)
    mutual = (back[predicted] == torch.arange(h * w, device=predicted.device)).cpu().numpy()
    predicted = predicted.cpu().numpy()
    centres = pixel_centres(h, w, patch_size)
    truth = warp_points(matrix, centres)
    height, width = h * patch_size, w * patch_size
    with np.errstate(invalid="ignore"):
        valid = (
            (truth[:, 0] >= border)
            & (truth[:, 0] <= width - border)
            & (truth[:, 1] >= border)
            & (truth[:, 1] <= height - border)
        )
    with np.errstate(invalid="ignore"):  # a point mapped to infinity is never valid
        error = np.linalg.norm(centres[predicted] - truth, axis=1)
        chance = np.stack([centres_within(truth, h, w, patch_size, t) for t in thresholds_pixels], axis=1) / (h * w)
    return ImageMatches(valid, truth, predicted, error, mutual, chance)


def centres_within(points: np.ndarray, h: int, w: int, patch_size: int, radius: float) -> np.ndarray:
    """How many patch centres of an ``h × w`` grid lie within ``radius`` pixels of each point.

    Row by row (``O(N h)``, not ``O(N h w)``): in row ``i``, with ``Δy = (i + ½) p − y``, the centres
    ``(j + ½) p`` within ``√(r² − Δy²)`` of ``x`` are the integers ``j`` of
    ``[(x − √·)/p − ½, (x + √·)/p − ½] ∩ [0, w − 1]``.

    Args:
        points: ``(N, 2)`` ``(x, y)`` in pixels (finite).
        h: rows of patches.
        w: columns of patches.
        patch_size: ``p``.
        radius: ``r`` in pixels.

    Returns:
        ``(N,)`` int64 counts.
    """
    x, y = points[:, :1], points[:, 1:]
    rest = radius**2 - ((np.arange(h) + 0.5) * patch_size - y) ** 2  # (N, h)
    half = np.sqrt(np.maximum(rest, 0.0))
    low = np.clip(np.ceil((x - half) / patch_size - 0.5), 0, None)
    high = np.clip(np.floor((x + half) / patch_size - 0.5), None, w - 1)
    return np.where(rest >= 0, np.maximum(high - low + 1, 0), 0).sum(axis=1).astype(np.int64)


@dataclass
class CorrespondenceResult:
    """Known-warp correspondence scores (percent), one entry per threshold, in the order of ``thresholds``.

    Args:
        thresholds: ``τ`` in patches.
        thresholds_pixels: ``τ p`` in pixels of the views.
        alpha: ``τ p / max(H, W)``, the SPair-style α of each threshold (the whole view as the box).
        pck: PCK, mean over the images with at least one evaluated patch.
        pck_pooled: PCK over all evaluated patches together.
        chance_pck: the PCK of a uniformly random prediction, averaged as ``pck``.
        mutual_pck: PCK over the mutual matches only, pooled (NaN when there is none).
        num_images: images with at least one evaluated patch.
        num_images_without_matches: images none of whose patches is evaluated (left out of the means).
        num_matches: evaluated source patches, all images.
        num_mutual_matches: of them, the mutual nearest neighbours.
        per_image_pck: ``(N, T)`` each image's PCK (NaN for an image without matches).
        per_image_matches: ``(N,)`` each image's evaluated patches.
        images: the images' names (relative paths, or dataset indices).
        settings: the config (:meth:`CorrespondenceConfig.to_dict`), with ``patch_size``, ``grid_size`` and
            ``num_images_total``.
    """

    thresholds: list[float]
    thresholds_pixels: list[float]
    alpha: list[float]
    pck: list[float]
    pck_pooled: list[float]
    chance_pck: list[float]
    mutual_pck: list[float]
    num_images: int
    num_images_without_matches: int
    num_matches: int
    num_mutual_matches: int
    per_image_pck: np.ndarray = field(repr=False)
    per_image_matches: np.ndarray = field(repr=False)
    images: list[str] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (no per-image arrays; floats rounded to 4 decimals, NaN as None).

        Returns:
            ``{field: value}`` for every field but the per-image ones and ``images``.
        """

        def clean(values: list[float]) -> list[float | None]:
            return [round(float(v), 4) if math.isfinite(v) else None for v in values]

        out = {key: getattr(self, key) for key in ("thresholds", "thresholds_pixels")}
        for key in ("alpha", "pck", "pck_pooled", "chance_pck", "mutual_pck"):
            out[key] = clean(getattr(self, key))
        for key in ("num_images", "num_images_without_matches", "num_matches", "num_mutual_matches"):
            out[key] = getattr(self, key)
        out["settings"] = dict(self.settings)
        return out

    def format_table(self) -> str:
        """A plain-text table: one row per threshold (patches, pixels, α, PCK, pooled, mutual, chance).

        Returns:
            The table, with the counts on a last line.
        """
        lines = [f"{'τ (patches)':>11} {'pixels':>7} {'α':>6} {'PCK %':>7} {'pooled':>7} {'mutual':>7} {'chance':>7}"]
        for i, tau in enumerate(self.thresholds):
            lines.append(
                f"{tau:>11g} {self.thresholds_pixels[i]:>7g} {self.alpha[i]:>6.3f} {self.pck[i]:>7.2f} "
                f"{self.pck_pooled[i]:>7.2f} {self.mutual_pck[i]:>7.2f} {self.chance_pck[i]:>7.2f}"
            )
        lines.append(
            f"{self.num_matches} matches over {self.num_images} images ({self.num_mutual_matches} mutual, "
            f"{self.num_images_without_matches} images without matches)"
        )
        return "\n".join(lines)


@torch.inference_mode()
def warp_correspondence(
    backbone: torch.nn.Module,
    images: str | os.PathLike | Any,
    config: CorrespondenceConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CorrespondenceResult:
    """Known-warp PCK of a frozen patch backbone over a folder (or dataset) of images (module docstring).

    Args:
        backbone: a :class:`~paka_hf.modeling.backbones.PatchBackbone` (or a module with ``patch_size``,
            ``image_mean``, ``image_std`` whose forward maps ``(B, 3, H, W)`` to ``(B, D, H/p, W/p)``); it is
            put in eval mode for the run and its mode restored afterwards.
        images: a folder (its image files, recursively, sorted by relative path) or a dataset whose items are
            PIL images or tuples starting with one (a :class:`~paka_hf.evaluation.datasets.SegmentationDataset`).
        config: the settings; None for the defaults.
        device: where the backbone runs (it must already be there); matching runs there too.
        progress: show a progress bar over the images (with an ETA).

    Returns:
        The :class:`CorrespondenceResult`.

    Raises:
        ConfigError: an input size that is not a multiple of the patch size, a folder or dataset without images,
            an unreadable image, or a backbone whose output is not the patch grid.
        MissingPathError: the folder does not exist.

    Example::

        from paka_hf.modeling.backbones import PatchBackbone
        from paka_hf.evaluation.correspondence import CorrespondenceConfig, warp_correspondence
        backbone = PatchBackbone.from_pretrained("facebook/dinov2-small")
        result = warp_correspondence(backbone, "my_images/", CorrespondenceConfig(input_size=448, max_images=100))
        print(result.format_table())
    """
    config = config or CorrespondenceConfig()
    patch = int(backbone.patch_size)
    height, width = config.input_size
    if height % patch or width % patch:
        fitted = tuple(max(patch, round(side / patch) * patch) for side in (height, width))
        raise ConfigError(
            f"input_size {(height, width)} is not a multiple of the model's patch size {patch}; use for example "
            f"input_size={fitted}"
        )
    grid = (height // patch, width // patch)
    mean, std = backbone_normalization(backbone)
    source = _ImageSource(images)
    count = len(source) if config.max_images is None else min(len(source), config.max_images)
    thresholds_pixels = [t * patch for t in config.thresholds]
    photometric = config.photometric()
    border = config.border_patches * patch

    num_t = len(config.thresholds)
    per_image_pck = np.full((count, num_t), np.nan)
    per_image_chance = np.full((count, num_t), np.nan)
    per_image_matches = np.zeros(count, np.int64)
    hits = np.zeros(num_t, np.int64)
    mutual_hits = np.zeros(num_t, np.int64)
    num_mutual = 0

    was_training = backbone.training
    backbone.eval()
    try:
        with tqdm(total=count, desc="correspondence", unit="img", disable=not progress) as bar:
            for start in range(0, count, config.batch_size):
                indices = range(start, min(start + config.batch_size, count))
                warps = [sample_warp(config, i, (height, width)) for i in indices]
                sources = [source_view(source.load(i), (height, width)) for i in indices]
                warped = [render_warp(view, warp, photometric) for view, warp in zip(sources, warps)]
                pixels = normalize_uint8_views(torch.stack(sources + warped), mean, std).to(device)
                features = backbone(pixels)
                if features.ndim != 4 or tuple(features.shape[-2:]) != grid or features.shape[0] != len(pixels):
                    raise ConfigError(
                        f"the backbone returned {tuple(features.shape)} for {tuple(pixels.shape)} inputs; it must "
                        f"return the patch grid (B, D, {grid[0]}, {grid[1]}): use a PatchBackbone"
                    )
                for offset, (index, warp) in enumerate(zip(indices, warps)):
                    matches = match_patches(
                        features[offset],
                        features[len(indices) + offset],
                        warp.matrix,
                        patch,
                        thresholds_pixels,
                        border,
                    )
                    valid = matches.valid
                    n = int(valid.sum())
                    per_image_matches[index] = n
                    if n == 0:
                        continue
                    correct = matches.error[valid, None] <= np.asarray(thresholds_pixels)[None, :]  # (n, T)
                    per_image_pck[index] = 100.0 * correct.mean(axis=0)
                    per_image_chance[index] = 100.0 * matches.chance[valid].mean(axis=0)
                    hits += correct.sum(axis=0)
                    mutual = matches.mutual[valid]
                    num_mutual += int(mutual.sum())
                    mutual_hits += correct[mutual].sum(axis=0)
                bar.update(len(indices))
    finally:
        backbone.train(was_training)

    matched = per_image_matches > 0
    total = int(per_image_matches.sum())

    def mean_over_images(values: np.ndarray) -> list[float]:
        return [float(v) for v in values[matched].mean(axis=0)] if matched.any() else [math.nan] * num_t

    def ratio(numerator: np.ndarray, denominator: int) -> list[float]:
        return [100.0 * float(v) / denominator if denominator else math.nan for v in numerator]

    settings = {**config.to_dict(), "patch_size": patch, "grid_size": list(grid), "num_images_total": len(source)}
    return CorrespondenceResult(
        thresholds=list(config.thresholds),
        thresholds_pixels=thresholds_pixels,
        alpha=[t / max(height, width) for t in thresholds_pixels],
        pck=mean_over_images(per_image_pck),
        pck_pooled=ratio(hits, total),
        chance_pck=mean_over_images(per_image_chance),
        mutual_pck=ratio(mutual_hits, num_mutual),
        num_images=int(matched.sum()),
        num_images_without_matches=int((~matched).sum()),
        num_matches=total,
        num_mutual_matches=num_mutual,
        per_image_pck=per_image_pck,
        per_image_matches=per_image_matches,
        images=source.names[:count],
        settings=settings,
    )
