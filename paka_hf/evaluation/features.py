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

Features cached across runs
---------------------------
With ``FeatureCache(backbone, cache_dir=...)`` (``paka-evaluate``'s feature cache folder) features are also
kept on disk, one folder per model and two files per entry::

    <cache_dir>/<weights_sha256[:16]>/<dataset>-<split>-<key_sha256[:20]>.safetensors
        "features" (N, D, h, w) in the feature dtype (float16) and "masks" (N, H, W) (uint8/int16/int32),
        with the metadata {"key_sha256": ...}
    <cache_dir>/<weights_sha256[:16]>/<dataset>-<split>-<key_sha256[:20]>.json
        the sidecar, written last: "key" (every part of the key, readable), "key_sha256", the tensor file's
        "features_bytes" and "features_sha256", "shapes", "patch_size", "num_classes", "ignore_index",
        "extraction_seconds", "device", "batch_size", "created", "paka_hf_version"

The key (``key_sha256`` is the sha256 of its canonical JSON) is: the weights (:func:`module_weights_sha256`), the
backbone's class and config (:func:`backbone_description`), the dataset's
:meth:`~paka_hf.evaluation.datasets.SegmentationDataset.fingerprint`, and every setting that changes the
features (input size, augment, passes, mean, std, the number of images kept, the feature dtype; for
augmented passes also the crop scale, the seed and the DataLoader workers); see :class:`FeatureCache`.

Each file is written to a temporary ``.<name>.<random>.tmp`` beside it, flushed to disk and renamed over its
name (``os.replace``), the tensors first and the sidecar last. An entry is read only when its sidecar exists,
records exactly the key asked for, and the tensor file has the recorded size and sha256; anything else (an
interrupted write, a truncated or edited file) is ignored with one warning and extracted again, so a broken
entry never loads. Every hit and miss logs one INFO line with the entry's path.

Clearing: delete ``<cache_dir>`` (everything), ``<cache_dir>/<weights_sha256[:16]>`` (one model) or one
entry's two files, while no run is using the folder; leftover ``*.tmp`` files (a run killed mid write) are
safe to delete at any time no run is writing. Nothing is evicted automatically: an entry takes
``N · D · h · w · 2`` bytes of float16 features plus ``N · H · W`` bytes of uint8 masks (ViT-S/14 at 448² on
CamVid's 367 train images: 362 MB per pass, 288 MB of it features). Writing it (with its sha256 and an
fsync) took 2.8 s on a CPU box, checking and opening it on a hit 0.6 s (tensors are memory-mapped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers.image_utils import IMAGENET_DEFAULT_STD

from paka_hf import __version__
from paka_hf.utils.errors import ConfigError

logger = logging.getLogger(__name__)

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


#: The layout of an on-disk cache entry; a change to the key or the files bumps it (older entries then miss).
FEATURE_CACHE_FORMAT = 1
#: The file suffixes of an entry: the tensors, then the sidecar written last that makes the entry valid.
FEATURES_SUFFIX, SIDECAR_SUFFIX = ".safetensors", ".json"
# Config fields that do not change what a backbone computes: where it was loaded from, which library version
# wrote it, its declared dtype and architecture names (the weights' own dtypes are in module_weights_sha256).
_VOLATILE_CONFIG_KEYS = (
    "_name_or_path",
    "transformers_version",
    "_commit_hash",
    "dtype",
    "torch_dtype",
    "architectures",
)


def module_weights_sha256(module: torch.nn.Module) -> str:
    """sha256 (hex) of a module's weights: every parameter and buffer (non-persistent ones included).

    Tensors are taken in sorted name order; each contributes its name, dtype and shape (as a length-prefixed JSON
    header) and then its raw bytes, so a changed value, dtype, shape or name changes the digest, and the same
    weights give the same digest on any device and whatever order the module registered them in. Not the
    digest of a ``model.safetensors`` file (:func:`paka_hf.modeling.export.weights_sha256`): this one reads
    the module in memory.

    Cost: every byte is copied to the CPU and hashed, about 1 s per GB of weights (sha256 runs at ~1 GB/s on
    one core): 0.12 s measured for ViT-S/14 (88 MB in float32, 0.75 GB/s), so ~1.5 s for ViT-L (1.2 GB).

    Args:
        module: the module.

    Returns:
        The hex digest.
    """
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        if hasattr(tensor, "full_tensor"):  # a sharded (FSDP2) DTensor: hash the whole tensor
            tensor = tensor.full_tensor()
        tensor = tensor.to("cpu").contiguous()
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode()
        digest.update(len(header).to_bytes(8, "little") + header)
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def backbone_description(backbone: torch.nn.Module) -> dict[str, Any]:
    """What, besides its weights, decides a backbone's features: its class and its model's config.

    Args:
        backbone: a :class:`~paka_hf.modeling.backbones.PatchBackbone` (or any module; its ``config``, or its
            ``model.config``, is used when present).

    Returns:
        A JSON-ready dict: ``class``, ``model_class``, ``config`` (without the fields that only say where the
        weights came from), ``attn_implementation``, ``patch_size``, ``rope_augment``.
    """
    model = getattr(backbone, "model", backbone)
    config = getattr(model, "config", None)
    config_dict = None
    if config is not None and hasattr(config, "to_json_string"):
        config_dict = json.loads(config.to_json_string(use_diff=False))
        for key in _VOLATILE_CONFIG_KEYS:
            config_dict.pop(key, None)
    return {
        "class": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": config_dict,
        "attn_implementation": getattr(config, "_attn_implementation", None),  # sdpa and eager round differently
        "patch_size": int(backbone.patch_size),
        "rope_augment": bool(getattr(backbone, "rope_augment", False)),
    }


class FeatureCache:
    """Memoise :func:`extract_features` within one run (same backbone, several protocols) and, with
    ``cache_dir``, across runs on disk.

    In memory, ``cache.get(dataset, input_size=..., augment=..., passes=..., std=...)`` computes once per distinct
    key ``(id(dataset), split, size, augment, passes, mean, std, crop_scale, max_images, seed)``.

    On disk (``cache_dir`` set; layout, atomic writes and clearing in the module docstring), an entry is
    keyed by:

    * ``weights_sha256``: :func:`module_weights_sha256` of the backbone, computed once per cache (the backbone is
      frozen for the cache's life, as the in-memory memo already assumes);
    * ``backbone``: :func:`backbone_description` (class, config, attention implementation, patch size);
    * ``dataset``: its ``fingerprint()`` (:meth:`~paka_hf.evaluation.datasets.SegmentationDataset.fingerprint`);
    * ``extraction``: input size, augment, passes, mean, std, the number of images kept (``max_images``
      clipped to the dataset), feature dtype; with ``augment`` also crop scale and seed, the DataLoader's
      ``num_workers`` (workers draw their own crops) and, with workers, ``batch_size`` (batches are dealt to
      workers). ``device``, the ``batch_size`` of a plain pass, ``desc`` and ``progress`` are not in the key
      (the sidecar records device and batch size): features written on a GPU are read on the CPU.

    A dataset without ``fingerprint()`` is kept in memory only (one warning). A failed write (full disk)
    warns and the run goes on with the features in memory.

    Args:
        backbone: the frozen patch backbone.
        cache_dir: a folder that keeps features across runs; None keeps them in memory only, for this run.
        **defaults: :func:`extract_features` keyword arguments for every call (``device``, ``batch_size``...).

    Raises:
        ConfigError: ``cache_dir`` exists and is not a folder, or cannot be created.
    """

    def __init__(self, backbone: torch.nn.Module, *, cache_dir: str | os.PathLike | None = None, **defaults: Any):
        self.backbone = backbone
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(
                    f"cannot use {self.cache_dir} as the feature cache folder ({err}); pass a writable folder, "
                    "or no cache folder to keep features in memory only"
                ) from err
        self.defaults = defaults
        self._store: dict[tuple, DenseFeatures] = {}
        self.seconds: dict[tuple, float] = {}
        #: The on-disk entry each in-memory key was loaded from (hits) or written to (misses).
        self.paths: dict[tuple, Path] = {}
        #: The in-memory keys that were read from disk rather than extracted.
        self.loaded: set[tuple] = set()
        self._weights_sha256: str | None = None
        self._warned_no_fingerprint: set[str] = set()

    def get(self, dataset: Any, **kwargs: Any) -> DenseFeatures:
        """The features of ``dataset`` with these options: from memory, else from disk, else extracted.

        Args:
            dataset: the dataset.
            **kwargs: :func:`extract_features` keyword arguments, over the cache's defaults.

        Returns:
            The :class:`DenseFeatures`.

        Raises:
            ValueError: as :func:`extract_features`.
        """
        options = self._options(kwargs)
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
        if key in self._store:
            return self._store[key]
        start = time.perf_counter()
        entry = self._disk_entry(dataset, options) if self.cache_dir is not None else None
        if entry is not None:
            path, parts = entry
            self.paths[key] = path
            loaded = self._read(path, parts, dataset)
            if loaded is not None:
                logger.info("feature cache hit: %s", _entry_files(path)[0])
                self._store[key] = loaded
                self.loaded.add(key)
                self.seconds[key] = time.perf_counter() - start
                return loaded
            logger.info("feature cache miss: %s (extracting)", _entry_files(path)[0])
        features = extract_features(self.backbone, dataset, **options)
        self.seconds[key] = time.perf_counter() - start
        if entry is not None:
            self._write(entry[0], entry[1], features, options, self.seconds[key])
        self._store[key] = features
        return features

    def __len__(self) -> int:
        return len(self._store)

    # on disk ------------------------------------------------------------------------------------------------
    def key_parts(self, dataset: Any, **kwargs: Any) -> dict[str, Any]:
        """The on-disk key of ``get(dataset, **kwargs)``, readable (what the sidecar records as ``key``).

        Args:
            dataset: a dataset with ``fingerprint()``.
            **kwargs: as :meth:`get`.

        Returns:
            The JSON-ready key.
        """
        return self._key_parts(dataset, self._options(kwargs))

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The cache's defaults under ``kwargs``, with the backbone's normalization where none is given."""
        options = {**self.defaults, **kwargs}
        mean, std = backbone_normalization(self.backbone)
        options["mean"] = tuple(options.get("mean") or mean)
        options["std"] = tuple(options.get("std") or std)
        return options

    def _key_parts(self, dataset: Any, options: dict[str, Any]) -> dict[str, Any]:
        if self._weights_sha256 is None:
            self._weights_sha256 = module_weights_sha256(self.backbone)
        augment = bool(options.get("augment", False))
        workers = int(options.get("num_workers", 0))
        max_images = options.get("max_images")
        images = len(dataset) if max_images is None else min(int(max_images), len(dataset))
        extraction = {
            "input_size": list(as_size(options.get("input_size", 448))),
            "augment": augment,
            "passes": int(options.get("passes", 1)),
            "mean": [float(m) for m in options["mean"]],
            "std": [float(s) for s in options["std"]],
            "images": images,
            "feature_dtype": str(options.get("feature_dtype", torch.float16)).removeprefix("torch."),
        }
        if augment:  # a plain resize draws nothing: these only change augmented passes
            extraction["crop_scale"] = [float(c) for c in options.get("crop_scale", (0.8, 1.0))]
            extraction["seed"] = int(options.get("seed", 0))
            extraction["num_workers"] = workers
            if workers:
                extraction["batch_size"] = int(options.get("batch_size", 16))
        fingerprint = dataset.fingerprint(progress=bool(options.get("progress", True)))
        described = dataset.describe() if hasattr(dataset, "describe") else {}
        return {
            "format": FEATURE_CACHE_FORMAT,
            "weights_sha256": self._weights_sha256,
            "backbone": backbone_description(self.backbone),
            "dataset": {
                "fingerprint": fingerprint,
                "name": getattr(dataset, "name", type(dataset).__name__),
                "display_name": described.get("dataset_name"),
                "split": getattr(dataset, "split", None),
                "items": len(dataset),
            },
            "extraction": extraction,
        }

    def _disk_entry(self, dataset: Any, options: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
        """``(entry path without suffix, key parts)``, or None for a dataset that has no fingerprint."""
        if not callable(getattr(dataset, "fingerprint", None)):
            self._warn_no_fingerprint(type(dataset).__name__, "it has no fingerprint() method")
            return None
        try:
            parts = self._key_parts(dataset, options)
        except NotImplementedError as err:
            self._warn_no_fingerprint(type(dataset).__name__, str(err))
            return None
        digest = hashlib.sha256(_canonical_json(parts)).hexdigest()
        label = _safe_name(f"{parts['dataset']['name']}-{parts['dataset']['split']}")
        folder = self.cache_dir / parts["weights_sha256"][:16]
        return folder / f"{label}-{digest[:20]}", parts

    def _warn_no_fingerprint(self, kind: str, why: str) -> None:
        if kind not in self._warned_no_fingerprint:
            self._warned_no_fingerprint.add(kind)
            logger.warning("feature cache: %s features are kept in memory only: %s", kind, why)

    def _read(self, path: Path, parts: dict[str, Any], dataset: Any) -> DenseFeatures | None:
        """The entry at ``path`` if it is complete and records exactly ``parts``; None (one warning) otherwise."""
        tensors_path, sidecar_path = _entry_files(path)
        if not sidecar_path.exists():
            if tensors_path.exists():
                logger.warning(
                    "feature cache: ignoring %s: it has no sidecar %s (an interrupted write); extracting again",
                    tensors_path,
                    sidecar_path.name,
                )
            return None
        try:
            sidecar = json.loads(sidecar_path.read_text())
            digest = hashlib.sha256(_canonical_json(parts)).hexdigest()
            if sidecar.get("key") != json.loads(_canonical_json(parts)) or sidecar.get("key_sha256") != digest:
                raise ValueError("its sidecar records another key")
            size = tensors_path.stat().st_size
            if size != sidecar["features_bytes"]:
                raise ValueError(
                    f"{tensors_path.name} has {size} bytes, the sidecar records {sidecar['features_bytes']}"
                )
            if _file_sha256(tensors_path) != sidecar["features_sha256"]:
                raise ValueError(f"the sha256 of {tensors_path.name} differs from the sidecar's")
            with safe_open(str(tensors_path), framework="pt") as handle:
                if (handle.metadata() or {}).get("key_sha256") != digest:
                    raise ValueError(f"{tensors_path.name} was written for another key")
            tensors = load_file(str(tensors_path))
            features = DenseFeatures(
                tensors["features"],
                tensors["masks"],
                int(sidecar["patch_size"]),
                int(sidecar["num_classes"]),
                int(sidecar["ignore_index"]),
            )
            expected_dtype = getattr(torch, parts["extraction"]["feature_dtype"])
            if features.features.dtype != expected_dtype or len(features) != parts["extraction"]["images"] * int(
                parts["extraction"]["passes"]
            ):
                raise ValueError("its tensors do not have the recorded dtype or count")
            if (features.num_classes, features.ignore_index) != (dataset.num_classes, int(dataset.ignore_index)):
                raise ValueError("it records another number of classes or ignore index")
            return features
        except Exception as err:  # noqa: BLE001 - any unreadable entry is re-extracted, never trusted
            logger.warning("feature cache: ignoring the corrupt entry %s (%s); extracting again", sidecar_path, err)
            return None

    def _write(
        self, path: Path, parts: dict[str, Any], features: DenseFeatures, options: dict[str, Any], seconds: float
    ) -> None:
        """Write the entry atomically (tensors, then sidecar); a failure only warns (the features are in memory)."""
        tensors_path, sidecar_path = _entry_files(path)
        digest = hashlib.sha256(_canonical_json(parts)).hexdigest()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sidecar_path.unlink(missing_ok=True)  # an old entry stops being valid before its tensors change
            tensors = {"features": features.features.contiguous(), "masks": features.masks.contiguous()}
            tensors_sha = _atomic_write(
                tensors_path, lambda tmp: save_file(tensors, str(tmp), metadata={"key_sha256": digest})
            )
            sidecar = {
                "format": FEATURE_CACHE_FORMAT,
                "key": json.loads(_canonical_json(parts)),
                "key_sha256": digest,
                "features_file": tensors_path.name,
                "features_bytes": tensors_path.stat().st_size,
                "features_sha256": tensors_sha,
                "shapes": {"features": list(features.features.shape), "masks": list(features.masks.shape)},
                "mask_dtype": str(features.masks.dtype).removeprefix("torch."),
                "patch_size": features.patch_size,
                "num_classes": features.num_classes,
                "ignore_index": features.ignore_index,
                "extraction_seconds": round(seconds, 3),
                "device": str(options.get("device", "cpu")),
                "batch_size": int(options.get("batch_size", 16)),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "paka_hf_version": __version__,
            }
            text = json.dumps(sidecar, indent=1, sort_keys=True) + "\n"
            _atomic_write(sidecar_path, lambda tmp: tmp.write_text(text))
        except OSError as err:
            logger.warning("feature cache: could not write %s (%s); the features stay in memory only", path, err)


def _canonical_json(value: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces (tuples become lists)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _safe_name(text: str) -> str:
    """Letters, digits, ``-`` and ``_`` only: no dot, so an entry's name has no suffix of its own."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def _entry_files(stem: Path) -> tuple[Path, Path]:
    """An entry's ``(tensor file, sidecar)``: the suffixes are appended to ``stem``'s name."""
    return stem.parent / (stem.name + FEATURES_SUFFIX), stem.parent / (stem.name + SIDECAR_SUFFIX)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Any) -> str:
    """Call ``write(temporary path)`` in ``path``'s folder, fsync, rename over ``path``; the file's sha256."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        digest = _file_sha256(tmp)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest
