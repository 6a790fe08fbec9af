r"""Monocular depth from frozen patch features: a linear probe on NYUv2 (or any image + depth folder).

The protocol of DINOv3's linear depth evaluation (``dinov3/eval/depth``, config ``config-nyu.yaml``),
computed on features extracted once, as the segmentation probe does (:mod:`.linear`):

* **Features.** The last-layer patch grid of a frozen :class:`~paka_hf.modeling.backbones.PatchBackbone`
  (after the final norm: DINOv3's ``use_backbone_norm``, ``backbone_out_layers: LAST``), ``(N, D, h, w)``,
  kept in ``float16``; optionally the CLS token ``(N, D)``, concatenated to every patch token
  (``use_cls_token``; DINOv3's NYU config leaves it off, DINOv2's "lin. 1" and Probe3D's ``dense-cls`` use it).
  The whole image is resized (bilinear, antialiased) to ``input_size``, by default NYUv2's ``480 × 640``
  rounded to the nearest multiple of the patch size (``476 × 644`` for ``p = 14``, ``480 × 640`` for
  ``p = 16``), and normalised with the backbone's own statistics.
* **Head.** Per-channel standardisation of the features with the training set's mean and std (the fixed
  values a BatchNorm's running statistics converge to; DINOv3 trains a BatchNorm) and a ``1 × 1`` convolution
  to ``K`` depth-bin logits ``l`` on the patch grid. With ``K > 1`` (default 256, as both references) the
  depth is the AdaBins "linear" read-out over bins ``b_k`` spaced uniformly on ``[d_min, d_max]``:

  .. math::  p_k = \frac{\mathrm{relu}(l_k) + 0.1}{\sum_j (\mathrm{relu}(l_j) + 0.1)}, \qquad
             \hat d = \sum_k p_k\, b_k ;

  with ``K = 1`` it is a regression, :math:`\hat d = \mathrm{relu}(l) + d_{\min}` (DINOv3's ``C == 1`` case).
  The depth map ``(h, w)`` is upsampled bilinearly (``align_corners=False``) to each label's own resolution.
* **Loss.** The scale-invariant log loss (SigLoss, Eigen et al. 2014, as in AdaBins, DINOv2/v3 and Probe3D)
  over the valid pixels of a batch, with :math:`g = \log(\hat d + \epsilon) - \log(d + \epsilon)`,
  :math:`\epsilon = 10^{-3}`:

  .. math::  \mathcal{L} = \sqrt{\overline{g^2} - \lambda\,\bar g^{\,2}}, \quad \lambda = 0.85

  (``var(g) + 0.15 mean(g)^2``, DINOv3's form); for the first ``sigloss_warmup_steps`` steps only the
  :math:`(1 - \lambda)\,\bar g^{\,2}` term, as DINOv3's warm-up.
* **Training.** AdamW (lr 3e-4, betas 0.9/0.99, weight decay 1e-4, DINOv3's NYU values), gradients clipped
  to norm 35, linear warm-up over the first third of the steps then a cosine decay to 0 (DINOv3's
  ``WarmupOneCycleLR`` warms up for 12 800 of 38 400 steps); batch order and head init from ``seed``.
* **Valid pixels.** ``d_min < d < d_max`` with ``d_min = 0.001``, ``d_max = 10`` m (0 marks a missing
  value in every format) and, with ``crop="eigen"``, inside the Eigen crop rows 45–470, columns 41–600 of
  ``480 × 640`` (scaled to other label sizes as DINOv3's ``make_valid_mask`` does). The same mask is used for
  training and scoring.
* **Metrics.** Predictions clamped to ``[d_min, d_max]``; per image over its valid pixels
  :math:`\mathrm{RMSE} = \sqrt{\overline{(d - \hat d)^2}}` (m), :math:`\mathrm{AbsRel} = \overline{|d - \hat d| / d}`,
  :math:`\delta_k = 100 \cdot \overline{[\max(d/\hat d, \hat d/d) < 1.25^k]}` (%); then the mean over images
  (both references average per-image values). An image with no valid pixel is left out of the mean and
  counted (``DepthScores.images_without_valid_depth``).

Where we differ from DINOv3 (and why): features are extracted once from the whole resized image, so there
are no random crops, rotations, flips or colour jitter in training and no flip test-time augmentation
(DINOv3 uses both); DINOv3 center-pads instead of resizing to a patch multiple; the BatchNorm is a fixed
standardisation; the schedule is epochs over the labelled training images instead of 38 400 steps over the
24 231 frames of the BTS training list. Probe3D trains a DPT head on four layers (with the CLS token) over
GeoNet's NYU frames, with 10 × SigLoss + 0.5 × a gradient loss, on ``480 × 480`` center crops, and scores the
654 labelled test images without the Eigen crop: its depth numbers are not a linear probe's.

Data:

* :class:`NYUv2Labeled` reads ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5, with ``h5py``: extra
  ``[depth]``). MATLAB stores arrays column-major, so HDF5 (row-major) sees every axis reversed: the MATLAB
  ``images`` ``480 × 640 × 3 × 1449`` uint8 is the HDF5 dataset ``(1449, 3, 640, 480)`` = ``(N, C, W, H)``, and
  ``depths`` / ``rawDepths`` ``480 × 640 × 1449`` single are ``(1449, 640, 480)`` = ``(N, W, H)`` (metres). Image
  ``i`` is ``images[i].transpose(2, 1, 0)`` ``(H, W, 3)`` and its depth ``depths[i].T`` ``(H, W)``. The default
  depth is ``rawDepths`` (the sensor's depth, 0 where missing), which both references score: Probe3D reads
  ``rawDepths`` of the labelled set, and DINOv3 reads BTS-style lists (``nyu_test.txt``) whose test PNGs BTS's
  ``extract_official_train_test_set_from_mat.py`` writes from ``rawDepths`` (as uint16 millimetres, with the RGB
  outside rows 7–473, columns 7–631 blacked out; we read the floats and the RGB as stored);
  ``depth_key="depths"`` reads the in-painted maps. The official split is ``splits.mat`` (published with the
  dataset on the NYU Depth V2 page; a MATLAB v5 file, read with SciPy): ``trainNdxs`` (795) and ``testNdxs``
  (654), 1-based indices into the 1449 images (see :func:`read_nyu_split`).
* :class:`FolderDepth` reads ``root/images/<stem>.<image suffix>`` with ``root/depth/<stem>.png`` (16-bit,
  millimetres: ``metres = value / 1000``, the KITTI/NYU/BTS convention DINOv3 reads) or ``root/depth/<stem>.npy``
  (float metres). 0 is a missing value. Anything malformed raises a one-line :class:`ConfigError`; nothing is
  skipped.

Every dataset yields ``(PIL RGB image, float32 depth (H, W) in metres)`` with the depth at the image's size.
Depth maps are kept in memory at that size (float32: 1.2 MB per NYUv2 frame, 1.8 GB for all 1449) next to the
``float16`` features (ViT-S/14 at ``476 × 644``: 1.2 MB per image).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from paka_hf.evaluation.features import as_size, backbone_normalization
from paka_hf.utils.errors import ConfigError, EmptyDatasetError, MissingPathError, check_choice, check_positive_int
from paka_hf.utils.imaging import is_image_file, to_rgb

#: NYUv2's frame size ``(height, width)``; the Eigen crop and the default input size are given on it.
NYU_SIZE = (480, 640)
#: The Eigen crop ``(top, bottom, left, right)`` on a ``480 × 640`` frame, end-exclusive (rows 45–470, columns
#: 41–600): the region NYUv2 depth is scored on (Eigen et al. 2014; DINOv3's ``NYU_EIGEN`` mask, Probe3D's
#: ``nyu_crop``).
EIGEN_CROP = (45, 471, 41, 601)
#: The evaluation crops: ``eigen`` (:data:`EIGEN_CROP`, scaled to the label size) or ``none`` (the whole label).
CROPS = ("eigen", "none")
#: The splits of :class:`NYUv2Labeled`: the official ``train`` (795) and ``test`` (654) or ``all`` 1449 images.
NYU_SPLITS = ("train", "test", "all")
#: The keys of :data:`NYU_SPLITS` in ``splits.mat``.
NYU_SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}
#: Millimetres per metre: a 16-bit depth PNG holds millimetres.
DEPTH_PNG_SCALE = 1000.0
#: The suffixes of depth files in a :class:`FolderDepth`.
DEPTH_SUFFIXES = (".png", ".npy")
#: The additive constant of the AdaBins "linear" bin read-out (module docstring).
BIN_EPS = 0.1
#: The constant inside SigLoss's logarithms, avoiding log(0) on a zero prediction.
SIGLOSS_EPS = 1e-3

_PNG_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


class DepthDataset(Dataset):
    """Base class: ``dataset[i]`` is ``(PIL RGB image, float32 depth (H, W) in metres)``, 0 = missing.

    Subclasses set ``name``, ``split`` and ``source`` and implement ``__len__`` and ``__getitem__``.
    """

    name: str = "depth"
    split: str | None = None
    source: str = ""

    def describe(self) -> dict[str, Any]:
        """What was read, for the results JSON.

        Returns:
            ``{"name", "split", "source", "images"}``.
        """
        return {"name": self.name, "split": self.split, "source": self.source, "images": len(self)}


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise ConfigError(
            "reading NYUv2's .mat file needs h5py: pip install 'paka_hf[depth]' (or pip install h5py)"
        ) from None
    return h5py


def _indices_from_array(values: np.ndarray, where: str, num_images: int) -> np.ndarray:
    """1-based MATLAB indices (any shape) → sorted 0-based ``int64`` indices, checked."""
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        raise ConfigError(f"{where} lists no image")
    if not np.all(np.isfinite(flat.astype(np.float64))) or np.any(flat != np.round(flat)):
        raise ConfigError(f"{where} holds non-integer indices; expected 1-based image numbers")
    flat = flat.astype(np.int64)
    if flat.min() < 1 or flat.max() > num_images:
        raise ConfigError(
            f"{where} holds indices {flat.min()}..{flat.max()}, outside 1..{num_images} (1-based, as in splits.mat)"
        )
    if len(np.unique(flat)) != flat.size:
        raise ConfigError(f"{where} lists an image more than once")
    return np.sort(flat - 1)


def read_nyu_split(splits_file: str | os.PathLike, split: str, num_images: int = 1449) -> np.ndarray:
    """The 0-based indices of NYUv2's ``split`` (``train`` or ``test``) in the labelled ``.mat`` file.

    ``splits_file`` is either the official ``splits.mat`` (MATLAB v5, read with SciPy; a v7.3 copy is read with
    h5py), whose ``trainNdxs`` (795) and ``testNdxs`` (654) are 1-based column vectors, or a text file of this
    split's 1-based image numbers, one per line (``#`` comments and blank lines ignored).

    Args:
        splits_file: ``splits.mat`` or a text file.
        split: ``"train"`` or ``"test"``.
        num_images: the number of images in the ``.mat`` file (1449), to check the indices against.

    Returns:
        Sorted ``int64`` indices in ``[0, num_images)``.

    Raises:
        MissingPathError: the file does not exist.
        ConfigError: an unknown split, a ``.mat`` without the split's key, or indices that are not integers in
            ``1..num_images`` or repeat.
    """
    check_choice("split", split, tuple(NYU_SPLIT_KEYS))
    path = Path(splits_file)
    if not path.is_file():
        raise MissingPathError(f"splits file {path} does not exist (NYUv2's splits.mat, or a text file of indices)")
    key = NYU_SPLIT_KEYS[split]
    if path.suffix.lower() == ".mat":
        import scipy.io

        try:
            contents = scipy.io.loadmat(path)
        except NotImplementedError:  # a MATLAB v7.3 file: HDF5
            with _import_h5py().File(path, "r") as handle:
                contents = {
                    name: np.asarray(handle[name]) for name in handle.keys() if name in NYU_SPLIT_KEYS.values()
                }
        except ValueError as err:
            raise ConfigError(f"{path} is not a MATLAB file SciPy can read: {err}") from None
        if key not in contents:
            found = sorted(k for k in contents if not k.startswith("__"))
            raise ConfigError(f"{path} has no {key!r} (found {found}); NYUv2's splits.mat has trainNdxs and testNdxs")
        return _indices_from_array(contents[key], f"{path}:{key}", num_images)
    lines = [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    try:
        values = np.array([int(line) for line in lines if line], dtype=np.int64)
    except ValueError:
        raise ConfigError(f"{path}: every line must be one 1-based image number") from None
    return _indices_from_array(values, str(path), num_images)


class NYUv2Labeled(DepthDataset):
    """NYU Depth V2's labelled set, read from ``nyu_depth_v2_labeled.mat`` (layout in the module docstring).

    Images are read lazily, one at a time (the file is 2.8 GB); each process (DataLoader worker) opens the file
    itself.

    Args:
        path: ``nyu_depth_v2_labeled.mat``.
        split: ``"train"`` (795), ``"test"`` (654) or ``"all"`` (1449); ``train``/``test`` need ``splits_file``.
        splits_file: the official ``splits.mat``, or a text file of this split's 1-based indices
            (:func:`read_nyu_split`).
        depth_key: ``"rawDepths"`` (the sensor's depth, 0 where missing; what the references score) or
            ``"depths"`` (in-painted).

    Raises:
        MissingPathError: the ``.mat`` or splits file does not exist.
        ConfigError: h5py is missing, the file is not HDF5 or lacks ``images`` / ``depth_key``, their shapes or
            dtypes are not NYUv2's layout, a train/test split without ``splits_file``, or a bad splits file.

    Example::

        test = NYUv2Labeled("data/nyu_depth_v2_labeled.mat", "test", splits_file="data/splits.mat")
        image, depth = test[0]  # PIL 640 x 480, float32 (480, 640) metres
    """

    name = "NYUv2"

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "test",
        *,
        splits_file: str | os.PathLike | None = None,
        depth_key: str = "rawDepths",
    ):
        check_choice("split", split, NYU_SPLITS)
        self.path = Path(path)
        self.split, self.source, self.depth_key = split, str(self.path), depth_key
        if not self.path.is_file():
            raise MissingPathError(f"{self.path} does not exist; NYUv2's labelled set is nyu_depth_v2_labeled.mat")
        h5py = _import_h5py()
        try:
            handle = h5py.File(self.path, "r")
        except OSError:
            raise ConfigError(
                f"{self.path} is not a MATLAB v7.3 (HDF5) file; NYUv2's labelled set is nyu_depth_v2_labeled.mat"
            ) from None
        with handle:
            for key in ("images", depth_key):
                if key not in handle:
                    raise ConfigError(f"{self.path} has no dataset {key!r} (found {sorted(handle.keys())})")
            images, depths = handle["images"], handle[depth_key]
            if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
                raise ConfigError(
                    f"{self.path}: 'images' is {images.dtype} {images.shape}; expected uint8 (N, 3, W, H) as h5py "
                    "reads MATLAB's H x W x 3 x N"
                )
            if depths.ndim != 3 or not np.issubdtype(depths.dtype, np.floating):
                raise ConfigError(
                    f"{self.path}: {depth_key!r} is {depths.dtype} {depths.shape}; expected float metres (N, W, H)"
                )
            if depths.shape != (images.shape[0], *images.shape[2:]):
                raise ConfigError(
                    f"{self.path}: {depth_key!r} {depths.shape} does not match 'images' {images.shape} "
                    f"(expected {(images.shape[0], *images.shape[2:])})"
                )
            self.num_images = int(images.shape[0])
            self.image_size = (int(images.shape[3]), int(images.shape[2]))  # (H, W)
        if split == "all":
            self.indices = np.arange(self.num_images)
        elif splits_file is None:
            raise ConfigError(
                f"NYUv2's {split!r} split needs splits_file= (splits.mat from the NYU Depth V2 page: trainNdxs 795, "
                "testNdxs 654), or split='all'"
            )
        else:
            self.indices = read_nyu_split(splits_file, split, self.num_images)
        self._handle: Any = None
        self._pid: int | None = None

    def _file(self):
        if self._handle is None or self._pid != os.getpid():  # a forked worker opens its own handle
            self._handle = _import_h5py().File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": None}  # an open HDF5 handle does not pickle

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        handle = self._file()
        i = int(self.indices[index])
        image = np.ascontiguousarray(handle["images"][i].transpose(2, 1, 0))  # (3, W, H) → (H, W, 3)
        depth = np.ascontiguousarray(handle[self.depth_key][i].T, dtype=np.float32)  # (W, H) → (H, W)
        return Image.fromarray(image), depth


def read_depth_file(path: str | os.PathLike) -> np.ndarray:
    """A depth map in metres: a 16-bit PNG of millimetres, or a ``.npy`` of float metres (0 = missing).

    Args:
        path: a ``.png`` or ``.npy`` file.

    Returns:
        ``float32`` ``(H, W)`` metres.

    Raises:
        ConfigError: another suffix, a PNG that is not 16-bit single-channel, an ``.npy`` that is not a 2-D float
            array, or negative / non-finite values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        with Image.open(path) as image:
            mode = image.mode
            values = np.asarray(image)
        if mode not in _PNG_16BIT_MODES or (
            mode == "I" and values.size and (values.min() < 0 or values.max() > 65535)
        ):
            raise ConfigError(
                f"depth PNG {path} is mode {mode}; depth PNGs must be 16-bit single-channel millimetres "
                "(or save float metres as .npy)"
            )
        return values.astype(np.float32) / DEPTH_PNG_SCALE
    if suffix == ".npy":
        values = np.load(path, allow_pickle=False)
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
            raise ConfigError(
                f"depth file {path} is {values.dtype} {values.shape}; .npy depth must be a 2-D float array of metres "
                "(integer millimetres go in a 16-bit PNG)"
            )
        values = values.astype(np.float32)
        if not np.all(np.isfinite(values)) or (values.size and values.min() < 0):
            raise ConfigError(f"depth file {path} has negative, NaN or infinite values; write 0 for a missing depth")
        return values
    raise ConfigError(f"depth file {path}: depth maps must be 16-bit .png (millimetres) or .npy (float metres)")


def _stems(folder: Path, keep, what: str) -> dict[str, Path]:
    stems: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not keep(path):
            raise ConfigError(f"{path} is not {what}; remove it from {folder}")
        if path.stem in stems:
            raise ConfigError(f"{stems[path.stem].name} and {path.name} in {folder} share the stem {path.stem!r}")
        stems[path.stem] = path
    return stems


def _missing(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return f"{shown} and {len(names) - 3} more" if len(names) > 3 else shown


class FolderDepth(DepthDataset):
    """Images with their depth maps: ``<root>[/<split>]/images/<stem>.<image>`` and ``.../depth/<stem>.{png,npy}``.

    Pairs are matched by stem and sorted by it; depth formats are :func:`read_depth_file`'s. Files are listed
    when the dataset is built (a missing counterpart, a stem used twice or a file that is neither raises) and
    each pair is checked when read (its depth's size must be the image's).

    Args:
        root: the folder holding ``images/`` and ``depth/`` (or holding ``<split>/images`` and ``<split>/depth``).
        split: a sub-folder of ``root`` (``"train"``, ``"test"``...); None reads ``root`` itself.

    Raises:
        MissingPathError: ``images/`` or ``depth/`` is missing.
        EmptyDatasetError: no images.
        ConfigError: an image without a depth map or a depth map without an image, two files with one stem, or a
            file of another kind in either folder.

    Example::

        test = FolderDepth("data/nyu_folder", "test")
        image, depth = test[0]
    """

    name = "folder"

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        self.root = Path(root)
        base = self.root / split if split else self.root
        self.split, self.source = split, str(base)
        image_dir, depth_dir = base / "images", base / "depth"
        for folder in (image_dir, depth_dir):
            if not folder.is_dir():
                raise MissingPathError(
                    f"{folder} not found; a depth folder holds images/ and depth/ with the same stems"
                )
        images = _stems(image_dir, is_image_file, "an image")
        depths = _stems(depth_dir, lambda p: p.suffix.lower() in DEPTH_SUFFIXES, "a depth map (.png or .npy)")
        if not images:
            raise EmptyDatasetError(f"no images in {image_dir}")
        no_depth = sorted(set(images) - set(depths))
        if no_depth:
            raise ConfigError(
                f"{len(no_depth)} image(s) in {image_dir} have no depth map in {depth_dir}: {_missing(no_depth)}"
            )
        no_image = sorted(set(depths) - set(images))
        if no_image:
            raise ConfigError(
                f"{len(no_image)} depth map(s) in {depth_dir} have no image in {image_dir}: {_missing(no_image)}"
            )
        self.items = [(images[stem], depths[stem]) for stem in sorted(images)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image_path, depth_path = self.items[index]
        with Image.open(image_path) as raw:
            image = to_rgb(raw)
            image.load()
        depth = read_depth_file(depth_path)
        if depth.shape != (image.height, image.width):
            raise ConfigError(
                f"depth map {depth_path} is {depth.shape[1]}x{depth.shape[0]} but its image {image_path.name} is "
                f"{image.width}x{image.height}; depth maps must have their image's size"
            )
        return image, depth


def load_depth_dataset(
    source: str | os.PathLike,
    split: str | None,
    *,
    splits_file: str | os.PathLike | None = None,
    depth_key: str = "rawDepths",
) -> DepthDataset:
    """A ``.mat`` file is NYUv2's labelled set (:class:`NYUv2Labeled`); a folder is a :class:`FolderDepth`.

    Args:
        source: ``nyu_depth_v2_labeled.mat`` or a folder.
        split: the split (NYUv2: ``train``/``test``/``all``; a folder: its sub-folder, or None).
        splits_file: NYUv2's ``splits.mat`` (or a text file of indices).
        depth_key: NYUv2's depth dataset (``rawDepths`` or ``depths``).

    Returns:
        The dataset.

    Raises:
        MissingPathError: ``source`` does not exist.
        ConfigError: as the dataset classes.
    """
    path = Path(source)
    if path.suffix.lower() == ".mat":
        return NYUv2Labeled(path, split or "test", splits_file=splits_file, depth_key=depth_key)
    if not path.exists():
        raise MissingPathError(
            f"{path} does not exist; pass nyu_depth_v2_labeled.mat or a folder with images/ and depth/"
        )
    return FolderDepth(path, split)


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


def depth_input_size(patch_size: int, input_size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """The ``(height, width)`` images are resized to: ``input_size`` (multiples of the patch size), or for
    None NYUv2's ``480 × 640`` with each side rounded to the nearest multiple of ``patch_size``.

    Args:
        patch_size: the backbone's patch side.
        input_size: a side, ``(height, width)``, or None.

    Returns:
        ``(height, width)``.

    Raises:
        ConfigError: a side that is not a positive multiple of ``patch_size``.
    """
    if input_size is None:
        return tuple(max(patch_size, round(side / patch_size) * patch_size) for side in NYU_SIZE)  # type: ignore[return-value]
    size = as_size(input_size)
    for side in size:
        if side < patch_size or side % patch_size:
            suggestion = max(patch_size, round(side / patch_size) * patch_size)
            raise ConfigError(
                f"input_size {size} is not a multiple of the patch size {patch_size}; use for example {suggestion}"
            )
    return size


@dataclass
class DepthFeatures:
    """Frozen features of a depth dataset with its labels at their own resolution.

    Args:
        features: ``(N, D, h, w)`` patch grids.
        depths: ``N`` float32 tensors ``(H_i, W_i)`` in metres (0 = missing), each at its image's size.
        patch_size: ``p``.
        cls: ``(N, D)`` CLS tokens, or None.
        input_size: the ``(height, width)`` the images were resized to.

    Raises:
        ValueError: the shapes are not as above or do not match.
    """

    features: torch.Tensor
    depths: list[torch.Tensor]
    patch_size: int
    cls: torch.Tensor | None = None
    input_size: tuple[int, int] | None = None

    def __post_init__(self):
        n = self.features.shape[0]
        if self.features.ndim != 4 or len(self.depths) != n:
            raise ValueError(
                f"features must be (N, D, h, w) with N depth maps; got {tuple(self.features.shape)} and "
                f"{len(self.depths)} maps"
            )
        if any(d.ndim != 2 for d in self.depths):
            raise ValueError("every depth map must be (H, W)")
        if self.cls is not None and tuple(self.cls.shape) != (n, self.features.shape[1]):
            raise ValueError(f"cls must be (N, D) = {(n, self.features.shape[1])}, got {tuple(self.cls.shape)}")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid ``(h, w)``."""
        return tuple(self.features.shape[-2:])  # type: ignore[return-value]


class _ImageAndDepth(Dataset):
    def __init__(self, dataset: Dataset, transform: v2.Transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, depth = self.dataset[index]
        pixels = self.transform(v2.functional.pil_to_tensor(image))
        return pixels, torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))


def _collate(batch):
    return torch.stack([pixels for pixels, _ in batch]), [depth for _, depth in batch]


def _cls_and_grid(backbone: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(CLS (B, D), grid (B, D, h, w))`` from one forward pass of a :class:`PatchBackbone`."""
    hidden = backbone.tokens(pixels)  # (B, prefix + h·w, D), after the final norm
    batch, _, height, width = pixels.shape
    h, w = height // backbone.patch_size, width // backbone.patch_size
    patches = hidden[:, backbone.num_prefix_tokens :]
    return hidden[:, 0], patches.transpose(1, 2).reshape(batch, hidden.shape[-1], h, w)


@torch.inference_mode()
def extract_depth_features(
    backbone: nn.Module,
    dataset: Dataset,
    *,
    input_size: int | Sequence[int] | None = None,
    use_cls_token: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 16,
    max_images: int | None = None,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    feature_dtype: torch.dtype = torch.float16,
    desc: str = "depth features",
    progress: bool = True,
) -> DepthFeatures:
    """Run a frozen patch backbone over a depth dataset; keep the grids (and CLS tokens) and the depth maps.

    Each image is resized whole (bilinear, antialiased) to :func:`depth_input_size` and normalised with
    ``mean``/``std`` (the backbone's ``image_mean``/``image_std`` by default); depth maps are kept as read.

    Args:
        backbone: ``backbone(pixels)`` → ``(B, D, h, w)`` with ``patch_size``; with ``use_cls_token`` a
            :class:`~paka_hf.modeling.backbones.PatchBackbone` of a family with a CLS token.
        dataset: items ``(PIL image, float32 depth (H, W))``.
        input_size: as :func:`depth_input_size`.
        use_cls_token: keep each image's CLS token as well.
        mean: the normalization mean; None for the backbone's.
        std: the normalization std; None for the backbone's.
        batch_size: images per forward pass.
        max_images: keep the first images only; None for all.
        num_workers: DataLoader workers.
        device: where the backbone runs.
        feature_dtype: the dtype features are kept in, on the CPU.
        desc: the progress bar's label.
        progress: show a progress bar.

    Returns:
        The :class:`DepthFeatures`, on the CPU.

    Raises:
        ConfigError: a bad ``input_size``, ``use_cls_token`` for a backbone without a CLS token.
        EmptyDatasetError: no images.
        ValueError: a backbone without normalization and no ``mean``/``std``.
    """
    patch = int(backbone.patch_size)
    size = depth_input_size(patch, input_size)
    if use_cls_token and (not hasattr(backbone, "tokens") or getattr(backbone, "num_prefix_tokens", 0) < 1):
        raise ConfigError(f"use_cls_token needs a backbone with a CLS token; {type(backbone).__name__} has none")
    view = Subset(dataset, range(min(int(max_images), len(dataset)))) if max_images is not None else dataset
    if len(view) == 0:
        raise EmptyDatasetError("the depth dataset is empty; nothing to extract")
    if mean is None or std is None:
        default_mean, default_std = backbone_normalization(backbone)
        mean, std = mean or default_mean, std or default_std
    transform = v2.Compose(
        [
            v2.Resize(size, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
    loader = DataLoader(
        _ImageAndDepth(view, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    was_training = backbone.training
    backbone.eval()
    grids, tokens, depths = [], [], []
    with tqdm(total=len(view), desc=desc, unit="img", disable=not progress) as bar:
        for pixels, batch_depths in loader:
            pixels = pixels.to(device)
            if use_cls_token:
                cls, grid = _cls_and_grid(backbone, pixels)
                tokens.append(cls.to("cpu", feature_dtype))
            else:
                grid = backbone(pixels)
            grids.append(grid.to("cpu", feature_dtype))
            depths.extend(batch_depths)
            bar.update(pixels.shape[0])
    backbone.train(was_training)
    return DepthFeatures(torch.cat(grids), depths, patch, torch.cat(tokens) if use_cls_token else None, size)


# --------------------------------------------------------------------------------------------
# masks, loss and metrics
# --------------------------------------------------------------------------------------------


def valid_depth_mask(
    depth: torch.Tensor, min_depth: float = 0.001, max_depth: float = 10.0, crop: str = "eigen"
) -> torch.Tensor:
    """Pixels that count: ``min_depth < d < max_depth`` and, with ``crop="eigen"``, inside :data:`EIGEN_CROP`
    scaled to the map's size (``int(45 / 480 · H)`` ... as DINOv3's ``make_valid_mask``).

    Args:
        depth: ``(..., H, W)`` metres (0 = missing).
        min_depth: the lower bound (exclusive).
        max_depth: the upper bound (exclusive).
        crop: ``"eigen"`` or ``"none"``.

    Returns:
        A bool tensor of ``depth``'s shape.

    Raises:
        ConfigError: an unknown ``crop``.
    """
    check_choice("crop", crop, CROPS)
    valid = (depth > min_depth) & (depth < max_depth)
    if crop == "eigen":
        height, width = depth.shape[-2:]
        top, bottom, left, right = EIGEN_CROP
        region = torch.zeros((height, width), dtype=torch.bool, device=depth.device)
        region[
            int(top / NYU_SIZE[0] * height) : int(bottom / NYU_SIZE[0] * height),
            int(left / NYU_SIZE[1] * width) : int(right / NYU_SIZE[1] * width),
        ] = True
        valid &= region
    return valid


def sig_loss(log_ratio: torch.Tensor, variance_weight: float = 0.85, mean_only: bool = False) -> torch.Tensor:
    r"""SigLoss of the log ratios ``g`` of the valid pixels: :math:`\sqrt{\overline{g^2} - \lambda \bar g^2}`.

    Args:
        log_ratio: ``g = log(pred + ε) − log(target + ε)`` of every valid pixel, 1-D.
        variance_weight: :math:`\lambda` (0.85).
        mean_only: only :math:`(1 - \lambda)\bar g^2` (the warm-up form).

    Returns:
        The 0-dim loss.
    """
    mean = log_ratio.mean()
    if mean_only:
        value = (1.0 - variance_weight) * mean.square()
    else:
        value = log_ratio.square().mean() - variance_weight * mean.square()
    return value.clamp_min(1e-12).sqrt()  # clamp: round-off can make it a hair negative; sqrt'(0) is infinite


@dataclass
class DepthScores:
    """Depth metrics averaged over images (module docstring).

    Args:
        rmse: root mean squared error, metres (lower is better).
        abs_rel: mean absolute relative error (lower is better).
        delta1: percent of pixels with ``max(d/d̂, d̂/d) < 1.25`` (higher is better).
        delta2: the same below ``1.25²``.
        delta3: the same below ``1.25³``.
        images: the images averaged over.
        images_without_valid_depth: images left out because no pixel was valid.
    """

    rmse: float
    abs_rel: float
    delta1: float
    delta2: float
    delta3: float
    images: int
    images_without_valid_depth: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The scores as a plain dict.

        Returns:
            ``{field: value}``.
        """
        return asdict(self)


def image_depth_metrics(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> dict[str, float] | None:
    """RMSE, AbsRel and δ₁₋₃ (in percent) of one image over its ``valid`` pixels; None when none is valid.

    Args:
        pred: ``(H, W)`` predicted metres (positive where valid).
        target: ``(H, W)`` true metres.
        valid: ``(H, W)`` bool.

    Returns:
        ``{"rmse", "abs_rel", "delta1", "delta2", "delta3"}`` or None.
    """
    if not bool(valid.any()):
        return None
    d, p = target[valid].double(), pred[valid].double()
    ratio = torch.maximum(d / p, p / d)
    scores = {"rmse": float((d - p).square().mean().sqrt()), "abs_rel": float(((d - p).abs() / d).mean())}
    for k in (1, 2, 3):
        scores[f"delta{k}"] = 100.0 * float((ratio < 1.25**k).double().mean())
    return scores


def average_depth_metrics(per_image: Sequence[dict[str, float] | None]) -> DepthScores:
    """The mean of :func:`image_depth_metrics` over the images that have one.

    Args:
        per_image: one entry per image (None: no valid pixel).

    Returns:
        The :class:`DepthScores` (NaN metrics when no image has a valid pixel).
    """
    scored = [s for s in per_image if s is not None]
    keys = ("rmse", "abs_rel", "delta1", "delta2", "delta3")
    means = {k: float(np.mean([s[k] for s in scored])) if scored else math.nan for k in keys}
    return DepthScores(**means, images=len(scored), images_without_valid_depth=len(per_image) - len(scored))


# --------------------------------------------------------------------------------------------
# the probe
# --------------------------------------------------------------------------------------------


@dataclass
class DepthProbeConfig:
    """Settings of the linear depth probe (module docstring; defaults from DINOv3's NYU linear config).

    Args:
        input_size: the side or ``(height, width)`` images are resized to; None for NYUv2's 480 × 640 rounded to
            patch multiples.
        use_cls_token: concatenate the CLS token to every patch token (DINOv3's NYU config: off).
        num_bins: depth bins (256, both references); 1 for a regression (``relu(l) + min_depth``).
        min_depth: the smallest depth predicted and scored, metres (0.001).
        max_depth: the largest depth predicted and scored, metres (10, NYUv2's range).
        crop: ``"eigen"`` (score and train inside NYUv2's Eigen crop) or ``"none"`` (the whole map).
        epochs: passes over the training images.
        batch_size: images per step (DINOv3: 2 × 8 GPUs).
        lr: AdamW's peak learning rate.
        betas: AdamW's betas.
        weight_decay: AdamW's weight decay.
        warmup_fraction: the fraction of the steps the learning rate warms up linearly over; cosine to 0 after.
        grad_clip: the gradients' norm limit.
        variance_weight: SigLoss's :math:`\\lambda`.
        sigloss_warmup_steps: the first steps use only SigLoss's mean term (DINOv3: 100).
        seed: the seed of the head's init and the batch order.
        device: where the head trains; None for the CPU.

    Example::

        DepthProbeConfig(epochs=10, use_cls_token=True)
    """

    input_size: int | tuple[int, int] | None = None
    use_cls_token: bool = False
    num_bins: int = 256
    min_depth: float = 0.001
    max_depth: float = 10.0
    crop: str = "eigen"
    epochs: int = 50
    batch_size: int = 16
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    warmup_fraction: float = 1 / 3
    grad_clip: float = 35.0
    variance_weight: float = 0.85
    sigloss_warmup_steps: int = 100
    seed: int = 0
    device: str | None = None

    def __post_init__(self):
        check_choice("crop", self.crop, CROPS)
        check_positive_int("num_bins", self.num_bins)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        if not 0 <= self.min_depth < self.max_depth:
            raise ConfigError(f"need 0 <= min_depth < max_depth, got {self.min_depth} and {self.max_depth}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for the results JSON).

        Returns:
            ``{field: value}``.
        """
        return asdict(self)


class DepthHead(nn.Module):
    """Standardisation, a ``1 × 1`` conv to ``num_bins`` logits (plus a linear map of the CLS token), and the
    bin read-out (module docstring): ``(B, D, h, w)`` [, ``(B, D)``] → depth ``(B, 1, h, w)`` in metres.

    ``W [f; c] = W_f f + W_c c``: concatenating the CLS token to every patch token is a conv of the patches plus
    the same linear map of the CLS token at every position, computed once per image.

    Args:
        dim: the feature width ``D``.
        num_bins: ``K``.
        min_depth: the first bin (and the regression's offset).
        max_depth: the last bin.
        use_cls_token: take CLS tokens as well.
    """

    def __init__(self, dim: int, num_bins: int, min_depth: float, max_depth: float, use_cls_token: bool = False):
        super().__init__()
        self.min_depth, self.max_depth, self.use_cls_token = float(min_depth), float(max_depth), use_cls_token
        self.conv = nn.Conv2d(dim, num_bins, kernel_size=1)
        self.cls_linear = nn.Linear(dim, num_bins, bias=False) if use_cls_token else None
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.register_buffer("cls_mean", torch.zeros(dim))
        self.register_buffer("cls_std", torch.ones(dim))
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, num_bins))

    def forward(self, features: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        """Depth on the patch grid.

        Args:
            features: ``(B, D, h, w)``.
            cls: ``(B, D)`` with ``use_cls_token``.

        Returns:
            ``(B, 1, h, w)`` metres.
        """
        x = (features - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]
        logits = self.conv(x)
        if self.cls_linear is not None:
            logits = logits + self.cls_linear((cls - self.cls_mean) / self.cls_std)[:, :, None, None]
        if logits.shape[1] == 1:
            return F.relu(logits) + self.min_depth
        weights = F.relu(logits) + BIN_EPS
        weights = weights / weights.sum(dim=1, keepdim=True)
        return torch.einsum("bkhw,k->bhw", weights, self.bins)[:, None]


def _channel_stats(values: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (float64 sums, in chunks) of ``values`` whose channel axis is ``dim``."""
    channels = values.shape[dim]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for chunk in values.split(64):
        flat = chunk.movedim(dim, -1).reshape(-1, channels).double()
        total += flat.sum(0)
        squares += flat.square().sum(0)
        count += flat.shape[0]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.clamp_min(1e-6).float()  # a constant channel is left unscaled, not divided by 0


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _upsampled(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(depth[None], size=size, mode="bilinear", align_corners=False)[0, 0]


def train_depth_probe(
    train: DepthFeatures, config: DepthProbeConfig | None = None, *, progress: bool = True
) -> DepthHead:
    """Fit the :class:`DepthHead` on frozen ``train`` features (module docstring).

    Args:
        train: the training features and depth maps.
        config: the settings; None for the defaults.
        progress: show a progress bar (steps, with the running loss).

    Returns:
        The trained head, in eval mode, on ``config.device``.

    Raises:
        ConfigError: ``use_cls_token`` without CLS tokens in ``train``, or no valid training pixel.
    """
    cfg = config or DepthProbeConfig()
    if cfg.use_cls_token and train.cls is None:
        raise ConfigError("use_cls_token needs features extracted with use_cls_token=True")
    device = torch.device(cfg.device or "cpu")
    generator = torch.Generator().manual_seed(cfg.seed)
    head = DepthHead(train.features.shape[1], cfg.num_bins, cfg.min_depth, cfg.max_depth, cfg.use_cls_token)
    nn.init.normal_(head.conv.weight, std=0.01, generator=generator)  # DINOv3's init
    # a regression starts mid-range: at 0 its relu would start half dead (DINOv3 starts it at 0)
    nn.init.constant_(head.conv.bias, 0.0 if cfg.num_bins > 1 else (cfg.max_depth - cfg.min_depth) / 2)
    if head.cls_linear is not None:
        nn.init.normal_(head.cls_linear.weight, std=0.01, generator=generator)
        head.cls_mean, head.cls_std = _channel_stats(train.cls, 1)
    head.feature_mean, head.feature_std = _channel_stats(train.features, 1)
    head.to(device)
    masks = [valid_depth_mask(d, cfg.min_depth, cfg.max_depth, cfg.crop) for d in train.depths]
    if not any(bool(m.any()) for m in masks):
        raise ConfigError(
            f"no training pixel has a depth in ({cfg.min_depth}, {cfg.max_depth}) m inside crop={cfg.crop!r}; check the "
            "depth units (PNG millimetres, .npy metres) and max_depth"
        )
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    n = len(train)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * per_epoch
    warmup = int(cfg.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, total, warmup))
    head.train()
    step = 0
    with tqdm(total=total, desc="depth probe", unit="step", disable=not progress) as bar:
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                feats = train.features[idx].to(device).float()
                cls = train.cls[idx].to(device).float() if cfg.use_cls_token else None
                coarse = head(feats, cls)
                ratios = []
                for row, i in enumerate(idx.tolist()):
                    target, valid = train.depths[i].to(device), masks[i].to(device)
                    if not bool(valid.any()):
                        continue
                    pred = _upsampled(coarse[row], tuple(target.shape))
                    ratios.append(torch.log(pred[valid] + SIGLOSS_EPS) - torch.log(target[valid] + SIGLOSS_EPS))
                step += 1
                bar.update(1)
                if not ratios:  # every image of this batch lacks valid depth: nothing to learn from
                    scheduler.step()
                    continue
                loss = sig_loss(torch.cat(ratios), cfg.variance_weight, mean_only=step <= cfg.sigloss_warmup_steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return head.eval()


@torch.no_grad()
def predict_depth(
    head: DepthHead, features: DepthFeatures, *, batch_size: int = 32, clamp: bool = True
) -> list[torch.Tensor]:
    """Depth maps at each label's resolution (bilinear upsampling), clamped to the head's range.

    Args:
        head: a trained :class:`DepthHead`.
        features: the features (and the depth maps whose sizes the predictions take).
        batch_size: maps per forward pass.
        clamp: clamp to ``[min_depth, max_depth]`` (as scored).

    Returns:
        ``N`` float32 ``(H_i, W_i)`` tensors in metres, on the CPU.
    """
    device = head.bins.device
    out = []
    for start in range(0, len(features), batch_size):
        feats = features.features[start : start + batch_size].to(device).float()
        cls = features.cls[start : start + batch_size].to(device).float() if head.use_cls_token else None
        coarse = head(feats, cls)
        for row in range(coarse.shape[0]):
            pred = _upsampled(coarse[row], tuple(features.depths[start + row].shape))
            out.append((pred.clamp(head.min_depth, head.max_depth) if clamp else pred).cpu())
    return out


def evaluate_depth_probe(head: DepthHead, test: DepthFeatures, config: DepthProbeConfig | None = None) -> DepthScores:
    """Score the head on ``test`` (clamped predictions, :func:`valid_depth_mask`, per-image metrics averaged).

    Args:
        head: a trained :class:`DepthHead`.
        test: the features and depth maps to score.
        config: the settings (range and crop); None for the defaults.

    Returns:
        The :class:`DepthScores`.

    Raises:
        ConfigError: ``use_cls_token`` without CLS tokens in ``test``.
    """
    cfg = config or DepthProbeConfig()
    if head.use_cls_token and test.cls is None:
        raise ConfigError("the head reads CLS tokens; extract the test features with use_cls_token=True")
    preds = predict_depth(head, test)
    per_image = [
        image_depth_metrics(pred, target, valid_depth_mask(target, cfg.min_depth, cfg.max_depth, cfg.crop))
        for pred, target in zip(preds, test.depths)
    ]
    return average_depth_metrics(per_image)


@dataclass
class DepthProbeResult:
    """What one depth probe run measured.

    Args:
        scores: the test metrics.
        config: the settings used (``DepthProbeConfig.to_dict()``).
        train_images: training images.
        test_images: test images (``scores.images`` of them had valid depth).
        input_size: the ``(height, width)`` the images were resized to.
        grid_size: the patch grid ``(h, w)``.
        seconds: wall time of ``extract`` (both splits, when :func:`run_depth_probe` extracted them), ``train``
            and ``evaluate``.
        datasets: the datasets' ``describe()`` (when known).
    """

    scores: DepthScores
    config: dict[str, Any]
    train_images: int
    test_images: int
    input_size: tuple[int, int] | None
    grid_size: tuple[int, int]
    seconds: dict[str, float] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready values.

        Returns:
            ``{"scores": {...}, "config": {...}, ...}``.
        """
        return asdict(self)


def depth_probe(
    train: DepthFeatures, test: DepthFeatures, config: DepthProbeConfig | None = None, *, progress: bool = True
) -> DepthProbeResult:
    """Train the head on ``train`` and score it on ``test``.

    Args:
        train: the training features and depth maps.
        test: the test features and depth maps.
        config: the settings; None for the defaults.
        progress: show a progress bar.

    Returns:
        The :class:`DepthProbeResult` (``seconds`` has ``train`` and ``evaluate``).

    Raises:
        ConfigError: the splits differ in feature width or grid, or as :func:`train_depth_probe`.

    Example::

        result = depth_probe(train_features, test_features, DepthProbeConfig(epochs=10, crop="none"))
        print(result.scores.rmse, result.scores.delta1, result.scores.abs_rel)
    """
    cfg = config or DepthProbeConfig()
    if train.features.shape[1:] != test.features.shape[1:]:
        raise ConfigError(
            f"train features {tuple(train.features.shape[1:])} and test features {tuple(test.features.shape[1:])} "
            "differ; extract both with the same backbone and input_size"
        )
    start = time.perf_counter()
    head = train_depth_probe(train, cfg, progress=progress)
    trained = time.perf_counter()
    scores = evaluate_depth_probe(head, test, cfg)
    seconds = {"train": trained - start, "evaluate": time.perf_counter() - trained}
    return DepthProbeResult(scores, cfg.to_dict(), len(train), len(test), train.input_size, train.grid_size, seconds)


def run_depth_probe(
    backbone: nn.Module,
    train_dataset: Dataset,
    test_dataset: Dataset,
    config: DepthProbeConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    max_images: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> DepthProbeResult:
    """Extract features of both splits with ``backbone``, train on ``train_dataset``, score ``test_dataset``.

    Args:
        backbone: the frozen patch backbone.
        train_dataset: training images with depth.
        test_dataset: test images with depth.
        config: the settings (``config.device`` defaults to ``device``); None for the defaults.
        device: where the backbone (and, unless ``config.device``, the head) runs.
        batch_size: images per forward pass of the backbone.
        max_images: the first images of each split only (quick runs); None for all.
        num_workers: DataLoader workers.
        progress: show progress bars.

    Returns:
        The :class:`DepthProbeResult` (``seconds`` has ``extract``, ``train`` and ``evaluate``).

    Raises:
        ConfigError: as :func:`extract_depth_features` and :func:`depth_probe`.
        EmptyDatasetError: a split with no image.

    Example::

        from paka_hf import PatchBackbone
        backbone = PatchBackbone.from_pretrained("facebook/dinov2-small")
        train = NYUv2Labeled("nyu_depth_v2_labeled.mat", "train", splits_file="splits.mat")
        test = NYUv2Labeled("nyu_depth_v2_labeled.mat", "test", splits_file="splits.mat")
        print(run_depth_probe(backbone, train, test, device="cuda").scores)
    """
    cfg = config or DepthProbeConfig()
    if cfg.device is None:
        cfg = DepthProbeConfig(**{**cfg.to_dict(), "device": str(device)})
    options = dict(
        input_size=cfg.input_size,
        use_cls_token=cfg.use_cls_token,
        batch_size=batch_size,
        max_images=max_images,
        num_workers=num_workers,
        device=device,
        progress=progress,
    )
    start = time.perf_counter()
    train = extract_depth_features(backbone, train_dataset, desc="depth features (train)", **options)
    test = extract_depth_features(backbone, test_dataset, desc="depth features (test)", **options)
    extract = time.perf_counter() - start
    result = depth_probe(train, test, cfg, progress=progress)
    result.seconds = {"extract": extract, **result.seconds}
    result.datasets = {
        split: dataset.describe()
        for split, dataset in (("train", train_dataset), ("test", test_dataset))
        if hasattr(dataset, "describe")
    }
    return result
