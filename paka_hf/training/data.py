"""Streaming image sources and the resumable stream of PaKA views.

**Sources** (:func:`load_image_source`): a Hub dataset id (``detection-datasets/coco`` by default,
streamed with ``streaming=True``), a local folder of images (``imagefolder``), a local folder or
file of parquet shards, or webdataset ``.tar`` shards. The image column is cast to
``Image(decode=False)``: we decode ourselves, because one corrupt file would otherwise end a
``datasets`` stream (docs/STACK.md).

**Stream** (:class:`PaKAViewStream`): a ``torch.utils.data.IterableDataset`` that

- splits the source between processes *and* data-loader workers with
  ``datasets.distributed.split_dataset_by_node``: stream ``s = rank · W + worker`` of
  ``world_size · W``. Whole shards go to each stream when the shard count divides the stream
  count; otherwise every stream reads all rows and keeps one in ``world_size · W`` (a warning
  says so, and how to avoid it, when those rows carry image bytes: a local folder's rows are paths);
- decodes each row (skipping and counting corrupt, truncated and empty files, and images whose header
  announces more than ``max_image_pixels``: decompression bombs are never decoded; each skipped image
  travels with the next sample, named with its reason, :func:`skipped_image_record`), converts it to RGB
  and renders its GLIM views with a generator seeded by ``(seed, epoch, stream, row)``, so a
  sample's views do not depend on timing, worker scheduling or resumption;
- runs epoch after epoch (``set_epoch`` reshuffles) until the trainer stops at ``max_steps``;
- records, in every batch, which stream produced it and how far that stream has read
  (``stream_*`` fields); the trainer checkpoints these positions and a resumed stream skips
  exactly the rows already consumed, without decoding them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from paka_hf.training.config import DATASET_FORMATS
from paka_hf.utils.errors import ConfigError, EmptyDatasetError, check_choice
from paka_hf.utils.imaging import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_SUFFIXES, to_rgb
from paka_hf.views.glim import GlimTransform, collate_views

logger = logging.getLogger(__name__)


class ImageTooLargeError(Image.DecompressionBombError):
    """An image's header announces more pixels than the configured limit; it is never decoded."""


class EmptyImageError(ValueError):
    """An image file of 0 bytes."""


DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)
STREAM_KEYS = ("stream_index", "stream_epoch", "stream_position", "num_skipped")
#: A sample's and a batch's list of the images skipped since the previous one (:func:`skipped_image_record`);
#: ``num_skipped`` is its length.
SKIPPED_IMAGES_KEY = "skipped_images"


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------


IMAGEFOLDER_METADATA = {"metadata.parquet", "metadata.csv", "metadata.jsonl"}  # datasets' imagefolder side files
_FORMAT_FILES = {"imagefolder": "images", "parquet": ".parquet shards", "webdataset": ".tar shards"}


def _local_files_by_format(folder: Path) -> dict[str, list[str]]:
    """The files under ``folder`` that each local format would read, sorted; hidden files and folders are left
    out, and so are the ``metadata.*`` files that ``datasets``' imagefolder writes beside the images."""
    found: dict[str, list[str]] = {name: [] for name in _FORMAT_FILES}
    for file in folder.rglob("*"):
        relative = file.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or not file.is_file():
            continue
        suffix = file.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            found["imagefolder"].append(str(file))
        elif suffix == ".parquet" and file.name not in IMAGEFOLDER_METADATA:
            found["parquet"].append(str(file))
        elif suffix == ".tar":
            found["webdataset"].append(str(file))
    return {name: sorted(files) for name, files in found.items()}


def _local_builder(path: Path, dataset_format: str = "auto") -> tuple[str, dict[str, Any]]:
    """The ``datasets`` builder and arguments for a local file or folder.

    A folder is read as the format most of its files have (images, ``.parquet`` or ``.tar`` shards;
    a tie goes to images, then parquet): a folder of images with a stray shard, or with the
    ``metadata.parquet`` that ``datasets``' imagefolder writes, is an image folder, and only its images
    are read. When it mixes formats a warning names what was chosen and how to choose another
    (``dataset_format``).
    """
    check_choice("dataset_format", dataset_format, DATASET_FORMATS)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return "parquet", {"data_files": {"train": str(path)}}
        if suffix == ".tar":
            return "webdataset", {"data_files": {"train": str(path)}}
        raise ConfigError(f"{path} is a file but not a .parquet or .tar shard; pass a folder of images instead")
    found = _local_files_by_format(path)
    present = {name: files for name, files in found.items() if files}
    if not present:
        raise EmptyDatasetError(f"found no images, .parquet or .tar files under {path}")
    if dataset_format == "auto":
        chosen = max(present, key=lambda name: len(present[name]))  # first of DATASET_FORMATS on a tie
        if len(present) > 1:
            counts = ", ".join(f"{len(files)} {_FORMAT_FILES[name]}" for name, files in present.items())
            others = " or ".join(f"--dataset_format {name}" for name in present if name != chosen)
            logger.warning(
                "%s holds %s; reading it as %s (%s, the most files). Pass %s to read the others instead, or point "
                "--dataset_name at a folder (or file) of one format.",
                path,
                counts,
                chosen,
                _FORMAT_FILES[chosen],
                others,
            )
    else:
        chosen = dataset_format
        if chosen not in present:
            raise EmptyDatasetError(
                f"--dataset_format {chosen}: no {_FORMAT_FILES[chosen]} under {path} "
                f"(it holds {', '.join(f'{len(f)} {_FORMAT_FILES[n]}' for n, f in present.items())})"
            )
    if chosen == "imagefolder":  # the listed images only: a stray shard or metadata file changes nothing
        return "imagefolder", {"data_files": {"train": present[chosen]}, "drop_labels": True}
    return chosen, {"data_files": {"train": present[chosen]}}


def load_image_source(
    dataset_name: str,
    dataset_config_name: str | None = None,
    split: str = "train",
    image_column: str = "image",
    streaming: bool = True,
    revision: str | None = None,
    token: str | bool | None = None,
    dataset_format: str = "auto",
):
    """Load a dataset of images and return it as a ``datasets.IterableDataset`` with one column,
    ``image``, holding undecoded ``{"bytes", "path"}`` dicts.

    ``dataset_name`` is a Hub id or a local path (folder of images, parquet or webdataset shards;
    ``dataset_format`` picks one in a folder that mixes them, see :func:`_local_builder`).
    With ``streaming=False`` the dataset is downloaded/prepared first and then iterated as a stream.

    Args:
        dataset_name: a Hub dataset id or a local path.
        dataset_config_name: the Hub dataset's configuration (ignored for a local path).
        split: the Hub dataset's split (a local path is always ``train``).
        image_column: the column holding the images (a webdataset's image extension is found when it differs).
        streaming: stream the dataset (``True``) or download and prepare it first.
        revision: the Hub dataset's revision.
        token: a Hub token; the logged-in one when ``None``.
        dataset_format: ``auto``, ``imagefolder``, ``parquet`` or ``webdataset``, for a local folder.

    Returns:
        The ``datasets.IterableDataset`` with the single ``image`` column, undecoded.

    Raises:
        ValueError: the dataset has no ``image_column`` (the message lists its columns), or webdataset shards
            have no image column.
        ConfigError: a local file that is not a ``.parquet`` or ``.tar`` shard, or a ``dataset_format`` the
            folder does not fit.
        EmptyDatasetError: a local folder holds no images or shards of the chosen format.
    """
    import datasets

    path = Path(dataset_name).expanduser()
    if path.exists():
        builder, kwargs = _local_builder(path, dataset_format)
        split = "train"
        source = datasets.load_dataset(builder, split=split, streaming=streaming, **kwargs)
        if builder == "webdataset" and image_column not in (source.column_names or []):
            image_column = _webdataset_image_column(source.column_names or [], image_column)
    else:
        source = datasets.load_dataset(
            dataset_name, dataset_config_name, split=split, streaming=streaming, revision=revision, token=token
        )
    if not streaming:
        source = source.to_iterable_dataset(num_shards=max(1, min(64, len(source))))
    columns = source.column_names
    if columns is not None and image_column not in columns:
        raise ValueError(
            f"dataset {dataset_name!r} has no column {image_column!r}; its columns are {columns}. "
            "Pass --image_column_name with the column that holds the images."
        )
    source = source.select_columns([image_column])
    if image_column != "image":
        source = source.rename_column(image_column, "image")
    return source.cast_column("image", datasets.Image(decode=False))


def _webdataset_image_column(columns: Sequence[str], requested: str) -> str:
    for name in columns:
        if name.lower() in {"jpg", "jpeg", "png", "webp"}:
            return name
    raise ValueError(f"webdataset shards have no image column ({requested!r} not in {list(columns)})")


def open_image(source: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """``Image.open`` (reads the header only) that refuses more than ``max_pixels`` pixels before any decode.

    ``max_pixels`` replaces Pillow's own ``MAX_IMAGE_PIXELS`` check (a warning at 1×, an error at 2×):
    an image above it raises :class:`ImageTooLargeError`; ``None`` or 0 means no limit. Pillow's
    global is lifted for the duration of the header read only (decoding runs in data workers and
    evaluation loops, one thread each).

    Args:
        source: a path or a binary file object.
        max_pixels: the largest image in pixels; ``None`` or 0 for no limit.

    Returns:
        The opened, not yet decoded, image.

    Raises:
        ImageTooLargeError: the header announces more than ``max_pixels`` pixels.
        PIL.UnidentifiedImageError: Pillow cannot identify the data as an image.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our limit, below, is the one that counts
    try:
        image = Image.open(source)
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    width, height = image.size
    if max_pixels and width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"image of {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(max_image_pixels); not decoded"
        )
    return image


# ---------------------------------------------------------------------------------------------
# memory of the shuffle buffers
# ---------------------------------------------------------------------------------------------

SHUFFLE_MEMORY_FRACTION = 1 / 8  # of the machine's RAM: the rest is for decoding, prefetched batches and the model
ROW_OVERHEAD_BYTES = (
    400  # Python objects of one buffered row besides its bytes: two dicts and a bytes header (tracemalloc: ~409 B)
)
SIZE_SAMPLE_ROWS = 32


def _row_bytes(value: Any) -> int:
    """Bytes one buffered row holds: its encoded image when it carries one, else its path."""
    if isinstance(value, dict):
        data = value.get("bytes")
        return ROW_OVERHEAD_BYTES + (len(data) if data else len(str(value.get("path") or "")))
    return ROW_OVERHEAD_BYTES + (len(value) if isinstance(value, (bytes, bytearray)) else len(str(value)))


def shuffle_buffer_bytes(source, shuffle_buffer_size: int, streams: int, sample_rows: int = SIZE_SAMPLE_ROWS) -> int:
    r"""Estimated memory of the shuffle buffers of ``streams`` data streams (on one machine), in bytes:

    .. math::

        M = \text{streams} \times \text{shuffle\_buffer\_size} \times \bar b

    with ``b̄`` the mean bytes per row over the source's first ``sample_rows`` rows (undecoded: the
    encoded image, ~160 KB for COCO's JPEGs; a local image folder's rows hold a path, under 1 KB).
    Each stream (process × data-loader worker) fills its own buffer of ``shuffle_buffer_size`` rows.

    Args:
        source: the image source of :func:`load_image_source`.
        shuffle_buffer_size: rows per shuffle buffer.
        streams: data streams on this machine (processes × data-loader workers).
        sample_rows: how many of the first rows to measure.

    Returns:
        The estimate :math:`M` in bytes; 0 without shuffling, streams or rows.
    """
    if shuffle_buffer_size <= 0 or streams <= 0:
        return 0
    sizes = [_row_bytes(row["image"]) for row in source.take(sample_rows)]
    return int(streams * shuffle_buffer_size * (sum(sizes) / len(sizes))) if sizes else 0


def total_memory_bytes() -> int | None:
    """Physical memory of this machine (None where the OS does not say).

    Returns:
        The memory in bytes, or ``None``.
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def warn_if_shuffle_buffers_exceed_memory(source, shuffle_buffer_size: int, streams: int) -> int:
    """Warn when the shuffle buffers of this machine's ``streams`` would take more than
    :data:`SHUFFLE_MEMORY_FRACTION` of its RAM (:func:`shuffle_buffer_bytes`); returns the estimate.

    Args:
        source: the image source of :func:`load_image_source`.
        shuffle_buffer_size: rows per shuffle buffer.
        streams: data streams on this machine (processes × data-loader workers).

    Returns:
        The estimate in bytes (the warning names a ``shuffle_buffer_size`` that fits).
    """
    estimate = shuffle_buffer_bytes(source, shuffle_buffer_size, streams)
    memory = total_memory_bytes()
    if memory and estimate > SHUFFLE_MEMORY_FRACTION * memory:
        suggestion = max(1, int(SHUFFLE_MEMORY_FRACTION * memory / max(estimate / shuffle_buffer_size, 1)))
        logger.warning(
            "the shuffle buffers would hold about %.1f GiB (%d streams = processes x dataloader workers on this machine, "
            "x shuffle_buffer_size %d rows x %.0f KiB per row), more than 1/%d of this machine's %.0f GiB of RAM. "
            "Lower shuffle_buffer_size (e.g. to %d) or dataloader_num_workers.",
            estimate / 2**30,
            streams,
            shuffle_buffer_size,
            estimate / streams / shuffle_buffer_size / 1024,
            round(1 / SHUFFLE_MEMORY_FRACTION),
            memory / 2**30,
            suggestion,
        )
    return estimate


def decode_image(value: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode one undecoded ``datasets`` image value (``{"bytes", "path"}``, raw bytes or a path).

    The header's size is checked against ``max_pixels`` first (:func:`open_image`), so a
    decompression bomb is refused without being decoded. Forces the full decode (``Image.load``)
    so truncated files fail here, not later. Raises one of :data:`DECODE_ERRORS` for unreadable data.

    Args:
        value: the image value.
        max_pixels: the largest image in pixels; ``None`` or 0 for no limit.

    Returns:
        The decoded image, in its own mode.

    Raises:
        EmptyImageError: the file or bytes are empty.
        ImageTooLargeError: the header announces more than ``max_pixels`` pixels.
        ValueError: a dict value holds neither bytes nor a path.
        OSError: Pillow cannot identify or decode the data (``UnidentifiedImageError``, a truncated file).
    """
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, path = bytes(value), None
    else:
        data, path = None, value
    if data is not None:
        if len(data) == 0:
            raise EmptyImageError("empty image file (0 bytes)")
        image = open_image(io.BytesIO(data), max_pixels)
    elif path:
        if os.path.getsize(path) == 0:
            raise EmptyImageError(f"empty image file (0 bytes): {path}")
        image = open_image(path, max_pixels)
    else:
        raise ValueError("image value holds neither bytes nor a path")
    image.load()
    return image


def _raw_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path:
            with open(path, "rb") as handle:
                data = handle.read()
        return data
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as handle:
            return handle.read()
    return None


def decode_rgb_pixels(value: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one image value to an upright RGB ``(H, W, 3)`` uint8 array (what the device rendering ships).

    Colour JPEGs go straight through libjpeg-turbo (``torchvision.io.decode_jpeg``, EXIF orientation
    applied): the pixels Pillow decodes, without building a Pillow image and converting it to an
    array (about a third of the data workers' time with ``view_rendering: device``). Everything
    else — grayscale and CMYK JPEGs, other formats, anything libjpeg refuses — takes the Pillow path
    (:func:`decode_image` + :func:`~paka_hf.utils.imaging.to_rgb`), which raises :data:`DECODE_ERRORS`
    for unreadable data. Both paths refuse an image above ``max_pixels`` from its header, before decoding.

    Args:
        value: the image value (``{"bytes", "path"}``, raw bytes or a path).
        max_pixels: the largest image in pixels; ``None`` or 0 for no limit.

    Returns:
        The ``(H, W, 3)`` uint8 pixels.

    Raises:
        ImageTooLargeError: the header announces more than ``max_pixels`` pixels.
        EmptyImageError: the file or bytes are empty.
        OSError: the data cannot be identified or decoded; this and the others are all :data:`DECODE_ERRORS`.
    """
    try:
        data = _raw_bytes(value)
    except OSError:
        data = None
    if data and data[:3] == b"\xff\xd8\xff":
        open_image(io.BytesIO(data), max_pixels).close()  # the JPEG header's size, before libjpeg allocates it
        try:
            with (
                warnings.catch_warnings()
            ):  # torchvision 0.29 deprecates its decoders for torchcodec's; they still work
                warnings.simplefilter("ignore", DeprecationWarning)
                from torchvision.io import decode_jpeg

            pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), apply_exif_orientation=True)
            if pixels.shape[0] == 3:
                return pixels.permute(1, 2, 0).numpy()  # decode_jpeg's storage is (H, W, 3): no copy
        except (RuntimeError, ImportError):  # truncated or exotic JPEGs: Pillow decides (and names the error)
            pass
    return np.asarray(to_rgb(decode_image(value, max_pixels)))


def image_key(value: Any) -> str:
    """A short identity for an image value: its path when it has one, else a hash of its bytes.

    Args:
        value: the image value (``{"bytes", "path"}``, raw bytes or a path).

    Returns:
        The path, or the SHA-1 hex digest of the bytes.
    """
    import hashlib

    if isinstance(value, dict):
        if value.get("path"):
            return str(value["path"])
        value = value.get("bytes") or b""
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha1(value).hexdigest()
    return str(value)


# ---------------------------------------------------------------------------------------------
# skipped images
# ---------------------------------------------------------------------------------------------


def skip_reason(error: BaseException) -> str:
    """Why an image was skipped, in a few words, from the error its decode raised (one of :data:`DECODE_ERRORS`).

    Args:
        error: the exception.

    Returns:
        ``"too many pixels"`` (its header announces more than ``max_image_pixels``), ``"empty file"``,
        ``"unknown format"`` (Pillow cannot identify it: not an image, or a header corrupt beyond recognition),
        ``"truncated"`` or ``"corrupt"`` (any other decode error).
    """
    if isinstance(error, Image.DecompressionBombError):
        return "too many pixels"
    if isinstance(error, EmptyImageError):
        return "empty file"
    if isinstance(error, UnidentifiedImageError):
        return "unknown format"
    if isinstance(error, OSError) and "truncated" in str(error).lower():
        return "truncated"
    return "corrupt"


def skipped_image_record(value: Any, error: BaseException) -> dict[str, str]:
    """One skipped image, as the stream ships it to the trainer and the trainer lists it.

    Args:
        value: the row's undecoded image value.
        error: what decoding it raised.

    Returns:
        ``{"image": image_key(value), "reason": skip_reason(error), "detail": the error's message}``; the detail
        of an unidentified format is left empty (Pillow's message names only a temporary buffer).
    """
    detail = "" if isinstance(error, UnidentifiedImageError) else str(error)
    return {"image": image_key(value), "reason": skip_reason(error), "detail": detail}


def read_skipped_images(path: Path) -> list[dict[str, str]]:
    """The records of a skipped-images list (one JSON object a line, :func:`append_skipped_images`).

    Args:
        path: the file; a missing one lists nothing.

    Returns:
        Its records in file order; a last line cut short by a crash is left out.
    """
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line: what follows it, if anything, was never fully written either
    return records


def append_skipped_images(path: Path, records: Sequence[dict[str, str]]) -> None:
    """Append records to a skipped-images list, one JSON object a line, flushed to disk.

    Args:
        path: the file, created with its folder if missing.
        records: what :func:`skipped_image_record` returns.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        handle.flush()
        os.fsync(handle.fileno())


def skipped_images_message(new: Sequence[dict[str, str]], total: int, path: Path, shown: int = 5) -> str:
    """The one log line that names images skipped for the first time.

    Args:
        new: their records.
        total: images the list holds now, these included.
        path: the list.
        shown: how many of ``new`` are named; the rest are counted.

    Returns:
        e.g. ``"skipped 2 new unreadable image(s): a.jpg (truncated), b.png (unknown format); all 7 are listed
        in out/skipped_images.jsonl"``.
    """
    names = ", ".join(f"{record['image']} ({record['reason']})" for record in new[:shown])
    more = f" and {len(new) - shown} more" if len(new) > shown else ""
    return f"skipped {len(new)} new unreadable image(s): {names}{more}; all {total} are listed in {path}"


# ---------------------------------------------------------------------------------------------
# the stream of views
# ---------------------------------------------------------------------------------------------


@dataclass
class StreamPosition:
    """How far one stream has read: ``epoch`` and rows of that epoch consumed (decoded or skipped).

    Args:
        epoch: the stream's epoch.
        row: rows of that epoch consumed.
    """

    epoch: int = 0
    row: int = 0


@dataclass
class StreamState:
    """Positions of all streams of one process, and how many batches it has consumed.

    Args:
        num_workers: data-loader workers of the process (0: loading in the main process).
        world_size: the number of processes.
        batches_consumed: batches the trainer has taken from the process's stream.
        positions: one :class:`StreamPosition` per stream (``max(1, num_workers)``).
        images_skipped: undecodable images skipped so far.
    """

    num_workers: int
    world_size: int
    batches_consumed: int = 0
    positions: list[StreamPosition] = field(default_factory=list)
    images_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The state as plain JSON types, for a checkpoint.

        Returns:
            ``{"num_workers", "world_size", "batches_consumed", "images_skipped", "positions"}``, the positions
            as ``[epoch, row]`` pairs.
        """
        return {
            "num_workers": self.num_workers,
            "world_size": self.world_size,
            "batches_consumed": self.batches_consumed,
            "images_skipped": self.images_skipped,
            "positions": [[p.epoch, p.row] for p in self.positions],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamState:
        """The state :meth:`to_dict` wrote (``images_skipped`` optional).

        Args:
            data: the dict.

        Returns:
            The state.

        Raises:
            KeyError: a required key is missing.
        """
        return cls(
            num_workers=int(data["num_workers"]),
            world_size=int(data["world_size"]),
            batches_consumed=int(data["batches_consumed"]),
            images_skipped=int(data.get("images_skipped", 0)),
            positions=[StreamPosition(int(e), int(r)) for e, r in data["positions"]],
        )

    @classmethod
    def fresh(cls, num_workers: int, world_size: int) -> StreamState:
        """The state of a process that has read nothing.

        Args:
            num_workers: data-loader workers of the process.
            world_size: the number of processes.

        Returns:
            The state, every stream at epoch 0, row 0.
        """
        return cls(num_workers, world_size, 0, [StreamPosition() for _ in range(max(1, num_workers))])

    def record(self, batch: dict[str, torch.Tensor]) -> None:
        """Update from a consumed batch's ``stream_*`` fields.

        Args:
            batch: a batch of :class:`PaKACollator` (``stream_index``, ``stream_epoch``, ``stream_position``,
                ``num_skipped``).
        """
        index = int(batch["stream_index"])
        self.positions[index] = StreamPosition(int(batch["stream_epoch"]), int(batch["stream_position"]))
        self.images_skipped += int(batch["num_skipped"])
        self.batches_consumed += 1


def sample_seed(seed: int, epoch: int, stream: int, row: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, stream, row).

    Args:
        seed: the run's base seed.
        epoch: the stream's epoch.
        stream: the stream's global index (process × workers + worker).
        row: the row's index in that epoch.

    Returns:
        The seed, a non-negative int below :math:`2^{63}`.
    """
    return int(
        np.random.SeedSequence([seed, epoch, stream, row]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1)
    )


class PaKAViewStream(torch.utils.data.IterableDataset):
    """Endless, resumable stream of GLIM view samples from an image source (see module docstring).

    Args:
        source: ``datasets.IterableDataset`` from :func:`load_image_source`.
        transform: the :class:`GlimTransform` that renders the views.
        seed: base seed for shuffling and view sampling.
        shuffle_buffer_size: streaming shuffle buffer (0 = keep the source order).
        rank, world_size: this process and the number of processes.
        num_workers: data-loader workers of this process (0 = load in the main process).
        state: a :class:`StreamState` to resume from (None = from the start).
        record_keys: also yield ``image_key`` per sample (for diagnostics).
        max_image_pixels: images whose header announces more pixels are skipped (and counted) without
            being decoded; None or 0 = no limit. Default: Pillow's ``MAX_IMAGE_PIXELS``.

    Raises:
        ValueError: ``state`` was written with another number of processes or workers.
        RuntimeError: on iteration, when the DataLoader runs another number of workers than ``num_workers``.
        EmptyDatasetError: on iteration, when a stream's whole epoch holds no decodable image.
    """

    def __init__(
        self,
        source,
        transform: GlimTransform,
        *,
        seed: int = 0,
        shuffle_buffer_size: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        state: StreamState | None = None,
        record_keys: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        super().__init__()
        self.max_image_pixels = max_image_pixels
        self.source, self.transform = source, transform
        self.seed, self.shuffle_buffer_size = int(seed), int(shuffle_buffer_size)
        self.rank, self.world_size, self.num_workers = int(rank), int(world_size), int(num_workers)
        self.num_streams = max(1, self.num_workers)
        if state is None:
            state = StreamState.fresh(self.num_workers, self.world_size)
        elif (state.num_workers, state.world_size) != (self.num_workers, self.world_size):
            raise ValueError(
                f"cannot resume this data stream: the checkpoint was written with {state.world_size} process(es) x "
                f"{state.num_workers} data-loader worker(s), this run has {self.world_size} x {self.num_workers}. "
                "Resume with the same number of processes and dataloader_num_workers."
            )
        self.state = state
        self.record_keys = record_keys
        self._warned_stride = False

    def _stream_source(self, stream: int, epoch: int):
        from datasets.distributed import split_dataset_by_node

        source = self.source
        if self.shuffle_buffer_size > 0:
            source = source.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer_size)
        source.set_epoch(epoch)
        total = self.world_size * self.num_streams
        if total > 1:
            source = split_dataset_by_node(source, rank=self.rank * self.num_streams + stream, world_size=total)
        return source

    def _strides(self) -> bool:
        """Whether every stream reads all rows and keeps 1 in ``world_size · W`` (shards do not divide evenly)."""
        total = self.world_size * self.num_streams
        return total > 1 and self.source.num_shards % total != 0

    def _warn_if_striding_costs_bytes(self, row: dict[str, Any], stream_global: int) -> None:
        """Say so once (from stream 0 of process 0) when striding reads image bytes that other streams keep.

        Rows of a local image folder hold a path, not bytes: reading the rows another stream keeps
        costs a file name, so striding there is free and no warning is due (``make demo``'s folder
        is one shard for any number of workers)."""
        if self._warned_stride or stream_global != 0 or not self._strides():
            return
        self._warned_stride = True
        value = row.get("image")
        if isinstance(value, dict) and not value.get("bytes"):
            return
        total = self.world_size * self.num_streams
        logger.warning(
            "the dataset has %d shards, not a multiple of %d streams (%d processes x %d workers): every stream "
            "reads all rows and keeps 1 in %d. Choose dataloader_num_workers so that processes x workers "
            "divides the shard count to read each shard once.",
            self.source.num_shards,
            total,
            self.world_size,
            self.num_streams,
            total,
        )

    def _rows(self, stream: int, epoch: int) -> Iterator[dict[str, Any]]:
        # ``.iter`` rather than ``iter()``: inside a DataLoader worker, ``datasets`` would otherwise split
        # the stream between workers a second time.
        for batch in self._stream_source(stream, epoch).iter(batch_size=1):
            yield {key: values[0] for key, values in batch.items()}

    def _decode(self, value: Any) -> Image.Image | np.ndarray:
        """One row's image as the transform takes it; raises one of :data:`DECODE_ERRORS` for unusable data."""
        if self.transform.rendering == "device":  # the views are rendered later: pixels suffice
            return decode_rgb_pixels(value, self.max_image_pixels)
        return to_rgb(decode_image(value, self.max_image_pixels))

    def streams_without_images(self) -> list[str]:
        """One line per data stream of this process that holds no decodable image, e.g.
        ``"process 1 stream 0 (0 rows, 0 undecodable)"``; empty when every stream has one.

        Reads each stream's rows, unshuffled, up to its first decodable image (one decode per stream
        of a healthy dataset; the rows of a local folder are file names). Unshuffled, whole shards may
        go to other streams than in training, so a stream whose own shards are all corrupt can still
        slip through; an empty, all-corrupt or too small dataset (fewer images than
        processes × workers) cannot. The trainer gathers these lines from every process before the
        first collective operation, so that every process stops with the same message
        (:func:`empty_stream_error`) instead of one failing and the others waiting for it.

        Returns:
            The lines, one per empty stream.
        """
        from datasets.distributed import split_dataset_by_node

        total = self.world_size * self.num_streams
        empty = []
        for stream in range(self.num_streams):
            source = self.source
            if total > 1:
                source = split_dataset_by_node(source, rank=self.rank * self.num_streams + stream, world_size=total)
            rows = undecodable = 0
            for batch in source.iter(batch_size=1):
                rows += 1
                try:
                    self._decode(batch["image"][0])
                    break
                except DECODE_ERRORS:
                    undecodable += 1
            else:
                empty.append(f"process {self.rank} stream {stream} ({rows} rows, {undecodable} undecodable)")
        return empty

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        if workers != self.num_streams:
            raise RuntimeError(
                f"PaKAViewStream was built for {self.num_workers} workers but runs under {workers}; pass the same "
                "num_workers to the stream and the DataLoader"
            )
        # The DataLoader serves workers round-robin from worker 0; after n consumed batches the next batch
        # must come from stream n mod W, so worker i takes the role of stream (i + n) mod W.
        stream = (worker + self.state.batches_consumed) % self.num_streams
        stream_global = self.rank * self.num_streams + stream
        position = self.state.positions[stream]
        epoch, start_row = position.epoch, position.row
        skipped: list[dict[str, str]] = []  # undecodable rows since the last yielded sample (carried across epochs)
        while True:
            rows_read, produced = 0, 0
            for row_index, row in enumerate(self._rows(stream, epoch)):
                rows_read = row_index + 1
                self._warn_if_striding_costs_bytes(row, stream_global)
                if row_index < start_row:
                    continue  # consumed before the checkpoint: skip without decoding
                try:
                    image = self._decode(row["image"])
                except DECODE_ERRORS as error:
                    skipped.append(skipped_image_record(row["image"], error))
                    logger.debug("skipping undecodable image %s: %s", skipped[-1]["image"], error)
                    continue
                generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, stream_global, row_index))
                sample = self.transform(image, generator)
                sample.update(
                    stream_index=stream,
                    stream_epoch=epoch,
                    stream_position=rows_read,
                    num_skipped=len(skipped),
                )
                sample[SKIPPED_IMAGES_KEY] = skipped
                if self.record_keys:
                    sample["image_key"] = image_key(row["image"])
                skipped = []
                produced += 1
                yield sample
            if produced == 0 and start_row == 0:
                raise empty_stream_error(
                    [
                        f"process {self.rank} stream {stream} ({rows_read} rows, {len(skipped)} undecodable) in epoch {epoch}"
                    ],
                    self.world_size,
                    self.num_streams,
                )
            epoch, start_row = epoch + 1, 0


def empty_stream_error(empty: Sequence[str], world_size: int, num_workers: int) -> EmptyDatasetError:
    """The one-line error for data streams that hold no decodable image (``empty``: their descriptions).

    Args:
        empty: one description per empty stream (:meth:`PaKAViewStream.streams_without_images`); the first four
            are shown.
        world_size: the number of processes.
        num_workers: data-loader workers per process.

    Returns:
        The error, for the caller to raise.
    """
    streams = world_size * max(1, num_workers)
    shown = "; ".join(empty[:4]) + ("; ..." if len(empty) > 4 else "")
    return EmptyDatasetError(
        f"no decodable image in {len(empty)} of {streams} data stream(s): {shown}. The dataset is empty, all corrupt, "
        f"or has fewer images than processes x dataloader_num_workers ({world_size} x {max(1, num_workers)}): "
        "add images or use fewer processes or workers"
    )


class PaKACollator:
    """Stack samples of one stream into a batch: the tensors of :func:`collate_views` (rendered
    views, or images and draws for rendering on the device) plus the stream bookkeeping of the
    *last* sample (its stream, epoch and position), the number of images skipped while the batch
    was read and their records (:data:`SKIPPED_IMAGES_KEY`)."""

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        batch: dict[str, Any] = collate_views(samples)
        last = samples[-1]
        if "stream_index" in last:
            if len({s["stream_index"] for s in samples}) != 1:
                raise ValueError("a batch mixes samples of different streams; batch inside the stream's worker")
            batch["stream_index"] = torch.tensor(last["stream_index"])
            batch["stream_epoch"] = torch.tensor(last["stream_epoch"])
            batch["stream_position"] = torch.tensor(last["stream_position"])
            batch["num_skipped"] = torch.tensor(sum(s["num_skipped"] for s in samples))
            batch[SKIPPED_IMAGES_KEY] = [record for s in samples for record in s.get(SKIPPED_IMAGES_KEY, ())]
        if "image_key" in last:
            batch["image_keys"] = [s["image_key"] for s in samples]
        return batch
