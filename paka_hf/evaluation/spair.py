r"""SPair-71k keypoint transfer: training-free semantic correspondence on frozen patch features.

Each annotated image pair of SPair-71k (Min et al., 2019) shows two instances of one category. Every keypoint
annotated in both images is transferred from the source image to the target image by nearest neighbour
(cosine) between the source feature at the keypoint and the target image's patch features; a transfer is
correct when it falls within ``α · max(w_bbox, h_bbox)`` of the true target keypoint, the box being the
target's (PCK@α\ :sub:`bbox`, α = 0.1 usually).

**The archive** (``SPair-71k.tar.gz`` of the dataset's authors; the layout their own code, HPF and CHM, reads,
and the one Probe3D and DIFT read)::

    SPair-71k/
        JPEGImages/<category>/<image>.jpg          e.g. JPEGImages/aeroplane/2008_000585.jpg
        PairAnnotation/{trn,val,test}/<pair>.json  one file per pair, named after its layout line
        Layout/{large,small}/{trn,val,test}.txt    the pairs of each split, one per line, in a fixed order
        ImageAnnotation/<category>/<image>.json    per-image annotations (not read here)
        Segmentation/<category>/<image>.png        (not read here)

A layout line (and its annotation's file name without ``.json``) is
``<pair number>-<source image>-<target image>:<category>``, e.g. ``000001-2008_000585-2008_004704:aeroplane``.
The large layout has 53,340 / 5,384 / 12,234 pairs (trn / val / test, 70,958 in all) over 18 categories.
The fields of a pair annotation that are read:

* ``category``; ``src_imname`` / ``trg_imname``: the image files (``2008_000585.jpg``), under
  ``JPEGImages/<category>/``;
* ``src_kps`` / ``trg_kps``: ``[[x, y], ...]``, the keypoints visible in both images, in the same order
  (``kps_ids`` names them), integer pixel indices of the original image (``x`` the column, ``y`` the row);
* ``src_bndbox`` / ``trg_bndbox``: ``[x1, y1, x2, y2]`` in the same pixels; the box's sides are ``x2 − x1``
  and ``y2 − y1``, as in the authors' code;
* ``src_imsize`` / ``trg_imsize``: ``[width, height, depth]`` of the image (checked against the JPEG);
* ``viewpoint_variation`` (0, 1 or 2; optional): the difficulty Probe3D breaks its scores down by.

A malformed archive raises :class:`~paka_hf.utils.errors.ConfigError` naming the file (a missing image or
annotation, bad JSON, a missing or malformed field, keypoint lists of different lengths, a layout line of
another form); nothing is skipped.

**Coordinates.** A keypoint ``(x, y)`` is the centre of its pixel, ``(x + ½, y + ½)`` in continuous
coordinates (origin at the image's top-left corner). Each image is brought to the view size ``H × W``
(multiples of the patch size ``p``) in one of two ways:

* ``resize="pad"`` (default, Probe3D's): scaled by ``s = min(H / H₀, W / W₀)`` (aspect kept, antialiased
  bilinear) to ``round(H₀ s) × round(W₀ s)`` and padded with white at the bottom and right; for a square view
  this is Probe3D's pad-to-square-then-resize;
* ``resize="stretch"`` (DIFT's, and the dataset authors' CHM code): resized to ``H × W`` (aspect changed).

With ``(s_x, s_y)`` the view's pixels per original pixel along each axis, a point ``P`` of the original image
is ``(P_x s_x, P_y s_y)`` in the view. The frozen backbone maps the normalised view to its last-layer patch grid
``F ∈ ℝ^{D × h × w}``, ``h = H/p``, ``w = W/p``; feature ``F_{ij}`` sits at the patch centre
``((j + ½) p, (i + ½) p)``.

**Transfer.** The source feature ``f`` of keypoint ``k`` at view point ``u_k`` is the bilinear interpolation of
the source grid between patch centres (``source_sampling="bilinear"``, clamped at the border; ``"nearest"``:
the patch containing ``u_k``). The target grid, optionally upsampled bilinearly by an integer factor ``r``
(``upsample``; cells of ``p / r`` pixels, centres ``((j + ½) p/r, (i + ½) p/r)``), is compared by cosine,

.. math::

    \hat t_k = \arg\max_t \frac{\langle f_k, G_t\rangle}{\|f_k\| \|G_t\|}  \quad(\text{ties: the first}),

and the prediction ``\hat P_k`` is the centre of cell ``\hat t_k`` mapped back to the target's original pixels
(then ``− ½`` to the annotation's pixel-index frame). The error is ``e_k = \|\hat P_k − P_k\|_2`` in original
target pixels.

**PCK.** With ``L = max(x₂ − x₁, y₂ − y₁)`` of the target box, keypoint ``k`` is correct at α when
``e_k ≤ α L``. Reported, for each α of ``alphas`` (default 0.05, 0.1, 0.15; the headline α is ``alpha``, 0.1):

* ``pck_categories`` (**the headline**, :attr:`SPairResult.pck`): the mean over categories of each category's
  PCK over its keypoints, ``(1/C) Σ_c |{k ∈ c : e_k ≤ α L_k}| / |c|``, as Probe3D reports;
* ``pck_keypoints``: over all keypoints together (DIFT's "per point");
* ``pck_pairs``: the mean over pairs of each pair's PCK (DIFT's "per image", HPF's average);
* per category: its keypoint and pair PCK and counts; by ``viewpoint_variation``: the mean over categories
  of the keypoint PCK of that difficulty (Probe3D's columns 0, 1, 2).

Every image's features are computed once per run (pairs are grouped by category and an image belongs to one
category, so only one category's grids are held at a time). There is nothing random: the pairs are taken in
the layout's order, so a run is reproducible.

**Differences from the published protocols** (facts from their code):

=====================  ==============================  ==============================  ===========================
                       here                            Probe3D (evaluate_spair_...)    DIFT (eval_spair.py)
=====================  ==============================  ==============================  ===========================
pairs                  every pair of the split's       ≤ 200 random pairs per          every test annotation file
                       layout list, in its order       category (and per viewpoint)
view                   pad (default) or stretch to     pad to square (white, bottom    stretch to 768 × 768
                       ``input_size`` (448 default)    right), bicubic to 800, then
                                                       centre-padded to 812 (p = 14)
source feature         bilinear between patch          bilinear (``align_corners=      pixel of the features
                       centres, or nearest patch       True`` on ``x / 800``)          upsampled to the image
target search          patch grid (``upsample=1``)     patch grid                      features upsampled to the
                                                                                       original image size
prediction             cell centre                     patch's top-left corner         pixel
correct                ``e ≤ α L``                     ``e < α L``                     ``e ≤ α L``
average                per category, then categories   per category, then categories   per pair / per point
flips, crops           none                            none (``use_bbox=False``)       none
=====================  ==============================  ==============================  ===========================

Probe3D also takes each keypoint from the per-image annotations (the same points) and truncates the resized
keypoints to integers. NeCo's public code has no SPair evaluation. To approach Probe3D's resolution use
``input_size=812`` for ``p = 14`` or ``800`` for ``p = 16``.
"""

from __future__ import annotations

import json
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
    check_choice,
    check_patch_multiple,
    check_positive_int,
)
from paka_hf.utils.imaging import to_rgb

#: The archive's top folder (``root`` may be it or the folder holding it).
ARCHIVE_FOLDER = "SPair-71k"
#: The official split names (file and folder names) and the aliases accepted for them.
SPLITS = {"trn": "trn", "train": "trn", "val": "val", "validation": "val", "test": "test"}
#: The two layouts the archive lists its splits in.
LAYOUTS = ("large", "small")
#: Pairs per split of the large layout (the dataset's paper and archive).
LARGE_LAYOUT_PAIRS = {"trn": 53_340, "val": 5_384, "test": 12_234}
RESIZE_MODES = ("pad", "stretch")
SAMPLING_MODES = ("bilinear", "nearest")
#: The fill of ``resize="pad"`` (Probe3D pads with white).
PAD_VALUE = 255
#: The fields of a pair annotation this module reads; all required.
REQUIRED_FIELDS = (
    "category",
    "src_imname",
    "trg_imname",
    "src_kps",
    "trg_kps",
    "src_bndbox",
    "trg_bndbox",
    "src_imsize",
    "trg_imsize",
)


@dataclass(frozen=True)
class SPairPair:
    """One annotated pair, in the original images' pixels (the module docstring gives the conventions).

    Args:
        pair_id: the layout line, e.g. ``"000001-2008_000585-2008_004704:aeroplane"``.
        category: the object category (also the image folder).
        source: the source image's file name (``"2008_000585.jpg"``).
        target: the target image's file name.
        source_keypoints: ``(K, 2)`` float64 ``(x, y)`` pixel indices.
        target_keypoints: ``(K, 2)``, the same keypoints in the target, in the same order.
        source_bbox: ``(x1, y1, x2, y2)``.
        target_bbox: ``(x1, y1, x2, y2)``.
        source_size: ``(width, height)`` from ``src_imsize``.
        target_size: ``(width, height)`` from ``trg_imsize``.
        viewpoint_variation: 0, 1 or 2; None when the annotation has none.
    """

    pair_id: str
    category: str
    source: str
    target: str
    source_keypoints: np.ndarray = field(repr=False)
    target_keypoints: np.ndarray = field(repr=False)
    source_bbox: tuple[float, float, float, float]
    target_bbox: tuple[float, float, float, float]
    source_size: tuple[int, int]
    target_size: tuple[int, int]
    viewpoint_variation: int | None = None

    @property
    def num_keypoints(self) -> int:
        """``K``, the keypoints annotated in both images."""
        return len(self.source_keypoints)

    @property
    def threshold_length(self) -> float:
        """``L = max(x2 − x1, y2 − y1)`` of the target box: PCK@α counts errors up to ``α L``."""
        x1, y1, x2, y2 = self.target_bbox
        return float(max(x2 - x1, y2 - y1))


def resolve_archive(root: str | os.PathLike) -> Path:
    """The ``SPair-71k`` folder: ``root`` itself when it holds ``PairAnnotation``, else ``root/SPair-71k``.

    Args:
        root: the archive's folder or the folder it was extracted into.

    Returns:
        The archive's folder.

    Raises:
        MissingPathError: ``root`` does not exist.
        ConfigError: neither ``root`` nor ``root/SPair-71k`` holds ``PairAnnotation`` and ``JPEGImages``.
    """
    base = Path(root)
    if not base.exists():
        raise MissingPathError(f"SPair-71k folder {str(root)!r} does not exist (resolved from {os.getcwd()})")
    for candidate in (base, base / ARCHIVE_FOLDER):
        if (candidate / "PairAnnotation").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    raise ConfigError(
        f"{str(root)!r} is not an SPair-71k archive: no PairAnnotation/ and JPEGImages/ in it or in "
        f"{ARCHIVE_FOLDER}/; pass the folder extracted from SPair-71k.tar.gz"
    )


def split_name(split: str) -> str:
    """The official split name (``trn``, ``val``, ``test``) of ``split`` or an alias (``train``, ``validation``).

    Args:
        split: the split.

    Returns:
        The official name.

    Raises:
        ConfigError: an unknown split.
    """
    if split not in SPLITS:
        raise ConfigError(f"SPair-71k split must be one of {tuple(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _points(data: dict, key: str, where: str) -> np.ndarray:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise ConfigError(f"{where}: {key} must be a list of [x, y] pairs; the annotation is malformed")
    numbers = [[_number(c) for c in p] for p in value]
    if any(c is None for p in numbers for c in p):
        raise ConfigError(f"{where}: {key} has a coordinate that is not a finite number; the annotation is malformed")
    return np.asarray(numbers, dtype=np.float64).reshape(-1, 2)


def _bbox(data: dict, key: str, where: str) -> tuple[float, float, float, float]:
    value = data[key]
    box = [_number(c) for c in value] if isinstance(value, list) else []
    if len(box) != 4 or any(c is None for c in box) or not (box[2] > box[0] and box[3] > box[1]):
        raise ConfigError(f"{where}: {key} must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1, got {value!r}")
    return tuple(box)  # type: ignore[return-value]


def _size(data: dict, key: str, where: str) -> tuple[int, int]:
    value = data[key]
    if (
        not isinstance(value, list)
        or len(value) < 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value[:2])
    ):
        raise ConfigError(f"{where}: {key} must be [width, height, depth] in pixels, got {value!r}")
    return int(value[0]), int(value[1])


def parse_layout_line(line: str, where: str) -> tuple[str, str, str]:
    """``"000001-2008_000585-2008_004704:aeroplane"`` → ``("2008_000585", "2008_004704", "aeroplane")``.

    Args:
        line: a layout line (stripped).
        where: the file and line, for the message.

    Returns:
        ``(source image stem, target image stem, category)``.

    Raises:
        ConfigError: a line of another form.
    """
    names, _, category = line.partition(":")
    parts = names.split("-")
    if not category or len(parts) != 3 or not all(parts):
        raise ConfigError(f"{where}: {line!r} is not '<pair>-<source>-<target>:<category>'; the layout is malformed")
    return parts[1], parts[2], category


def read_pair(archive: Path, split: str, pair_id: str) -> SPairPair:
    """Read and check the annotation of one layout line.

    Args:
        archive: the ``SPair-71k`` folder.
        split: the official split name.
        pair_id: the layout line.

    Returns:
        The :class:`SPairPair`.

    Raises:
        ConfigError: the annotation or an image is missing, or the annotation is malformed or disagrees with the
            layout line (module docstring).
    """
    path = archive / "PairAnnotation" / split / f"{pair_id}.json"
    where = str(path)
    source_stem, target_stem, category = parse_layout_line(pair_id, f"Layout line {pair_id!r}")
    if not path.is_file():
        raise ConfigError(f"{where}: missing; the layout lists pair {pair_id!r} but its annotation is not there")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{where}: not valid JSON ({error}); re-extract the archive") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: not a JSON object; the annotation is malformed")
    missing = [key for key in REQUIRED_FIELDS if key not in data]
    if missing:
        raise ConfigError(f"{where}: no {', '.join(missing)}; the annotation is malformed")
    if data["category"] != category:
        raise ConfigError(f"{where}: category {data['category']!r} but the layout line says {category!r}")
    for key, stem in (("src_imname", source_stem), ("trg_imname", target_stem)):
        if data[key] != f"{stem}.jpg":
            raise ConfigError(f"{where}: {key} {data[key]!r} but the layout line says {stem + '.jpg'!r}")
    source_points = _points(data, "src_kps", where)
    target_points = _points(data, "trg_kps", where)
    if len(source_points) != len(target_points):
        raise ConfigError(
            f"{where}: {len(source_points)} source keypoints but {len(target_points)} target keypoints; "
            "src_kps and trg_kps must list the same keypoints"
        )
    if len(source_points) == 0:
        raise ConfigError(f"{where}: no keypoints in src_kps / trg_kps; the annotation is malformed")
    for key in ("src_imname", "trg_imname"):
        image = archive / "JPEGImages" / category / data[key]
        if not image.is_file():
            raise ConfigError(f"{where}: its image {str(image)!r} is missing; re-extract the archive")
    variation = data.get("viewpoint_variation")
    return SPairPair(
        pair_id=pair_id,
        category=category,
        source=data["src_imname"],
        target=data["trg_imname"],
        source_keypoints=source_points,
        target_keypoints=target_points,
        source_bbox=_bbox(data, "src_bndbox", where),
        target_bbox=_bbox(data, "trg_bndbox", where),
        source_size=_size(data, "src_imsize", where),
        target_size=_size(data, "trg_imsize", where),
        viewpoint_variation=int(variation) if isinstance(variation, int) and not isinstance(variation, bool) else None,
    )


def read_layout(archive: Path, split: str, layout: str = "large") -> list[str]:
    """The layout lines (pair ids) of a split, in the file's order.

    Args:
        archive: the ``SPair-71k`` folder.
        split: the split or an alias (:func:`split_name`).
        layout: ``"large"`` or ``"small"``.

    Returns:
        The pair ids (blank lines left out).

    Raises:
        ConfigError: an unknown split or layout, a missing or empty list, or a pair listed twice.
    """
    split = split_name(split)
    check_choice("layout", layout, LAYOUTS)
    path = archive / "Layout" / layout / f"{split}.txt"
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} is missing; an SPair-71k archive lists each split in Layout/{layout}/")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [line for line in lines if line]
    if not ids:
        raise ConfigError(f"{str(path)!r} lists no pairs; re-extract the archive")
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{str(path)!r} lists {twice!r} more than once; the layout is malformed")
    return ids


def read_spair_pairs(
    root: str | os.PathLike,
    split: str = "test",
    *,
    layout: str = "large",
    categories: Sequence[str] | None = None,
    max_pairs_per_category: int | None = None,
    max_pairs: int | None = None,
) -> list[SPairPair]:
    """The pairs of a split, checked, in the layout's order (filters keep that order).

    Only the annotations kept are read: ``categories`` and ``max_pairs_per_category`` (the first pairs of each
    category) and then ``max_pairs`` (the first pairs overall) choose them from the layout's lines first.

    Args:
        root: the ``SPair-71k`` folder or the folder holding it.
        split: ``"trn"``, ``"val"`` or ``"test"`` (or ``"train"``, ``"validation"``).
        layout: ``"large"`` (the benchmark's) or ``"small"``.
        categories: keep these categories only; None for all.
        max_pairs_per_category: keep the first pairs of each category only; None for all.
        max_pairs: keep the first pairs only (after the filters above); None for all.

    Returns:
        The :class:`SPairPair` list.

    Raises:
        MissingPathError: ``root`` does not exist.
        ConfigError: not an archive, a malformed layout or annotation, a missing image, or a category that the
            split does not have.
    """
    archive = resolve_archive(root)
    official = split_name(split)
    ids = read_layout(archive, official, layout)
    listed = {}
    for line_number, pair_id in enumerate(ids, 1):
        listed[pair_id] = parse_layout_line(pair_id, f"Layout/{layout}/{official}.txt line {line_number}")[2]
    if categories is not None:
        wanted = list(dict.fromkeys(categories))
        present = set(listed.values())
        unknown = [c for c in wanted if c not in present]
        if unknown:
            raise ConfigError(f"categories {unknown} are not in the {official} split; choose from {sorted(present)}")
        ids = [i for i in ids if listed[i] in wanted]
    if max_pairs_per_category is not None:
        check_positive_int("max_pairs_per_category", max_pairs_per_category)
        seen: dict[str, int] = {}
        kept = []
        for pair_id in ids:
            seen[listed[pair_id]] = seen.get(listed[pair_id], 0) + 1
            if seen[listed[pair_id]] <= max_pairs_per_category:
                kept.append(pair_id)
        ids = kept
    if max_pairs is not None:
        check_positive_int("max_pairs", max_pairs)
        ids = ids[:max_pairs]
    return [read_pair(archive, official, pair_id) for pair_id in ids]


@dataclass
class SPairConfig:
    """Settings of the SPair-71k keypoint transfer (the module docstring gives the maths).

    Args:
        split: ``"test"`` (the benchmark, 12,234 pairs), ``"val"`` or ``"trn"``.
        layout: the split lists of ``Layout/<layout>/``: ``"large"`` (the benchmark's) or ``"small"``.
        input_size: the view's side, or ``(height, width)``; multiples of the backbone's patch size.
        resize: ``"pad"`` (aspect kept, white padding at the bottom and right; Probe3D) or ``"stretch"``.
        alpha: the headline α of PCK@α (:attr:`SPairResult.pck`).
        alphas: every α reported (``alpha`` is added when missing); sorted.
        source_sampling: the source feature at a keypoint: ``"bilinear"`` between patch centres or the
            ``"nearest"`` patch (the one containing the keypoint).
        upsample: upsample the target grid bilinearly by this integer factor before the search (1: none).
        categories: evaluate these categories only; None for all.
        max_pairs_per_category: the first pairs of each category only (quick runs); None for all.
        max_pairs: the first pairs only, after the filters above (quick runs); None for all.
        batch_size: images per forward pass.

    Raises:
        ConfigError: a value outside the ranges above.

    Example::

        SPairConfig(input_size=448, max_pairs_per_category=20)
    """

    split: str = "test"
    layout: str = "large"
    input_size: int | tuple[int, int] = 448
    resize: str = "pad"
    alpha: float = 0.1
    alphas: Sequence[float] = (0.05, 0.1, 0.15)
    source_sampling: str = "bilinear"
    upsample: int = 1
    categories: Sequence[str] | None = None
    max_pairs_per_category: int | None = None
    max_pairs: int | None = None
    batch_size: int = 16

    def __post_init__(self):
        self.split = split_name(self.split)
        check_choice("layout", self.layout, LAYOUTS)
        try:
            self.input_size = as_size(self.input_size)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"input_size must be a side or (height, width): {error}") from None
        for side in self.input_size:
            check_positive_int("input_size", side)
        check_choice("resize", self.resize, RESIZE_MODES)
        check_choice("source_sampling", self.source_sampling, SAMPLING_MODES)
        alphas = [float(a) for a in self.alphas] + [float(self.alpha)]
        if any(not (a > 0 and math.isfinite(a)) for a in alphas):
            raise ConfigError(f"alpha and alphas must be positive numbers, got {self.alpha} and {list(self.alphas)}")
        self.alpha = float(self.alpha)
        self.alphas = tuple(sorted(set(alphas)))
        if isinstance(self.upsample, bool) or not isinstance(self.upsample, int):
            raise ConfigError(f"upsample must be a positive integer factor, got {self.upsample!r}")
        check_positive_int("upsample", self.upsample)
        if self.categories is not None:
            if isinstance(self.categories, str):
                self.categories = (self.categories,)
            self.categories = tuple(self.categories)
            if not self.categories:
                raise ConfigError("categories must name at least one category, or be None for all")
        for name in ("max_pairs_per_category", "max_pairs"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        check_positive_int("batch_size", self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for a results JSON).

        Returns:
            ``{field: value}``, sequences as lists.
        """
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        out["alphas"] = list(self.alphas)
        out["categories"] = None if self.categories is None else list(self.categories)
        return out


def prepare_view(
    image: Image.Image, view_size: tuple[int, int], resize: str
) -> tuple[torch.Tensor, tuple[float, float]]:
    """An RGB image brought to the view (module docstring) and the view's pixels per original pixel.

    Args:
        image: an RGB image of ``W₀ × H₀`` pixels.
        view_size: ``(H, W)``.
        resize: ``"pad"`` or ``"stretch"``.

    Returns:
        ``(view, (s_x, s_y))``: the ``(3, H, W)`` uint8 view, and the scales, so that an original point
        ``(x, y)`` is ``(x s_x, y s_y)`` in the view.
    """
    height, width = view_size
    pixels = TF.pil_to_tensor(image)
    original_height, original_width = pixels.shape[-2:]
    if resize == "stretch":
        return TF.resize(pixels, [height, width], antialias=True), (width / original_width, height / original_height)
    scale = min(height / original_height, width / original_width)
    new_height = min(height, max(1, round(original_height * scale)))
    new_width = min(width, max(1, round(original_width * scale)))
    view = torch.full((3, height, width), PAD_VALUE, dtype=torch.uint8)
    view[:, :new_height, :new_width] = TF.resize(pixels, [new_height, new_width], antialias=True)
    return view, (new_width / original_width, new_height / original_height)


def keypoints_to_view(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Pixel-index keypoints ``(x, y)`` of the original image → continuous view coordinates ``((x + ½) s_x, (y + ½) s_y)``.

    Args:
        points: ``(K, 2)`` keypoints.
        scale: ``(s_x, s_y)`` from :func:`prepare_view`.

    Returns:
        ``(K, 2)`` float64 view points.
    """
    return (np.asarray(points, np.float64) + 0.5) * np.asarray(scale, np.float64)


def view_to_keypoints(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """The inverse of :func:`keypoints_to_view`: view points → the original image's pixel-index frame.

    Args:
        points: ``(K, 2)`` view points.
        scale: ``(s_x, s_y)``.

    Returns:
        ``(K, 2)`` float64 ``(x / s_x − ½, y / s_y − ½)``.
    """
    return np.asarray(points, np.float64) / np.asarray(scale, np.float64) - 0.5


def sample_point_features(
    grid: torch.Tensor, points: np.ndarray, patch_size: int, mode: str = "bilinear"
) -> torch.Tensor:
    """The features of a patch grid at view points: bilinear between patch centres (clamped at the border), or
    the patch that contains the point.

    Args:
        grid: ``(D, h, w)`` patch grid of an ``h p × w p`` view.
        points: ``(K, 2)`` ``(x, y)`` view points.
        patch_size: ``p``.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        ``(K, D)`` float32 features.
    """
    _, h, w = grid.shape
    xy = torch.as_tensor(np.asarray(points, np.float64), dtype=torch.float32, device=grid.device)
    if mode == "nearest":
        column = (xy[:, 0] // patch_size).long().clamp(0, w - 1)
        row = (xy[:, 1] // patch_size).long().clamp(0, h - 1)
        return grid[:, row, column].T.float()
    # align_corners=False: −1 and 1 are the view's outer edges, so a patch centre (j + ½) p is a grid cell centre
    normalised = xy / torch.tensor([w * patch_size / 2, h * patch_size / 2], device=grid.device) - 1.0
    sampled = F.grid_sample(
        grid[None].float(), normalised[None, None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return sampled[0, :, 0].T  # (K, D)


def nearest_cell_centres(queries: torch.Tensor, grid: torch.Tensor, cell_size: float) -> np.ndarray:
    """The centre of the grid cell whose feature is the nearest by cosine to each query (ties: the first cell).

    Args:
        queries: ``(K, D)`` features.
        grid: ``(D, h, w)`` features of cells of ``cell_size`` pixels.
        cell_size: the cell's side in view pixels (``p``, or ``p / r`` for an upsampled grid).

    Returns:
        ``(K, 2)`` float64 ``((j + ½) c, (i + ½) c)`` view points of the chosen cells ``(i, j)``.
    """
    _, _, w = grid.shape
    keys = F.normalize(grid.float().flatten(1).T, dim=1)  # (h·w, D)
    similarity = F.normalize(queries.float(), dim=1) @ keys.T  # (K, h·w)
    index = similarity.argmax(dim=1).cpu().numpy()
    return np.stack([index % w + 0.5, index // w + 0.5], axis=1).astype(np.float64) * cell_size


def transfer_keypoints(
    source_grid: torch.Tensor,
    target_grid: torch.Tensor,
    source_points: np.ndarray,
    patch_size: int,
    *,
    sampling: str = "bilinear",
    upsample: int = 1,
) -> np.ndarray:
    """Nearest-neighbour keypoint transfer between two patch grids, in view coordinates.

    Args:
        source_grid: ``(D, h, w)`` source patch grid.
        target_grid: ``(D, h', w')`` target patch grid.
        source_points: ``(K, 2)`` source view points.
        patch_size: ``p``.
        sampling: the source feature: ``"bilinear"`` or ``"nearest"`` (:func:`sample_point_features`).
        upsample: upsample the target grid bilinearly by this factor first (cells of ``p / upsample`` pixels).

    Returns:
        ``(K, 2)`` float64 predicted target view points (cell centres).
    """
    queries = sample_point_features(source_grid, source_points, patch_size, sampling)
    target = target_grid.float()
    if upsample > 1:
        target = F.interpolate(target[None], scale_factor=upsample, mode="bilinear", align_corners=False)[0]
    return nearest_cell_centres(queries, target, patch_size / upsample)


def _pck(correct: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """``(count, A)`` percent correct of each group (NaN for an empty one) from ``(K, A)`` booleans."""
    sums = np.zeros((count, correct.shape[1]))
    np.add.at(sums, groups, correct)
    sizes = np.bincount(groups, minlength=count)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes > 0, 100.0 * sums / np.maximum(sizes, 1), np.nan)


@dataclass
class SPairResult:
    """SPair-71k PCK (percent), every list over ``alphas``, in their order.

    Args:
        alpha: the headline α.
        alphas: the α reported.
        pck_categories: the mean over categories of each category's keypoint PCK (the headline family).
        pck_keypoints: PCK over all keypoints together.
        pck_pairs: the mean over pairs of each pair's PCK.
        per_category: ``{category: {"pck_keypoints": [...], "pck_pairs": [...], "num_pairs": n,
            "num_keypoints": k}}``, in the order evaluated.
        pck_viewpoint: ``{"0" | "1" | "2": [...]}``, the mean over categories of the keypoint PCK of the pairs of
            that ``viewpoint_variation`` (categories without such pairs left out); empty when not annotated.
        num_pairs: pairs evaluated.
        num_keypoints: keypoints evaluated.
        num_images: distinct images encoded.
        num_categories: categories evaluated.
        pair_ids: the pairs, in the order evaluated.
        errors: ``(K,)`` each keypoint's error in original target pixels.
        threshold_lengths: ``(K,)`` its pair's ``L = max(w, h)`` of the target box.
        keypoint_pairs: ``(K,)`` its pair's index in ``pair_ids``.
        settings: the config (:meth:`SPairConfig.to_dict`), with ``patch_size``, ``grid_size`` and
            ``num_pairs_in_split``.
    """

    alpha: float
    alphas: list[float]
    pck_categories: list[float]
    pck_keypoints: list[float]
    pck_pairs: list[float]
    per_category: dict[str, dict[str, Any]]
    pck_viewpoint: dict[str, list[float]]
    num_pairs: int
    num_keypoints: int
    num_images: int
    num_categories: int
    pair_ids: list[str] = field(repr=False)
    errors: np.ndarray = field(repr=False)
    threshold_lengths: np.ndarray = field(repr=False)
    keypoint_pairs: np.ndarray = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def pck(self) -> float:
        """The headline: PCK@``alpha``, the mean over categories of each category's keypoint PCK."""
        return self.pck_categories[self.alphas.index(self.alpha)]

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (no per-keypoint arrays; floats rounded to 4 decimals, NaN as None).

        Returns:
            ``{field: value}`` for every field but ``pair_ids`` and the arrays, with ``pck``.
        """

        def clean(values: Sequence[float]) -> list[float | None]:
            return [round(float(v), 4) if math.isfinite(v) else None for v in values]

        per_category = {
            name: {
                **row,
                "pck_keypoints": clean(row["pck_keypoints"]),
                "pck_pairs": clean(row["pck_pairs"]),
            }
            for name, row in self.per_category.items()
        }
        return {
            "alpha": self.alpha,
            "alphas": list(self.alphas),
            "pck": clean([self.pck])[0],
            "pck_categories": clean(self.pck_categories),
            "pck_keypoints": clean(self.pck_keypoints),
            "pck_pairs": clean(self.pck_pairs),
            "per_category": per_category,
            "pck_viewpoint": {key: clean(values) for key, values in self.pck_viewpoint.items()},
            "num_pairs": self.num_pairs,
            "num_keypoints": self.num_keypoints,
            "num_images": self.num_images,
            "num_categories": self.num_categories,
            "settings": dict(self.settings),
        }

    def format_table(self) -> str:
        """A plain-text table: one row per category, then the means, one column per α.

        Returns:
            The table, with the counts on a last line.
        """
        heads = " ".join(f"{'PCK@' + format(a, 'g'):>9}" for a in self.alphas)
        lines = [f"{'category':<24} {heads} {'pairs':>6} {'kps':>7}"]

        def row(name: str, values: Sequence[float], pairs: str = "", keypoints: str = "") -> str:
            cells = " ".join(f"{v:>9.2f}" for v in values)
            return f"{name:<24} {cells} {pairs:>6} {keypoints:>7}"

        for name, stats in self.per_category.items():
            lines.append(row(name, stats["pck_keypoints"], str(stats["num_pairs"]), str(stats["num_keypoints"])))
        lines.append(row("mean over categories", self.pck_categories))
        lines.append(row("all keypoints", self.pck_keypoints))
        lines.append(row("mean over pairs", self.pck_pairs))
        for key, values in self.pck_viewpoint.items():
            lines.append(row(f"viewpoint variation {key}", values))
        lines.append(
            f"{self.num_keypoints} keypoints, {self.num_pairs} pairs, {self.num_images} images, "
            f"{self.num_categories} categories; headline PCK@{self.alpha:g} = {self.pck:.2f}"
        )
        return "\n".join(lines)


class _ImageFeatures:
    """The patch grids of one category's images, each computed once: ``name → (grid (D, h, w), (s_x, s_y))``."""

    def __init__(self):
        self.grids: dict[str, torch.Tensor] = {}
        self.scales: dict[str, tuple[float, float]] = {}


def _load_image(path: Path, expected_size: tuple[int, int], pair_id: str) -> Image.Image:
    try:
        with Image.open(path) as opened:
            image = to_rgb(opened).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ConfigError(f"{path}: cannot read it as an image ({error}); re-extract the archive") from None
    if image.size != expected_size:
        raise ConfigError(
            f"{path}: {image.size[0]}x{image.size[1]} pixels but pair {pair_id!r} says {expected_size[0]}x"
            f"{expected_size[1]} (imsize); its keypoints would be misplaced, re-extract the archive"
        )
    return image


def _encode_category(
    backbone: torch.nn.Module,
    archive: Path,
    pairs: Sequence[SPairPair],
    config: SPairConfig,
    mean: Sequence[float],
    std: Sequence[float],
    grid: tuple[int, int],
    device: str | torch.device,
) -> _ImageFeatures:
    """Encode every image of these pairs (one category) once, in order of first use."""
    sizes: dict[str, tuple[tuple[int, int], str]] = {}
    for pair in pairs:
        sizes.setdefault(pair.source, (pair.source_size, pair.pair_id))
        sizes.setdefault(pair.target, (pair.target_size, pair.pair_id))
    names = list(sizes)
    category = pairs[0].category
    store = _ImageFeatures()
    for start in range(0, len(names), config.batch_size):
        batch = names[start : start + config.batch_size]
        views = []
        for name in batch:
            size, pair_id = sizes[name]
            image = _load_image(archive / "JPEGImages" / category / name, size, pair_id)
            view, scale = prepare_view(image, config.input_size, config.resize)
            views.append(view)
            store.scales[name] = scale
        pixels = normalize_uint8_views(torch.stack(views), mean, std)
        features = backbone(pixels.to(device))
        if features.ndim != 4 or tuple(features.shape[-2:]) != grid or features.shape[0] != len(batch):
            raise ConfigError(
                f"the backbone returned {tuple(features.shape)} for {tuple(pixels.shape)} inputs; it must return "
                f"the patch grid (B, D, {grid[0]}, {grid[1]}): use a PatchBackbone"
            )
        for name, feature in zip(batch, features):
            store.grids[name] = feature.to(torch.float16)  # half the memory; the search runs in float32
    return store


@torch.inference_mode()
def spair_keypoint_transfer(
    backbone: torch.nn.Module,
    root: str | os.PathLike,
    config: SPairConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> SPairResult:
    """SPair-71k PCK@α of a frozen patch backbone by nearest-neighbour keypoint transfer (module docstring).

    Args:
        backbone: a :class:`~paka_hf.modeling.backbones.PatchBackbone` (or a module with ``patch_size``,
            ``image_mean``, ``image_std`` whose forward maps ``(B, 3, H, W)`` to ``(B, D, H/p, W/p)``); it is
            put in eval mode for the run and its mode restored afterwards.
        root: the ``SPair-71k`` folder or the folder holding it.
        config: the settings; None for the defaults (the test split, all pairs).
        device: where the backbone runs (it must already be there); the search runs there too.
        progress: show a progress bar over the pairs (with an ETA).

    Returns:
        The :class:`SPairResult`.

    Raises:
        MissingPathError: ``root`` does not exist.
        ConfigError: an input size that is not a multiple of the patch size, a malformed archive (module
            docstring), an image whose size is not its annotation's, or a backbone whose output is not the
            patch grid.

    Example::

        from paka_hf.modeling.backbones import PatchBackbone
        from paka_hf.evaluation.spair import SPairConfig, spair_keypoint_transfer
        backbone = PatchBackbone.from_pretrained("facebook/dinov2-small")
        result = spair_keypoint_transfer(backbone, "data/SPair-71k", SPairConfig(input_size=448))
        print(result.format_table())
    """
    config = config or SPairConfig()
    patch = int(backbone.patch_size)
    height, width = config.input_size
    check_patch_multiple("input_size", height, patch)
    check_patch_multiple("input_size", width, patch)
    grid = (height // patch, width // patch)
    mean, std = backbone_normalization(backbone)
    archive = resolve_archive(root)
    pairs = read_spair_pairs(
        archive,
        config.split,
        layout=config.layout,
        categories=config.categories,
        max_pairs_per_category=config.max_pairs_per_category,
        max_pairs=config.max_pairs,
    )
    # group by category (an image belongs to one), categories in order of first appearance, pairs in layout order
    by_category: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_category.setdefault(pair.category, []).append(index)
    order = [i for indices in by_category.values() for i in indices]
    pairs = [pairs[i] for i in order]

    alphas = np.asarray(config.alphas, np.float64)
    errors, lengths, owners = [], [], []
    num_images = 0
    was_training = backbone.training
    backbone.eval()
    try:
        with tqdm(total=len(pairs), desc="spair", unit="pair", disable=not progress) as bar:
            start = 0
            for category, indices in by_category.items():
                chunk = pairs[start : start + len(indices)]
                bar.set_postfix_str(category)
                store = _encode_category(backbone, archive, chunk, config, mean, std, grid, device)
                num_images += len(store.grids)
                for offset, pair in enumerate(chunk):
                    source_view = keypoints_to_view(pair.source_keypoints, store.scales[pair.source])
                    predicted = transfer_keypoints(
                        store.grids[pair.source],
                        store.grids[pair.target],
                        source_view,
                        patch,
                        sampling=config.source_sampling,
                        upsample=config.upsample,
                    )
                    predicted = view_to_keypoints(predicted, store.scales[pair.target])
                    errors.append(np.linalg.norm(predicted - pair.target_keypoints, axis=1))
                    lengths.append(np.full(pair.num_keypoints, pair.threshold_length))
                    owners.append(np.full(pair.num_keypoints, start + offset, dtype=np.int64))
                    bar.update(1)
                del store  # one category's grids at a time
                start += len(indices)
    finally:
        backbone.train(was_training)

    error = np.concatenate(errors)
    length = np.concatenate(lengths)
    owner = np.concatenate(owners)
    correct = error[:, None] <= alphas[None, :] * length[:, None]  # (K, A)
    categories = list(by_category)
    category_of_pair = np.asarray([categories.index(p.category) for p in pairs], dtype=np.int64)
    category_of_keypoint = category_of_pair[owner]
    per_pair = _pck(correct, owner, len(pairs))  # (P, A)
    per_category_keypoints = _pck(correct, category_of_keypoint, len(categories))  # (C, A)
    keypoints_per_category = np.bincount(category_of_keypoint, minlength=len(categories))
    per_category = {}
    for c, name in enumerate(categories):
        members = category_of_pair == c
        per_category[name] = {
            "pck_keypoints": [float(v) for v in per_category_keypoints[c]],
            "pck_pairs": [float(v) for v in per_pair[members].mean(axis=0)],
            "num_pairs": int(members.sum()),
            "num_keypoints": int(keypoints_per_category[c]),
        }
    pck_viewpoint: dict[str, list[float]] = {}
    variations = [p.viewpoint_variation for p in pairs]
    if all(v is not None for v in variations):
        variation_of_keypoint = np.asarray(variations, dtype=np.int64)[owner]
        for level in sorted(set(variations)):
            chosen = variation_of_keypoint == level
            table = _pck(correct[chosen], category_of_keypoint[chosen], len(categories))
            present = ~np.isnan(table[:, 0])
            pck_viewpoint[str(level)] = [float(v) for v in table[present].mean(axis=0)]

    settings = {
        **config.to_dict(),
        "patch_size": patch,
        "grid_size": list(grid),
        "num_pairs_in_split": len(read_layout(archive, config.split, config.layout)),
    }
    return SPairResult(
        alpha=config.alpha,
        alphas=list(config.alphas),
        pck_categories=[float(v) for v in per_category_keypoints.mean(axis=0)],
        pck_keypoints=[float(v) for v in 100.0 * correct.mean(axis=0)],
        pck_pairs=[float(v) for v in per_pair.mean(axis=0)],
        per_category=per_category,
        pck_viewpoint=pck_viewpoint,
        num_pairs=len(pairs),
        num_keypoints=len(error),
        num_images=num_images,
        num_categories=len(categories),
        pair_ids=[p.pair_id for p in pairs],
        errors=error,
        threshold_lengths=length,
        keypoint_pairs=owner,
        settings=settings,
    )
