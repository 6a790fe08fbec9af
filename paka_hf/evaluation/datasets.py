"""Semantic-segmentation datasets for the dense evaluation protocols (docs/EVALUATION.md).

Every dataset here yields ``(image, mask)`` pairs: ``image`` an RGB ``PIL.Image`` and ``mask`` an
``int64`` array of shape ``(H, W)`` whose values are class ids in ``[0, num_classes)`` or
``ignore_index``. Raw label values are mapped through a lookup table built from each dataset's
convention, and the data are *checked* as they are read, so a wrong layout never gives a silently
wrong number:

* an image without a mask (or a mask without an image) raises :class:`DatasetError` when the
  dataset is built, listing the first offenders (``on_missing="skip"`` skips and counts them);
* a mask whose size differs from its image raises (``on_size_mismatch="resize"`` resizes it with
  nearest-neighbour and counts it);
* a raw label value outside the dataset's convention raises (``on_unknown_label="ignore"`` maps it
  to ``ignore_index`` and counts the pixels per value).

What was skipped, resized or ignored is in ``dataset.stats`` (a :class:`collections.Counter`).

``dataset.fingerprint()`` is a sha256 that changes whenever the pairs the dataset yields could change (its
label convention, its files' names, sizes and bytes, or a Hub dataset's ``datasets`` fingerprint); the
on-disk feature cache (:class:`~paka_hf.evaluation.features.FeatureCache`) keys features on it.

Supported sources (see ``docs/EVALUATION.md`` for the layouts and Hub ids):

=================  ==========  =======  ============================================================
name               classes     ignore   on-disk layout under ``root``
=================  ==========  =======  ============================================================
``voc``            21          255      ``VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}``
``ade20k``         150         255      ``ADEChallengeData2016/{images,annotations}/{training,validation}``
                                        (raw 0 "other" → ignore, raw v → v − 1)
``coco-things``    12          255      ``images/{split}2017`` + ``annotations/panoptic_semseg_{split}2017``
                                        + ``annotations/panoptic_{split}2017.json`` (thing super-categories)
``coco-stuff``     15          255      ``images/{split}2017`` + ``annotations/stuff_{split}2017_pixelmaps``
                                        + ``annotations/stuff_{split}2017.json`` (stuff super-categories)
``folder``         given       given    ``{split}/images/*`` + ``{split}/masks/*.png``
``camvid``         11          11       the ``folder`` layout with CamVid's class names
=================  ==========  =======  ============================================================
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from paka_hf.utils.errors import PaKAUserError
from paka_hf.utils.imaging import IMAGE_SUFFIXES, is_image_file

_UNKNOWN = np.iinfo(np.int64).min  # lookup-table value for raw labels outside the convention (never an ignore index)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

ADE20K_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)

CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)


class DatasetError(PaKAUserError, ValueError):
    """A dataset is missing, incomplete or inconsistent; the message says what to fix."""


# --------------------------------------------------------------------------------------------
# label maps
# --------------------------------------------------------------------------------------------


def identity_label_map(num_classes: int, ignore_index: int) -> dict[int, int]:
    """Raw value ``c`` → class ``c`` for ``c < num_classes``, and ``ignore_index`` → ignore.

    A negative ``ignore_index`` (−1) never occurs in a mask file (PNG values are unsigned), so it has
    no raw entry: it is only what unknown values become with ``on_unknown_label='ignore'``.

    Args:
        num_classes: the number of classes.
        ignore_index: the mask value ignored in scores.

    Returns:
        ``{raw value: class id}``.
    """
    mapping = {c: c for c in range(num_classes)}
    if ignore_index >= 0:
        mapping[ignore_index] = ignore_index
    return mapping


def _lookup_table(label_map: dict[int, int]) -> np.ndarray:
    size = max(label_map) + 1
    table = np.full(size, _UNKNOWN, dtype=np.int64)
    for raw, mapped in label_map.items():
        if raw < 0:
            raise ValueError(f"raw label values must be >= 0, got {raw} in the label map")
        table[raw] = mapped
    return table


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


class SegmentationDataset(Dataset):
    """Base class: subclasses fill ``self._items`` and implement :meth:`_load_raw`.

    ``label_map`` maps every *valid* raw mask value to a class id in ``[0, num_classes)`` or to
    ``ignore_index``; anything else is an unknown label (see the module docstring for the
    ``on_*`` policies). ``__getitem__`` returns ``(PIL RGB image, int64 mask (H, W))``.

    Args:
        class_names: one name per class.
        ignore_index: the class id of ignored pixels, outside ``[0, num_classes)``.
        label_map: raw mask value → class id or ``ignore_index``; None for the identity on ``0..num_classes − 1``.
        on_size_mismatch: ``"raise"`` or ``"resize"`` (nearest-neighbour) for a mask whose size differs from its image.
        on_unknown_label: ``"raise"`` or ``"ignore"`` (count and ignore) for mask values outside ``label_map``.
        dataset_type: what the results record as the dataset's type; None for :attr:`name`.
        dataset_config: the Hub dataset's config, if any.
        split: the split's name.

    Raises:
        ValueError: an unknown ``on_*`` policy, or a ``label_map`` value that is neither a class nor ignore.
        DatasetError: no class names, or an ``ignore_index`` that is a class id.
    """

    name: str = "segmentation"

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_index: int,
        label_map: dict[int, int] | None = None,
        *,
        on_size_mismatch: str = "raise",
        on_unknown_label: str = "raise",
        dataset_type: str | None = None,
        dataset_config: str | None = None,
        split: str = "val",
    ):
        if on_size_mismatch not in ("raise", "resize"):
            raise ValueError(f"on_size_mismatch must be 'raise' or 'resize', got {on_size_mismatch!r}")
        if on_unknown_label not in ("raise", "ignore"):
            raise ValueError(f"on_unknown_label must be 'raise' or 'ignore', got {on_unknown_label!r}")
        self.class_names = tuple(str(c) for c in class_names)
        if not self.class_names:
            raise DatasetError("a segmentation dataset needs at least one class name")
        self.num_classes = len(self.class_names)
        self.ignore_index = int(ignore_index)
        if 0 <= self.ignore_index < self.num_classes:
            raise DatasetError(
                f"ignore_index {self.ignore_index} collides with a class id (classes are 0..{self.num_classes - 1}); "
                "choose an ignore index outside that range, e.g. 255"
            )
        mapping = label_map if label_map is not None else identity_label_map(self.num_classes, self.ignore_index)
        bad = {r: m for r, m in mapping.items() if not (0 <= m < self.num_classes or m == self.ignore_index)}
        if bad:
            raise ValueError(f"label_map sends raw values to ids that are neither classes nor ignore: {bad}")
        self._table = _lookup_table(mapping)
        self.on_size_mismatch = on_size_mismatch
        self.on_unknown_label = on_unknown_label
        self.dataset_type = dataset_type or self.name
        self.dataset_config = dataset_config
        self.split = split
        self.build_stats: Counter = Counter()  # counted when the dataset is built (skipped files...)
        self._item_stats: dict[int, Counter] = {}  # per item, so reading an item twice counts it once
        self._items: list[Any] = []
        self._fingerprint: str | None = None  # computed once per dataset object

    @property
    def stats(self) -> Counter:
        """What was skipped, resized or ignored so far (each item counted once however often it is read)."""
        total = Counter(self.build_stats)
        for item in self._item_stats.values():
            total.update(item)
        return total

    # subclasses --------------------------------------------------------------------------------
    def _load_raw(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        """Return (image, raw mask array, a name for messages)."""
        raise NotImplementedError

    # public ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image, raw, where = self._load_raw(index)
        image = image.convert("RGB")
        issues: Counter = Counter()
        if raw.ndim == 3:  # an RGB(A) mask: labels must be single-channel ids
            raise DatasetError(
                f"mask {where} has {raw.shape[2]} channels; masks must be single-channel class-id images "
                "(mode L, P or I), not colour-coded"
            )
        if raw.shape != (image.height, image.width):
            if self.on_size_mismatch == "raise":
                raise DatasetError(
                    f"mask {where} is {raw.shape[1]}x{raw.shape[0]} but its image is {image.width}x{image.height}; "
                    "fix the data, or pass on_size_mismatch='resize' (--on_size_mismatch resize) to resize masks "
                    "with nearest-neighbour"
                )
            issues["masks_resized"] += 1
            raw = np.asarray(Image.fromarray(raw.astype(np.int32)).resize(image.size, Image.NEAREST))
        mask = self.map_labels(raw, where, issues)
        if issues:
            self._item_stats[index] = issues
        return image, mask

    def map_labels(self, raw: np.ndarray, where: str = "mask", issues: Counter | None = None) -> np.ndarray:
        """Map a raw mask through the label table; unknown values raise or become ``ignore_index``.

        Args:
            raw: the raw mask values, any integer array.
            where: the mask's name, for the message.
            issues: the counter unknown values are counted in; None for :attr:`build_stats`.

        Returns:
            The int64 class-id mask, same shape.

        Raises:
            DatasetError: unknown values with ``on_unknown_label="raise"``.
        """
        raw = np.asarray(raw).astype(np.int64, copy=False)
        inside = (raw >= 0) & (raw < len(self._table))
        mapped = np.full(raw.shape, _UNKNOWN, dtype=np.int64)
        mapped[inside] = self._table[raw[inside]]
        unknown = mapped == _UNKNOWN
        if unknown.any():
            values, counts = np.unique(raw[unknown], return_counts=True)
            if self.on_unknown_label == "raise":
                raise DatasetError(
                    f"{where} contains label values {values.tolist()} that are neither classes "
                    f"(0..{self.num_classes - 1} after mapping) nor the ignore index {self.ignore_index}; check "
                    "--num_classes/--class_names/--ignore_index, or pass on_unknown_label='ignore' "
                    "(--on_unknown_label ignore) to ignore these pixels and count them"
                )
            issues = self.build_stats if issues is None else issues
            for value, count in zip(values.tolist(), counts.tolist()):
                issues[f"unknown_label_{value}_pixels"] += count
            issues["masks_with_unknown_labels"] += 1
            mapped[unknown] = self.ignore_index
        return mapped

    def describe(self) -> dict[str, Any]:
        """The fields the results JSON needs about this dataset.

        Returns:
            ``dataset_name``, ``dataset_type``, ``dataset_config`` and ``split``.
        """
        return {
            "dataset_name": self.display_name,
            "dataset_type": self.dataset_type,
            "dataset_config": self.dataset_config,
            "split": self.split,
        }

    def fingerprint(self, progress: bool = True) -> str:
        """sha256 (hex) of everything the ``(image, mask)`` pairs depend on; computed once per dataset object.

        It covers the dataset's class, name and split, its label convention (class names, ignore index, the
        raw → class table, the ``on_*`` policies) and its content, in item order (:meth:`_hash_content`): for
        files, each image's and mask's path relative to the dataset's common folder, byte size and sha256 (so
        a moved dataset keeps its fingerprint and a changed, renamed, added or removed file changes it);
        for Hub data, the ``datasets`` fingerprint. Reading every file costs about 1 s per GB of data
        (sha256 at ~1 GB/s on one core, plus the reads): 0.12 s measured for CamVid's 468 train + val images
        and their masks (936 files, 30 MB).

        Args:
            progress: show a progress bar while files are hashed.

        Returns:
            The hex digest.

        Raises:
            NotImplementedError: a subclass that does not say what its content is.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            convention = {
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "name": self.name,
                "split": self.split,
                "class_names": list(self.class_names),
                "ignore_index": self.ignore_index,
                "label_table": self._table.tolist(),
                "on_size_mismatch": self.on_size_mismatch,
                "on_unknown_label": self.on_unknown_label,
                "items": len(self),
            }
            digest.update(json.dumps(convention, sort_keys=True).encode())
            self._hash_content(digest, progress)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _hash_content(self, digest: Any, progress: bool) -> None:
        """Feed ``digest`` with what the items are read from, in item order (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} has no fingerprint of its content")

    @property
    def display_name(self) -> str:
        """The dataset's name as results and messages show it (``"CamVid"``, ``"Pascal VOC 2012"``...)."""
        return getattr(self, "_display_name", self.name)


# --------------------------------------------------------------------------------------------
# on-disk datasets
# --------------------------------------------------------------------------------------------


def _pair_files(
    image_paths: Sequence[Path], mask_dir: Path, on_missing: str, stats: Counter, mask_suffix: str = ".png"
) -> list[tuple[Path, Path]]:
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    by_stem: dict[str, list[Path]] = {}
    for image_path in image_paths:
        by_stem.setdefault(image_path.stem, []).append(image_path)
    shared = [sorted(paths) for paths in by_stem.values() if len(paths) > 1]
    if shared:
        named = "; ".join(" and ".join(str(p) for p in paths) for paths in shared[:5])
        raise DatasetError(
            f"{len(shared)} mask name(s) would be shared by several images (same file stem): {named}. Each image needs "
            f"its own mask <stem>{mask_suffix} in {mask_dir}: rename or remove one image of each pair"
        )
    pairs, missing = [], []
    for image_path in image_paths:
        mask_path = mask_dir / (image_path.stem + mask_suffix)
        if mask_path.is_file():
            pairs.append((image_path, mask_path))
        else:
            missing.append(image_path.name)
    if missing:
        if on_missing == "raise":
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DatasetError(
                f"{len(missing)} image(s) have no mask in {mask_dir} (expected <image stem>{mask_suffix}): {shown}. "
                "Add the masks, or pass on_missing='skip' (--on_missing skip) to leave those images out"
            )
        stats["images_without_mask_skipped"] += len(missing)
    return pairs


class _FileDataset(SegmentationDataset):
    def _hash_content(self, digest: Any, progress: bool) -> None:
        """Each item's image and mask: path relative to the common folder, byte size, sha256 of the bytes."""
        # absolute, not resolved: a symlinked file keeps its own name, not its target's
        paths = [Path(os.path.abspath(path)) for item in self._items for path in item]
        root = Path(os.path.commonpath(paths)) if paths else Path()
        for path in tqdm(paths, desc=f"fingerprint {self.name} {self.split}", unit="file", disable=not progress):
            content = hashlib.sha256()
            size = 0
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    content.update(chunk)
                    size += len(chunk)
            relative = path.relative_to(root).as_posix()
            digest.update(json.dumps([relative, size, content.hexdigest()]).encode())

    def _load_raw(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        image_path, mask_path = self._items[index]
        with Image.open(image_path) as image:
            image.load()
        with Image.open(mask_path) as mask:
            raw = np.array(mask)  # palette ("P") masks give their indices, as VOC's class ids
        return image, raw, str(mask_path)


class FolderSegmentation(_FileDataset):
    """Any ``root/{split}/images/*`` + ``root/{split}/masks/<stem>.png`` folder.

    Masks hold raw class ids ``0..len(class_names) − 1`` and ``ignore_index`` (or any ids,
    through ``label_map``). Extra masks with no image are counted in ``stats``.

    Args:
        root: the dataset folder.
        split: the split's sub-folder.
        class_names: one name per class.
        ignore_index: the mask value ignored in scores.
        label_map: raw mask value → class id; None for the identity.
        on_missing: ``"raise"`` (:class:`DatasetError`) or ``"skip"`` (count and leave out) for an image with no mask.
        display_name: the name results show; None for the folder's name.
        **kwargs: passed to :class:`SegmentationDataset` (``on_size_mismatch``, ``on_unknown_label``...).

    Raises:
        DatasetError: the images or masks folder is missing, it has no images, an image has no mask (with
            ``on_missing="raise"``) or two images share a file stem.

    Example::

        >>> ds = FolderSegmentation("data/camvid", "val", CAMVID_CLASSES, ignore_index=11)
        >>> image, mask = ds[0]          # PIL image, (H, W) int64 in {0..10, 11}
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        class_names: Sequence[str],
        ignore_index: int = 255,
        label_map: dict[int, int] | None = None,
        *,
        on_missing: str = "raise",
        display_name: str | None = None,
        **kwargs: Any,
    ):
        root = Path(root)
        super().__init__(
            class_names,
            ignore_index,
            label_map,
            dataset_type=kwargs.pop("dataset_type", root.name),
            split=split,
            **kwargs,
        )
        image_dir, mask_dir = root / split / "images", root / split / "masks"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DatasetError(
                    f"{folder} does not exist; a folder dataset needs {root}/{split}/images/* and "
                    f"{root}/{split}/masks/*.png (one mask per image, same file stem)"
                )
        images = sorted(p for p in image_dir.iterdir() if is_image_file(p))
        if not images:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
        self._items = _pair_files(images, mask_dir, on_missing, self.build_stats)
        stems = {p.stem for p in images}
        orphans = [m for m in mask_dir.glob("*.png") if m.stem not in stems]
        if orphans:
            self.build_stats["masks_without_image"] += len(orphans)
        self._display_name = display_name or root.name


class CamVid(FolderSegmentation):
    """CamVid (SegNet split) in the folder layout: 11 classes, raw 11 = void (ignored).

    Args:
        root: the dataset folder (``root/{split}/images``, ``root/{split}/masks``).
        split: the split's sub-folder.
        **kwargs: passed to :class:`FolderSegmentation`.

    Raises:
        DatasetError: as :class:`FolderSegmentation`.
    """

    name = "camvid"

    def __init__(self, root: str | os.PathLike, split: str = "val", **kwargs: Any):
        kwargs.setdefault("display_name", "CamVid")
        kwargs.setdefault("dataset_type", "camvid")
        super().__init__(root, split, CAMVID_CLASSES, ignore_index=11, **kwargs)


class VOCSegmentation(_FileDataset):
    """Pascal VOC 2012 segmentation: 21 classes (background included), 255 = boundary (ignored).

    ``root`` is ``VOCdevkit/VOC2012`` or a folder containing ``VOCdevkit/VOC2012`` or ``VOC2012``.
    Image ids come from ``ImageSets/Segmentation/{split}.txt``; masks from ``SegmentationClass``
    (palette PNGs whose indices are the class ids) or, with ``mask_dir="SegmentationClassAug"``,
    from the augmented set (then ``split="trainaug"`` reads ``ImageSets/Segmentation/trainaug.txt``).

    Args:
        root: the VOC folder (see above).
        split: the split list's name.
        mask_dir: the mask folder under ``VOC2012``.
        on_missing: ``"raise"`` (:class:`DatasetError`) or ``"skip"`` (count and leave out) for an image with no mask.
        **kwargs: passed to :class:`SegmentationDataset` (``on_size_mismatch``, ``on_unknown_label``...).

    Raises:
        DatasetError: the folder, the split list or a listed image is missing, or an image has no mask (with
            ``on_missing="raise"``).
    """

    name = "voc"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val",
        *,
        mask_dir: str = "SegmentationClass",
        on_missing: str = "raise",
        **kwargs: Any,
    ):
        super().__init__(VOC_CLASSES, 255, dataset_type=kwargs.pop("dataset_type", "voc2012"), split=split, **kwargs)
        base = _find_dir(Path(root), ("", "VOC2012", "VOCdevkit/VOC2012"), "JPEGImages")
        list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetError(f"{list_file} not found; VOC splits are listed in ImageSets/Segmentation/<split>.txt")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        images = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
        absent = [p.name for p in images if not p.is_file()]
        if absent:
            raise DatasetError(
                f"{len(absent)} image(s) listed in {list_file} are missing from JPEGImages: {absent[:5]}"
            )
        self._items = _pair_files(images, base / mask_dir, on_missing, self.build_stats)
        self._display_name = "Pascal VOC 2012"


class ADE20K(_FileDataset):
    """ADE20K (SceneParsing, ``ADEChallengeData2016``): 150 classes.

    Raw annotation value 0 means "other / unlabelled" and is ignored; raw ``v`` in 1..150 becomes
    class ``v − 1``. (Published dense-SSL numbers average over 151 classes with class 0 scored 0;
    see :mod:`paka_hf.evaluation.runner` and ``--published_conventions``.)

    Args:
        root: ``ADEChallengeData2016`` or its parent folder.
        split: ``"train"`` or ``"val"``.
        on_missing: ``"raise"`` (:class:`DatasetError`) or ``"skip"`` (count and leave out) for an image with no mask.
        **kwargs: passed to :class:`SegmentationDataset` (``on_size_mismatch``, ``on_unknown_label``...).

    Raises:
        DatasetError: an unknown split, a missing folder, or an image with no mask (with ``on_missing="raise"``).
    """

    name = "ade20k"
    published_extra_zero_classes = 1

    def __init__(self, root: str | os.PathLike, split: str = "val", *, on_missing: str = "raise", **kwargs: Any):
        label_map = {0: 255, **{v: v - 1 for v in range(1, 151)}}
        super().__init__(
            ADE20K_CLASSES, 255, label_map, dataset_type=kwargs.pop("dataset_type", "ade20k"), split=split, **kwargs
        )
        base = _find_dir(Path(root), ("", "ADEChallengeData2016"), "annotations")
        sub = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}.get(split)
        if sub is None:
            raise DatasetError(f"ADE20K split must be 'train' or 'val', got {split!r}")
        image_dir = base / "images" / sub
        if not image_dir.is_dir():
            raise DatasetError(f"{image_dir} not found; expected ADEChallengeData2016/images/{sub}")
        images = sorted(image_dir.glob("*.jpg"))
        self._items = _pair_files(images, base / "annotations" / sub, on_missing, self.build_stats)
        self._display_name = "ADE20K"


class COCOSegmentation(_FileDataset):
    """COCO-Things (12 thing super-categories) or COCO-Stuff (15 stuff super-categories).

    The protocol of Leopart / NeCo / Hummingbird: fine COCO categories are merged into their
    super-categories, read from the category list of a COCO JSON file (sorted alphabetically).

    * ``kind="things"``: masks are semantic PNGs from the panoptic annotations (pixel = COCO
      category id, 0 = unlabelled), e.g. made by panopticapi's ``converters/panoptic2semantic_segmentation.py``;
      default mask folder ``annotations/panoptic_semseg_{split}2017``, categories
      ``annotations/panoptic_{split}2017.json``. Thing categories → their super-category; stuff
      and unlabelled → ignore.
    * ``kind="stuff"``: masks are COCO-Stuff pixel maps (``stuff_{split}2017_pixelmaps``; pixel 0 =
      any thing, 92–182 stuff, 183 "other"); categories ``annotations/stuff_{split}2017.json``.
      Stuff categories → their super-category except "other"; things, "other" and 255 → ignore.

    Args:
        root: the COCO folder (``images/{split}2017``, ``annotations/...``).
        split: ``"train"`` or ``"val"``.
        kind: ``"things"`` or ``"stuff"``.
        mask_dir: the mask folder under ``root``; None for the default above.
        categories_json: the COCO JSON with the category list, under ``root``; None for the default above.
        on_missing: ``"raise"`` (:class:`DatasetError`) or ``"skip"`` (count and leave out) for an image with no mask.
        **kwargs: passed to :class:`SegmentationDataset` (``on_size_mismatch``, ``on_unknown_label``...).

    Raises:
        ValueError: an unknown ``kind``.
        DatasetError: the category file or the image folder is missing, or an image has no mask (with
            ``on_missing="raise"``).
    """

    name = "coco"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val",
        kind: str = "things",
        *,
        mask_dir: str | None = None,
        categories_json: str | None = None,
        on_missing: str = "raise",
        **kwargs: Any,
    ):
        if kind not in ("things", "stuff"):
            raise ValueError(f"kind must be 'things' or 'stuff', got {kind!r}")
        root = Path(root)
        if kind == "things":
            mask_dir = mask_dir or f"annotations/panoptic_semseg_{split}2017"
            categories_json = categories_json or f"annotations/panoptic_{split}2017.json"
        else:
            mask_dir = mask_dir or f"annotations/stuff_{split}2017_pixelmaps"
            categories_json = categories_json or f"annotations/stuff_{split}2017.json"
        cat_file = root / categories_json
        if not cat_file.is_file():
            raise DatasetError(f"{cat_file} not found; COCO-{kind} needs the category list of a COCO JSON file")
        categories = json.loads(cat_file.read_text())["categories"]
        class_names, label_map = coco_supercategory_map(categories, kind)
        super().__init__(
            class_names, 255, label_map, dataset_type=kwargs.pop("dataset_type", f"coco-{kind}"), split=split, **kwargs
        )
        image_dir = root / "images" / f"{split}2017"
        if not image_dir.is_dir():
            raise DatasetError(f"{image_dir} not found; expected images in images/{split}2017")
        images = sorted(image_dir.glob("*.jpg"))
        self._items = _pair_files(images, root / mask_dir, on_missing, self.build_stats)
        self._display_name = "COCO-Things" if kind == "things" else "COCO-Stuff"
        self.name = f"coco-{kind}"


def coco_supercategory_map(categories: list[dict[str, Any]], kind: str) -> tuple[tuple[str, ...], dict[int, int]]:
    """Class names and raw-id → class-id map merging COCO categories into super-categories.

    ``categories``: the ``"categories"`` list of a COCO JSON (``id``, ``supercategory`` and, for
    panoptic files, ``isthing``). Things: the super-categories of categories with ``isthing == 1``
    (or id ≤ 91 when the field is absent). Stuff: the super-categories of ids 92–182 except
    "other". Everything else maps to 255 (ignored).

    Args:
        categories: the COCO JSON's ``"categories"``.
        kind: ``"things"`` or ``"stuff"``.

    Returns:
        ``(class_names, label_map)``: the sorted super-category names and ``{raw id: class id or 255}``.
    """

    def is_thing(cat: dict[str, Any]) -> bool:
        return bool(cat["isthing"]) if "isthing" in cat else int(cat["id"]) <= 91

    selected = [c for c in categories if is_thing(c) == (kind == "things") and c["supercategory"] != "other"]
    names = tuple(sorted({c["supercategory"] for c in selected}))
    index = {n: i for i, n in enumerate(names)}
    label_map = {0: 255, 255: 255}
    for cat in categories:
        label_map[int(cat["id"])] = 255
    for cat in selected:
        label_map[int(cat["id"])] = index[cat["supercategory"]]
    if kind == "stuff":
        label_map.setdefault(183, 255)  # "other"
        label_map.update({i: 255 for i in range(1, 92) if i not in label_map})  # things, if a map uses their ids
    return names, label_map


def _find_dir(root: Path, candidates: Sequence[str], marker: str) -> Path:
    for cand in candidates:
        base = root / cand if cand else root
        if (base / marker).exists():
            return base
    tried = ", ".join(str(root / c / marker) if c else str(root / marker) for c in candidates)
    raise DatasetError(f"could not find the dataset under {root}; looked for {tried}")


# --------------------------------------------------------------------------------------------
# Hub datasets through `datasets`
# --------------------------------------------------------------------------------------------


@dataclass
class HubSpec:
    """How to read one benchmark from a Hub dataset (``datasets.load_dataset``).

    Args:
        repo_id: the Hub dataset id.
        image_column: the column of the images.
        mask_column: the column of the masks.
        config_name: the dataset's config, if any.
        split_names: this package's split names (``train``, ``val``) → the dataset's.
    """

    repo_id: str
    image_column: str = "image"
    mask_column: str = "annotation"
    config_name: str | None = None
    split_names: dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "validation"})


# Documented defaults; all of them can be overridden (--hub_dataset_id, --image_column, --mask_column,
# --hub_config). They are the ids and columns documented in docs/EVALUATION.md.
HUB_SPECS: dict[str, HubSpec] = {
    "ade20k": HubSpec("zhoubolei/scene_parse_150", "image", "annotation", "scene_parsing"),
}


class HubSegmentation(SegmentationDataset):
    """A segmentation dataset on the Hub with an image column and a mask column.

    Images and masks are decoded here (``datasets.Image(decode=False)``), so one corrupt file raises
    a :class:`DatasetError` naming its row instead of ending a stream (docs/STACK.md). The label
    convention (class names, ignore index, raw → class map) is the benchmark's, as for the on-disk
    layout; e.g. ADE20K's ``annotation`` column holds raw 0..150 like the PNG files.

    Args:
        spec: where and how to read the dataset.
        split: ``"train"``, ``"val"`` or a split of the dataset.
        class_names: one name per class.
        ignore_index: the mask value ignored in scores.
        label_map: raw mask value → class id; None for the identity.
        display_name: the name results show; None for the repository id.
        load_fn: replaces ``datasets.load_dataset`` (tests).
        **kwargs: passed to :class:`SegmentationDataset`.

    Raises:
        DatasetError: the dataset cannot be loaded or lacks a column; reading a row that cannot be decoded.
    """

    name = "hub"

    def __init__(
        self,
        spec: HubSpec,
        split: str,
        class_names: Sequence[str],
        ignore_index: int,
        label_map: dict[int, int] | None = None,
        *,
        display_name: str | None = None,
        load_fn: Callable[..., Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            class_names,
            ignore_index,
            label_map,
            dataset_type=spec.repo_id,
            dataset_config=spec.config_name,
            split=split,
            **kwargs,
        )
        import datasets as hf_datasets

        load = load_fn or hf_datasets.load_dataset
        hub_split = spec.split_names.get(split, split)
        try:
            data = load(spec.repo_id, spec.config_name, split=hub_split)
        except Exception as err:  # noqa: BLE001 - re-raised with the fix
            raise DatasetError(
                f"could not load {spec.repo_id!r} (config {spec.config_name!r}, split {hub_split!r}) from the Hub: "
                f"{err}. Check the id and your connection, or download the data and use --data_dir"
            ) from err
        for column in (spec.image_column, spec.mask_column):
            if column not in data.column_names:
                raise DatasetError(
                    f"{spec.repo_id} has no column {column!r} (columns: {data.column_names}); "
                    "pass --image_column/--mask_column"
                )
        data = data.cast_column(spec.image_column, hf_datasets.Image(decode=False))
        data = data.cast_column(spec.mask_column, hf_datasets.Image(decode=False))
        self._data, self._spec = data, spec
        self._items = list(range(len(data)))
        self._display_name = display_name or spec.repo_id

    def _hash_content(self, digest: Any, progress: bool) -> None:
        """The Hub dataset's id, config, columns and the ``datasets`` fingerprint of its (cast) table.

        ``datasets`` derives that fingerprint from the table's state: for data read from its cache files, their
        names and modification times (a re-download changes it); for a table built in memory
        (``Dataset.from_dict``), its content. Rows that hold file paths are hashed as paths, not as file bytes.
        """
        spec = self._spec
        parts = [spec.repo_id, spec.config_name, spec.image_column, spec.mask_column, self._data._fingerprint]
        digest.update(json.dumps(parts).encode())

    def _load_raw(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        row = self._data[index]
        where = f"{self._spec.repo_id}[{self.split}][{index}]"
        try:
            image = _open_hub_image(row[self._spec.image_column])
            mask = np.array(_open_hub_image(row[self._spec.mask_column]))
        except Exception as err:  # noqa: BLE001
            raise DatasetError(f"could not decode row {where}: {err}") from err
        return image, mask, where


def _open_hub_image(value: dict[str, Any]) -> Image.Image:
    if value.get("bytes") is not None:
        image = Image.open(io.BytesIO(value["bytes"]))
    else:
        image = Image.open(value["path"])
    image.load()
    return image


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

BENCHMARKS = ("voc", "ade20k", "coco-things", "coco-stuff", "camvid", "folder")


def load_segmentation_dataset(
    dataset_name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
    hub_spec: HubSpec | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """Build a benchmark split by name (case-insensitive; ``-`` and ``_`` are equivalent).

    With ``data_dir`` the on-disk layout is read; without it the benchmark's Hub dataset
    (``HUB_SPECS`` or ``hub_spec``). ``folder`` needs ``data_dir`` and ``class_names``
    (``ignore_index`` defaults to 255). Extra keyword arguments (``on_missing``,
    ``on_size_mismatch``, ``on_unknown_label``) go to the dataset.

    Args:
        dataset_name: one of :data:`BENCHMARKS`, or an alias (``pascal-voc``, ``ade``...).
        split: the split (``"train"``, ``"val"``...).
        data_dir: the on-disk dataset; None to load the benchmark from the Hub.
        class_names: the classes of a ``folder`` dataset.
        ignore_index: the ignore value of a ``folder`` dataset (default 255).
        hub_spec: the Hub dataset to read instead of the registered one.
        **kwargs: passed to the dataset class.

    Returns:
        The :class:`SegmentationDataset`.

    Raises:
        DatasetError: an unknown name, no Hub dataset for it, COCO without ``data_dir``, a ``folder`` dataset
            without class names, or what the dataset class raises.

    Example::

        from paka_hf.evaluation import load_segmentation_dataset
        val = load_segmentation_dataset("folder", "val", data_dir="data/my_set", class_names=("sky", "road"))
        image, mask = val[0]
    """
    key = dataset_name.lower().replace("_", "-")
    aliases = {"pascal-voc": "voc", "voc2012": "voc", "pascal": "voc", "ade": "ade20k", "coco-thing": "coco-things"}
    key = aliases.get(key, key)
    if key not in BENCHMARKS:
        raise DatasetError(f"unknown dataset {dataset_name!r}; choose one of {', '.join(BENCHMARKS)}")
    if data_dir is None:
        spec = hub_spec or HUB_SPECS.get(key)
        if spec is None:
            raise DatasetError(
                f"no Hub dataset is registered for {key!r}; pass --data_dir with the on-disk layout, or "
                "--hub_dataset_id with --image_column/--mask_column for a Hub copy with the same label convention"
            )
        names, ignore, label_map, display = _convention(key, class_names, ignore_index, spec)
        dataset = HubSegmentation(spec, split, names, ignore, label_map, display_name=display, **kwargs)
        if key == "ade20k":
            dataset.published_extra_zero_classes = ADE20K.published_extra_zero_classes
        return dataset
    if key == "voc":
        return VOCSegmentation(data_dir, split, **kwargs)
    if key == "ade20k":
        return ADE20K(data_dir, split, **kwargs)
    if key in ("coco-things", "coco-stuff"):
        return COCOSegmentation(data_dir, split, kind=key.split("-")[1], **kwargs)
    if key == "camvid":
        return CamVid(data_dir, split, **kwargs)
    if not class_names:
        raise DatasetError("the folder dataset needs class names (--class_names a,b,c or a file with one per line)")
    return FolderSegmentation(data_dir, split, class_names, 255 if ignore_index is None else ignore_index, **kwargs)


def _convention(key: str, class_names, ignore_index, spec: HubSpec):
    if key == "ade20k":
        return ADE20K_CLASSES, 255, {0: 255, **{v: v - 1 for v in range(1, 151)}}, "ADE20K"
    if key == "voc":
        return VOC_CLASSES, 255, None, "Pascal VOC 2012"
    if key == "camvid":
        return CAMVID_CLASSES, 11, None, "CamVid"
    if key in ("coco-things", "coco-stuff"):
        raise DatasetError(
            "COCO-Things/Stuff need COCO's category list to merge categories; use the on-disk layout (--data_dir)"
        )
    if not class_names:
        raise DatasetError("a folder-convention Hub dataset needs --class_names")
    return tuple(class_names), 255 if ignore_index is None else ignore_index, None, spec.repo_id


def read_class_names(value: str) -> tuple[str, ...]:
    """``"a,b,c"`` or the path of a text file with one class name per line.

    Args:
        value: comma-separated names, or a file path.

    Returns:
        The names, blank entries dropped.

    Example::

        read_class_names("sky,road,car")  # ('sky', 'road', 'car')
    """
    path = Path(value)
    if path.is_file():
        return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    return tuple(v.strip() for v in value.split(",") if v.strip())
