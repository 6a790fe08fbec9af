"""Frozen dense features, computed once per run and shared by the protocols.

:func:`extract_features` runs a frozen :class:`~paka_hf.modeling.backbones.PatchBackbone` over a
segmentation dataset and returns a :class:`DenseFeatures`: the last-layer patch grids
``(N, D, h, w)`` (kept in ``float16`` to halve memory) and the ground-truth masks after the same
geometric transform, ``(N, H, W)`` with ``H = h · p`` and ``W = w · p`` (``p`` the patch size).

Preprocessing (torchvision ``transforms.v2``, applied jointly to image and mask, masks always
with nearest-neighbour):

* evaluation: ``Resize(input_size)`` (the whole image, not a crop; aspect is changed when
  ``input_size`` is square, as in the published protocols);
* augmented passes (linear training views and the Hummingbird memory bank):
  ``RandomResizedCrop(input_size, scale=(0.8, 1.0)) + RandomHorizontalFlip()``; pass ``j`` of
  ``passes`` is seeded with ``seed + j`` so a run is reproducible;
* then ``ToDtype(float32, scale=True)`` and ``Normalize(mean, std)`` with the backbone's own statistics
  (its checkpoint's image processor, :class:`~paka_hf.modeling.backbones.PatchBackbone`); the published Hummingbird
  code normalized ImageNet-statistics models with std ``(0.229, 0.224, 0.255)``, a typo that
  ``--published_conventions`` reproduces (:func:`published_hummingbird_std`).

:class:`FeatureCache` memoises extraction by (dataset, split, size, augmentation, passes, normalisation),
so protocols run together (``--protocol all``) reuse the same features.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers.image_utils import IMAGENET_DEFAULT_STD

# The published Hummingbird evaluation code normalised ImageNet-statistics models with this std, a typo for
# IMAGENET_DEFAULT_STD (0.255 for 0.225, blue channel); it is kept on purpose to reproduce the published numbers.
HUMMINGBIRD_PUBLISHED_STD = (0.229, 0.224, 0.255)


def published_hummingbird_std(std: Sequence[float]) -> tuple[float, ...]:
    """The std the published Hummingbird code used for a backbone normalized with ``std``.

    The typo (0.255 for 0.225 in the blue channel) only exists for ImageNet statistics; any other
    backbone (SigLIP, CLIP) keeps its own std.

    Args:
        std: the backbone's per-channel std.

    Returns:
        :data:`HUMMINGBIRD_PUBLISHED_STD` for ImageNet's std, else ``std`` as a tuple.
    """
    std = tuple(float(s) for s in std)
    return HUMMINGBIRD_PUBLISHED_STD if all(abs(a - b) < 1e-6 for a, b in zip(std, IMAGENET_DEFAULT_STD)) else std


def normalize_uint8_views(views: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` views → float32 ``(x / 255 − mean) / std``, with the arithmetic of the protocols'
    transforms (``ToDtype(scale=True)`` then ``Normalize``), so every protocol feeds a backbone the same numbers.

    Args:
        views: uint8 images, ``(B, 3, H, W)``.
        mean: per-channel mean.
        std: per-channel standard deviation.

    Returns:
        The normalized float32 views.
    """
    return v2.functional.normalize(
        v2.functional.to_dtype(views, torch.float32, scale=True), [float(m) for m in mean], [float(s) for s in std]
    )


def backbone_normalization(backbone: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the backbone's inputs are normalized with (its checkpoint's image processor).

    Args:
        backbone: a module with ``image_mean`` and ``image_std`` (a :class:`~paka_hf.modeling.backbones.PatchBackbone`).

    Returns:
        ``(mean, std)`` as tuples.

    Raises:
        ValueError: the backbone has no ``image_mean`` / ``image_std``.
    """
    mean, std = getattr(backbone, "image_mean", None), getattr(backbone, "image_std", None)
    if mean is None or std is None:
        raise ValueError(f"{type(backbone).__name__} has no image_mean / image_std; pass mean= and std= explicitly")
    return tuple(mean), tuple(std)


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``448`` → ``(448, 448)``; ``(H, W)`` stays.

    Args:
        size: a side, or ``(height, width)``.

    Returns:
        ``(height, width)``.

    Raises:
        ValueError: a sequence that is not two sides.
    """
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"input size must be an int or (height, width), got {size}")
    return size  # type: ignore[return-value]


@dataclass
class DenseFeatures:
    """Frozen patch features with their aligned masks.

    ``features``: ``(N, D, h, w)``; ``masks``: ``(N, h·p, w·p)`` integer class ids or the ignore
    index; ``patch_size``: ``p``. ``N`` counts images × passes (pass-major order).

    Args:
        features: ``(N, D, h, w)`` patch grids.
        masks: ``(N, h·p, w·p)`` masks.
        patch_size: ``p``.
        num_classes: the dataset's number of classes.
        ignore_index: the mask value ignored in scores.

    Raises:
        ValueError: the shapes are not as above or do not match.

    Example::

        features = extract_features(PatchBackbone.from_pretrained("facebook/dinov2-small"), dataset, input_size=448)
        print(features.features.shape, features.masks.shape)
    """

    features: torch.Tensor
    masks: torch.Tensor
    patch_size: int
    num_classes: int
    ignore_index: int

    def __post_init__(self):
        if self.features.ndim != 4 or self.masks.ndim != 3:
            raise ValueError(
                f"features must be (N, D, h, w) and masks (N, H, W); got {tuple(self.features.shape)} and "
                f"{tuple(self.masks.shape)}"
            )
        n, _, h, w = self.features.shape
        if self.masks.shape != (n, h * self.patch_size, w * self.patch_size):
            raise ValueError(
                f"masks {tuple(self.masks.shape)} do not match features {tuple(self.features.shape)} with "
                f"patch size {self.patch_size}: expected ({n}, {h * self.patch_size}, {w * self.patch_size})"
            )

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid ``(h, w)``."""
        return tuple(self.features.shape[-2:])  # type: ignore[return-value]


class _TransformedDataset(Dataset):
    def __init__(self, dataset: Dataset, transform: v2.Transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[index]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(image))
        mask = tv_tensors.Mask(torch.as_tensor(mask, dtype=torch.int64)[None])
        image, mask = self.transform(image, mask)
        return image, mask[0]


def build_image_mask_transform(
    input_size: int | Sequence[int],
    *,
    augment: bool,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.8, 1.0),
) -> v2.Transform:
    """The joint image/mask transform described in the module docstring.

    Args:
        input_size: the side, or ``(height, width)``, images and masks are resized to.
        augment: a random resized crop and flip instead of a plain resize.
        mean: the normalization mean.
        std: the normalization std.
        crop_scale: the crop's area range with ``augment``.

    Returns:
        A ``torchvision.transforms.v2`` transform of ``(image, mask)``.

    Raises:
        ValueError: ``input_size`` is not a side or two sides.
    """
    size = as_size(input_size)
    geometric = (
        [v2.RandomResizedCrop(size, scale=crop_scale, antialias=True), v2.RandomHorizontalFlip()]
        if augment
        else [v2.Resize(size, antialias=True)]
    )
    return v2.Compose([*geometric, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


@torch.inference_mode()
def mask_storage_dtype(num_classes: int, ignore_index: int) -> torch.dtype:
    """The smallest integer dtype that holds every class id ``0..num_classes − 1`` and ``ignore_index``
    exactly: ``uint8``, ``int16`` or ``int32`` (masks of a whole split are kept in memory, so the
    width matters; a narrower type would wrap, e.g. 65535 → −1 in ``int16``).

    Args:
        num_classes: the number of classes.
        ignore_index: the mask value ignored in scores.

    Returns:
        The dtype.

    Raises:
        ValueError: the values do not fit in ``int32``.
    """
    low, high = min(0, int(ignore_index)), max(int(num_classes) - 1, int(ignore_index))
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    raise ValueError(f"ignore_index {ignore_index} and {num_classes} classes do not fit in int32 masks")


@torch.no_grad()  # frozen features: a backbone with trainable weights must not keep each batch's graph
def extract_features(
    backbone: torch.nn.Module,
    dataset: Any,
    *,
    input_size: int | Sequence[int] = 448,
    augment: bool = False,
    passes: int = 1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_scale: tuple[float, float] = (0.8, 1.0),
    batch_size: int = 16,
    max_images: int | None = None,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    feature_dtype: torch.dtype = torch.float16,
    seed: int = 0,
    desc: str = "features",
    progress: bool = True,
) -> DenseFeatures:
    """Run a frozen patch backbone over ``dataset`` (``passes`` times) and keep grids and masks.

    ``backbone(pixel_values)`` must return ``(B, D, h, w)`` and expose ``patch_size``; ``mean``/``std``
    default to its ``image_mean``/``image_std``.
    ``max_images`` keeps the first images only (quick CPU runs). Returns features in
    ``feature_dtype`` and masks in :func:`mask_storage_dtype`.

    Args:
        backbone: the frozen patch backbone.
        dataset: a :class:`~paka_hf.evaluation.datasets.SegmentationDataset` (``num_classes``, ``ignore_index``,
            items ``(PIL image, mask)``).
        input_size: the side, or ``(height, width)``, the images are resized to; multiples of the patch size.
        augment: random resized crops and flips (:func:`build_image_mask_transform`).
        passes: passes over the dataset (several only with ``augment``).
        mean: the normalization mean; None for the backbone's.
        std: the normalization std; None for the backbone's.
        crop_scale: the crops' area range with ``augment``.
        batch_size: images per forward pass.
        max_images: keep the first images only; None for all.
        num_workers: DataLoader workers.
        device: where the backbone runs.
        feature_dtype: the dtype features are kept in, on the CPU.
        seed: the seed of pass ``j`` is ``seed + j`` (torch's global generator is restored afterwards).
        desc: the progress bar's label.
        progress: show a progress bar.

    Returns:
        The :class:`DenseFeatures`, on the CPU.

    Raises:
        ValueError: an input size that is not a multiple of the patch size, several passes without ``augment``,
            an empty dataset, or a backbone without normalization and no ``mean``/``std``.

    Example::

        from paka_hf.modeling.backbones import PatchBackbone
        from paka_hf.evaluation import extract_features, load_segmentation_dataset
        dataset = load_segmentation_dataset("camvid", "val", data_dir="data/camvid")
        val = extract_features(PatchBackbone.from_pretrained("facebook/dinov2-small"), dataset, input_size=448)
    """
    size = as_size(input_size)
    patch = int(backbone.patch_size)
    if size[0] % patch or size[1] % patch:
        raise ValueError(f"input size {size} must be a multiple of the patch size {patch}")
    if not augment and passes != 1:
        raise ValueError("several passes only make sense with augment=True")
    if max_images is not None:
        dataset_view = Subset(dataset, range(min(int(max_images), len(dataset))))
    else:
        dataset_view = dataset
    if len(dataset_view) == 0:
        raise ValueError("the dataset is empty; nothing to extract")
    ignore = int(dataset.ignore_index)
    mask_dtype = mask_storage_dtype(dataset.num_classes, ignore)
    default_mean, default_std = backbone_normalization(backbone) if mean is None or std is None else (mean, std)
    mean = default_mean if mean is None else mean
    std = default_std if std is None else std
    transform = build_image_mask_transform(size, augment=augment, mean=mean, std=std, crop_scale=crop_scale)
    was_training = backbone.training
    backbone.eval()
    feats, masks = [], []
    total = len(dataset_view) * passes
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar, torch.random.fork_rng(devices=[]):
        for j in range(passes):
            torch.manual_seed(seed + j)  # augmentations draw from the global generator (restored afterwards)
            loader = DataLoader(
                _TransformedDataset(dataset_view, transform),
                batch_size=batch_size,
                shuffle=False,
                num_workers=num_workers,
            )
            for pixels, target in loader:
                grid = backbone(pixels.to(device))
                feats.append(grid.to("cpu", feature_dtype))
                masks.append(target.to(mask_dtype))
                bar.update(pixels.shape[0])
    backbone.train(was_training)
    return DenseFeatures(torch.cat(feats), torch.cat(masks), patch, dataset.num_classes, ignore)


class FeatureCache:
    """Memoise :func:`extract_features` within one run (same backbone, several protocols).

    ``cache.get(dataset, input_size=..., augment=..., passes=..., std=...)`` computes once per distinct
    key ``(id(dataset), split, size, augment, passes, mean, std, crop_scale, max_images, seed)``.

    Args:
        backbone: the frozen patch backbone.
        cache_dir: a folder that keeps features across runs; None keeps them in memory only, for this run.
        **defaults: :func:`extract_features` keyword arguments for every call (``device``, ``batch_size``...).
    """

    def __init__(self, backbone: torch.nn.Module, *, cache_dir: str | os.PathLike | None = None, **defaults: Any):
        self.backbone = backbone
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.defaults = defaults
        self._store: dict[tuple, DenseFeatures] = {}
        self.seconds: dict[tuple, float] = {}

    def get(self, dataset: Any, **kwargs: Any) -> DenseFeatures:
        """The features of ``dataset`` with these options, extracted on the first call.

        Args:
            dataset: the dataset.
            **kwargs: :func:`extract_features` keyword arguments, over the cache's defaults.

        Returns:
            The :class:`DenseFeatures`.

        Raises:
            ValueError: as :func:`extract_features`.
        """
        options = {**self.defaults, **kwargs}
        mean, std = backbone_normalization(self.backbone)
        options["mean"] = tuple(options.get("mean") or mean)
        options["std"] = tuple(options.get("std") or std)
        key = (
            id(dataset),
            getattr(dataset, "split", None),
            as_size(options.get("input_size", 448)),
            bool(options.get("augment", False)),
            int(options.get("passes", 1)),
            options["mean"],
            options["std"],
            tuple(options.get("crop_scale", (0.8, 1.0))),
            options.get("max_images"),
            int(options.get("seed", 0)),
        )
        if key not in self._store:
            start = time.perf_counter()
            self._store[key] = extract_features(self.backbone, dataset, **options)
            self.seconds[key] = time.perf_counter() - start
        return self._store[key]

    def __len__(self) -> int:
        return len(self._store)
