"""The feature explorer: base and PaKA-adapted dense features side by side, on your own images, in Gradio.

``paka-explore MODEL [--base BASE] [--images DIR]`` (or ``python scripts/explore.py ...``) serves a page on
localhost that shows, for the base model and the adapted model side by side:

* **PCA to RGB**: the first three principal components of the last-layer patch tokens as colours
  (:func:`paka_hf.apps.pictures.pca_rgb`). *Per model* (default): each model gets its own PCA, as in the
  model card, because post-training may rotate the feature space and one basis would then favour one model.
  *Joint*: one PCA fitted on both models' patches, so equal colours mean equal directions in both.
* **k-means**: ``K`` clusters (a slider) on the L2-normalised tokens of each model, overlaid
  (:func:`paka_hf.apps.pictures.cluster_labels`).
* **Click a patch**: cosine similarity of that patch to every patch, for both models, on one fixed colour
  scale ([0, 1], viridis), over the image (:func:`paka_hf.apps.pictures.similarity_maps`).
* **Correspondence**: with a second image loaded, the same click also shows the similarity over the second
  image, with its best match boxed, for both models.

The maths and the drawing are :mod:`paka_hf.apps.pictures`'s, the same as the model card's pictures. Models load
through :meth:`paka_hf.modeling.backbones.PatchBackbone.from_pretrained` (every family it supports) and are
normalized with the checkpoint's own image processor (``AutoImageProcessor``'s ``image_mean`` /
``image_std``); images are resized so the short side is ``resolution`` (448) and cropped to multiples of the
patch size. Patch features are computed once per image and model and cached (:class:`FeatureExplorer`), so
a click costs a matrix-vector product and two small pictures (benchmarks/explore_click.py).

Images are decoded as the training stream decodes them (:func:`paka_hf.training.data.decode_image` and
:func:`paka_hf.utils.imaging.to_rgb`: grayscale, RGBA, CMYK, 16-bit, EXIF-rotated...); an image above
``max_pixels`` or one that is not an image gets a one-line message in the page, and so does a model that
fails to load (the server keeps running; fix the id in *Models* and press *Load*).

Gradio is an optional extra: ``pip install paka_hf[app]``. Example::

    >>> from paka_hf.apps.explorer import build_app
    >>> build_app("out/", base="facebook/dinov2-with-registers-small").launch()
"""

# No "from __future__ import annotations": Gradio reads the gr.SelectData annotation of event handlers at runtime.

import hashlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from paka_hf.apps import pictures as viz
from paka_hf.utils.errors import ConfigError, EmptyDatasetError, MissingPathError, PaKAUserError
from paka_hf.utils.files import TRAINING_CONFIG_FILE
from paka_hf.utils.imaging import IMAGE_SUFFIXES, is_image_file
from paka_hf.utils.paths import check_local_path

logger = logging.getLogger(__name__)

DEFAULT_RESOLUTION = 448
#: Largest input image accepted, in pixels (checked on the header, before decoding): 40 MP.
DEFAULT_MAX_PIXELS = 40_000_000
#: Longer side at most this many times the shorter one; beyond, the image is center-cropped to it, so a
#: panorama does not become thousands of patches.
MAX_ASPECT_RATIO = 4.0
#: Images (per model) whose features stay cached.
DEFAULT_CACHE_SIZE = 16
PCA_MODES = ("per model", "joint")
DEFAULT_CLUSTERS = 8
DEFAULT_LABELS = ("Base", "PaKA")
#: Format of the pictures sent to the browser (JPEG: a click's pictures encode in milliseconds, PNG's take ~0.2 s each).
PANEL_FORMAT = "jpeg"


class ImageInputError(PaKAUserError, ValueError):
    """An input image that the explorer cannot use (not an image, too many pixels, unreadable)."""


class ModelLoadError(PaKAUserError, OSError):
    """A model (Hub id or folder) that could not be loaded."""


# --------------------------------------------------------------------------------------------------
# Models and images
# --------------------------------------------------------------------------------------------------


@dataclass
class ExplorerModel:
    """A backbone in eval mode and the normalization its checkpoint's image processor asks for
    (``PatchBackbone.image_mean`` / ``image_std``, from the backbone registry).

    Args:
        name: the model's Hub id or folder, as shown.
        backbone: the backbone (``(B, 3, H, W)`` → ``(B, D, h, w)``, with ``patch_size``).
        mean: the per-channel normalization mean.
        std: the per-channel normalization std.
    """

    name: str
    backbone: Any  # paka_hf.modeling.backbones.PatchBackbone (or anything returning (B, D, h, w) grids)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def patch_size(self) -> int:
        """The backbone's patch size in pixels."""
        return int(self.backbone.patch_size)


def load_model(source: str | os.PathLike, **load_kwargs: Any) -> ExplorerModel:
    """Load ``source`` (Hub id or folder) with ``PatchBackbone.from_pretrained``; raise :class:`ModelLoadError`
    with a one-line reason when that fails.

    Args:
        source: a Hub id or a local folder.
        **load_kwargs: passed to ``PatchBackbone.from_pretrained``.

    Returns:
        The :class:`ExplorerModel`.

    Raises:
        ModelLoadError: the folder does not exist, or loading failed for any reason.
    """
    from paka_hf.modeling.backbones import PatchBackbone

    name = os.fspath(source)
    try:
        check_local_path(name, "MODEL")  # "./typo" says "no such folder", never a Hub error after retries
        backbone = PatchBackbone.from_pretrained(name, **load_kwargs).eval()
        mean, std = tuple(backbone.image_mean), tuple(backbone.image_std)
    except Exception as err:  # noqa: BLE001 - any failure becomes a message in the page, never a dead server
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ModelLoadError(f"could not load model {name!r}: {reason[:400]}") from err
    return ExplorerModel(name, backbone, mean, std)


def _describe_pixels(width: int, height: int) -> str:
    return f"{width}x{height} ({width * height / 1e6:.1f} MP)"


def load_image(value: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an upload (path, bytes or PIL image) to upright 8-bit RGB, as the training stream does.

    Raises :class:`ImageInputError` (one line) for a file that is not an image, an image of more than
    ``max_pixels`` pixels (read from the header, before decoding) or one that has no pixels.

    Args:
        value: a file path, the file's bytes, or a PIL image.
        max_pixels: the largest image accepted, in pixels.

    Returns:
        The RGB image.

    Raises:
        MissingPathError: a path that is not a file.
        ImageInputError: as above.
    """
    from paka_hf.training.data import DECODE_ERRORS, decode_image
    from paka_hf.utils.imaging import to_rgb

    try:
        if isinstance(value, Image.Image):
            image = value
        else:
            if isinstance(value, (str, os.PathLike)) and not Path(value).is_file():
                raise MissingPathError(f"image {os.fspath(value)!r} not found")
            with Image.open(io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value) as header:
                width, height = header.size
            if width * height > max_pixels:
                raise ImageInputError(
                    f"image of {_describe_pixels(width, height)} is above the explorer's limit of "
                    f"{max_pixels / 1e6:.0f} MP: downscale it (or start the explorer with a larger --max_pixels)"
                )
            image = decode_image(value)
        if image.width * image.height > max_pixels:
            raise ImageInputError(
                f"image of {_describe_pixels(image.width, image.height)} is above the explorer's limit of "
                f"{max_pixels / 1e6:.0f} MP: downscale it (or start the explorer with a larger --max_pixels)"
            )
        return to_rgb(image)
    except PaKAUserError:
        raise
    except DECODE_ERRORS as err:
        raise ImageInputError(
            f"could not read the image: {' '.join(str(err).split()) or type(err).__name__} "
            "(upload a JPEG, PNG, WebP, BMP, TIFF or GIF file)"
        ) from err


def crop_to_aspect(image: Image.Image, max_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """Center-crop the longer side to at most ``max_ratio`` times the shorter one (no-op otherwise).

    Args:
        image: the image.
        max_ratio: the largest ratio of the longer side to the shorter.

    Returns:
        The cropped image, or ``image`` itself.
    """
    width, height = image.size
    if width > max_ratio * height:
        new = max(1, round(max_ratio * height))
        left = (width - new) // 2
        return image.crop((left, 0, left + new, height))
    if height > max_ratio * width:
        new = max(1, round(max_ratio * width))
        top = (height - new) // 2
        return image.crop((0, top, width, top + new))
    return image


# --------------------------------------------------------------------------------------------------
# Features, cached
# --------------------------------------------------------------------------------------------------


@dataclass
class EncodedImage:
    """One image as both models see it: the picture shown (resized and cropped, ``(W, H)`` pixels) and, per
    model, its ``(h, w, D)`` patch features raw (PCA, k-means) and L2-normalised (similarity).

    Args:
        key: the image's content key (the cache's key).
        shown: the picture shown.
        features: per model, the ``(h, w, D)`` features.
        normalized: per model, the L2-normalised features.
        original_size: ``(width, height)`` of the decoded image.
        seconds: per model, the seconds the features took.
    """

    key: str
    shown: Image.Image
    features: list[np.ndarray]
    normalized: list[np.ndarray]
    original_size: tuple[int, int]
    seconds: list[float] = field(default_factory=list)

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid ``(h, w)``."""
        return self.features[0].shape[:2]


class FeatureExplorer:
    """Base and adapted model on the same images: features computed once per image and model (an LRU cache of
    ``cache_size`` images), then PCA, k-means and similarity pictures from :mod:`paka_hf.apps.pictures`.

    ``models``: ``(base, adapted)`` :class:`ExplorerModel` (same patch size). ``forward_calls`` counts the
    backbone forwards actually run (what the cache saves).

    Args:
        models: ``(base, adapted)``.
        resolution: the short side images are resized to, in pixels.
        max_pixels: the largest image accepted, in pixels (:func:`load_image`).
        cache_size: the images whose features are kept.
        labels: the two models' names in the pictures.

    Raises:
        ConfigError: not two models, different patch sizes, or ``resolution`` below the patch size.
    """

    def __init__(
        self,
        models: Sequence[ExplorerModel],
        *,
        resolution: int = DEFAULT_RESOLUTION,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_size: int = DEFAULT_CACHE_SIZE,
        labels: Sequence[str] = DEFAULT_LABELS,
    ):
        if len(models) != 2:
            raise ConfigError(f"the explorer compares two models (base, adapted), got {len(models)}")
        patch_sizes = {m.patch_size for m in models}
        if len(patch_sizes) != 1:
            raise ConfigError(
                f"base and adapted models have different patch sizes ({models[0].patch_size} vs {models[1].patch_size}); "
                "compare checkpoints of the same architecture"
            )
        self.models = list(models)
        self.patch_size = patch_sizes.pop()
        if resolution < self.patch_size:
            raise ConfigError(f"--resolution {resolution} is smaller than the patch size {self.patch_size}")
        self.resolution = int(resolution)
        self.max_pixels = int(max_pixels)
        self.cache_size = int(cache_size)
        self.labels = tuple(labels)
        self.forward_calls = 0
        self._cache: OrderedDict[str, EncodedImage] = OrderedDict()
        self._pictures: OrderedDict[tuple, list[Image.Image]] = OrderedDict()
        self._file_keys: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, base: str | os.PathLike, **kwargs: Any) -> "FeatureExplorer":
        """Load ``base`` and ``model`` (Hub ids or folders) with :func:`load_model`.

        Args:
            model: the adapted model.
            base: the base model.
            **kwargs: passed to :class:`FeatureExplorer`.

        Returns:
            The explorer.

        Raises:
            ModelLoadError: a model could not be loaded.
            ConfigError: as :class:`FeatureExplorer`.
        """
        return cls([load_model(base), load_model(model)], **kwargs)

    # ----- cache -----

    def _key(self, value: Any) -> str:
        """Content key of an image: the SHA-1 of a file's bytes (remembered per path, size and modification
        time, so a click does not re-read the file) or of a PIL image's pixels."""
        if isinstance(value, (str, os.PathLike)):
            stat = os.stat(value)
            stamp = (os.path.abspath(value), stat.st_size, stat.st_mtime_ns)
            if stamp not in self._file_keys:
                digest = hashlib.sha1()
                with open(value, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
                self._remember(self._file_keys, stamp, "file:" + digest.hexdigest())
            return self._file_keys[stamp]
        if isinstance(value, Image.Image):
            digest = hashlib.sha1(value.tobytes())
            digest.update(f"{value.mode}{value.size}".encode())
            return f"image:{digest.hexdigest()}"
        return f"file:{hashlib.sha1(bytes(value)).hexdigest()}"

    def _remember(self, store: OrderedDict, key: Any, value: Any) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.cache_size * (1 if store is self._cache else 8):
            store.popitem(last=False)

    def encode(self, image: Any) -> EncodedImage:
        """Features of ``image`` (path, bytes or PIL image) for both models, from the cache when present.

        Args:
            image: a file path, the file's bytes, or a PIL image.

        Returns:
            The :class:`EncodedImage`.

        Raises:
            MissingPathError: a path that is not a file.
            ImageInputError: the image cannot be used (:func:`load_image`).
        """
        with self._lock:
            key = self._key(image)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            rgb = load_image(image, self.max_pixels)
            original_size = rgb.size
            rgb = crop_to_aspect(rgb)
            features, normalized, seconds = [], [], []
            shown = None
            for model in self.models:
                start = time.perf_counter()
                shown, pixels = viz.prepare_image(rgb, self.resolution, self.patch_size, model.mean, model.std)
                with torch.inference_mode():
                    grid = viz.patch_features(model.backbone, pixels)
                self.forward_calls += 1
                features.append(grid)
                normalized.append(viz.l2_normalize(grid))
                seconds.append(time.perf_counter() - start)
            encoded = EncodedImage(key, shown, features, normalized, original_size, seconds)
            self._remember(self._cache, key, encoded)
            return encoded

    def _cached_pictures(self, key: tuple, make: Callable[[], list[Image.Image]]) -> list[Image.Image]:
        with self._lock:
            if key not in self._pictures:
                self._remember(self._pictures, key, make())
            return self._pictures[key]

    # ----- pictures -----

    def pca(self, encoded: EncodedImage, mode: str = PCA_MODES[0]) -> list[Image.Image]:
        """PCA-to-RGB picture per model: one PCA per model (``"per model"``) or one on both (``"joint"``).

        Args:
            encoded: the image (:meth:`encode`).
            mode: one of :data:`PCA_MODES`.

        Returns:
            One picture per model.

        Raises:
            ConfigError: an unknown ``mode``.
        """
        if mode not in PCA_MODES:
            raise ConfigError(f"PCA mode must be one of {PCA_MODES}, got {mode!r}")

        def make():
            if mode == "joint":
                maps = viz.pca_rgb(encoded.features)
            else:
                maps = [viz.pca_rgb([f])[0] for f in encoded.features]
            return [viz.pca_picture(rgb, encoded.shown.size) for rgb in maps]

        return self._cached_pictures(("pca", encoded.key, mode), make)

    def clusters(self, encoded: EncodedImage, n_clusters: int = DEFAULT_CLUSTERS, seed: int = 0) -> list[Image.Image]:
        """k-means overlay per model (``n_clusters`` clusters on that model's L2-normalised patch tokens).

        Args:
            encoded: the image (:meth:`encode`).
            n_clusters: ``K``.
            seed: the k-means random state.

        Returns:
            One picture per model.
        """

        def make():
            return [
                viz.cluster_overlay(encoded.shown, viz.cluster_labels([f], int(n_clusters), seed)[0])
                for f in encoded.features
            ]

        return self._cached_pictures(("clusters", encoded.key, int(n_clusters), seed), make)

    def query_picture(self, encoded: EncodedImage, row: int, col: int) -> Image.Image:
        """The shown image with the query patch boxed in white.

        Args:
            encoded: the image (:meth:`encode`).
            row: the query patch's row.
            col: the query patch's column.

        Returns:
            A new picture.
        """
        return viz.mark_patches(encoded.shown.copy(), encoded.grid, query=(row, col))

    def similarity(self, encoded: EncodedImage, row: int, col: int) -> list[Image.Image]:
        """Per model: cosine similarity of patch ``(row, col)`` to every patch, over the image, scale [0, 1].

        Args:
            encoded: the image (:meth:`encode`).
            row: the query patch's row.
            col: the query patch's column.

        Returns:
            One picture per model.
        """
        pictures = []
        for normalized in encoded.normalized:
            sim = viz.similarity_maps([normalized], (0, row, col), normalized=True)[0]
            pictures.append(viz.similarity_overlay(encoded.shown, sim, query=(row, col)))
        return pictures

    def correspondence(self, source: EncodedImage, target: EncodedImage, row: int, col: int) -> list[Image.Image]:
        """Per model: similarity of patch ``(row, col)`` of ``source`` to every patch of ``target`` (same scale),
        with the best match in ``target`` boxed.

        Args:
            source: the image of the query patch.
            target: the image searched.
            row: the query patch's row.
            col: the query patch's column.

        Returns:
            One picture of ``target`` per model.
        """
        pictures = []
        for a, b in zip(source.normalized, target.normalized):
            sim = viz.similarity_maps([a, b], (0, row, col), normalized=True)[1]
            pictures.append(viz.similarity_overlay(target.shown, sim, matches=viz.top_matches(sim, 1)))
        return pictures

    def click(self, source: EncodedImage, x: float, y: float, target: EncodedImage | None = None):
        """A click at pixel ``(x, y)`` of ``source.shown``: ``(query picture, [heat maps], [correspondence maps]
        or None, (row, col))``.

        Args:
            source: the clicked image.
            x: the click's column in pixels of ``source.shown``.
            y: the click's row.
            target: a second image for the correspondence maps, or None.

        Returns:
            The 4-tuple above.
        """
        row, col = viz.patch_at(x, y, source.shown.size, source.grid)
        heat = self.similarity(source, row, col)
        matches = self.correspondence(source, target, row, col) if target is not None else None
        return self.query_picture(source, row, col), heat, matches, (row, col)


# --------------------------------------------------------------------------------------------------
# Base model and gallery
# --------------------------------------------------------------------------------------------------


def default_base(model: str | os.PathLike) -> str | None:
    """The base model a PaKA output names: ``model_name_or_path`` of its ``training_config.yaml`` (a local
    folder, or the file in a Hub model repository); ``None`` when there is none.

    Args:
        model: a PaKA output: a local folder or a Hub id.

    Returns:
        The base model's name or path, or None.
    """
    import yaml

    path = Path(model)
    if path.is_dir():
        config = path / TRAINING_CONFIG_FILE
        if not config.is_file():
            return None
        return (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model_name_or_path")
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(os.fspath(model), TRAINING_CONFIG_FILE)
    except Exception:  # noqa: BLE001 - no such file, offline, not a Hub id: the caller asks for --base
        return None
    return (yaml.safe_load(Path(local).read_text(encoding="utf-8")) or {}).get("model_name_or_path")


def gallery_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, in name order.

    Args:
        folder: the gallery folder.

    Returns:
        The image paths.

    Raises:
        MissingPathError: ``folder`` is not a folder.
        EmptyDatasetError: it holds no image.
    """
    path = Path(folder)
    if not path.is_dir():
        raise MissingPathError(f"--images {os.fspath(folder)!r}: no such folder")
    images = sorted(p for p in path.iterdir() if is_image_file(p) and p.is_file())
    if not images:
        raise EmptyDatasetError(f"--images {os.fspath(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return images


# --------------------------------------------------------------------------------------------------
# The Gradio app
# --------------------------------------------------------------------------------------------------


def require_gradio():
    """The ``gradio`` module, imported on first use (the explorer is an optional extra).

    Returns:
        The ``gradio`` module.

    Raises:
        ConfigError: Gradio is not installed.
    """
    try:
        import gradio as gr
    except ImportError as err:
        raise ConfigError("the explorer needs Gradio: pip install 'paka_hf[app]'") from err
    return gr


def _upload_image(gr, **kwargs):
    """``gr.Image`` that hands the uploaded file to the handler untouched: Gradio's own preprocessing opens it
    with Pillow first, so a broken file would fail there with a generic error instead of our message, and a
    16-bit or CMYK image would be converted by Gradio rather than as the training stream does. (The method is
    replaced on the instance: a ``gr.Image`` subclass would make Gradio write a ``.pyi`` stub next to this file.)"""
    component = gr.Image(**kwargs)
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return payload.path
        return gradio_preprocess(payload)

    component.preprocess = preprocess
    return component


def _status_line(explorer: FeatureExplorer) -> str:
    base, adapted = explorer.models
    return (
        f"**{explorer.labels[0]}:** `{base.name}` · **{explorer.labels[1]}:** `{adapted.name}` · "
        f"patch {explorer.patch_size} px · short side {explorer.resolution} px"
    )


def _image_line(encoded: EncodedImage) -> str:
    (w0, h0), (w, h), (gh, gw) = encoded.original_size, encoded.shown.size, encoded.grid
    times = " / ".join(f"{s:.2f} s" for s in encoded.seconds)
    return f"Image {w0}×{h0} → {w}×{h} px, {gh}×{gw} patches (features: {times}, then cached)."


_COLOUR_BAR = (
    '<div style="display:flex;align-items:center;gap:8px;font-size:0.9em">cosine similarity 0'
    '<div style="flex:0 0 240px;height:12px;background:linear-gradient(to right,{stops})"></div>1'
    " (one scale for both models)</div>"
)


def build_app(
    model: str | os.PathLike | None = None,
    base: str | os.PathLike | None = None,
    *,
    images: Sequence[str | os.PathLike] = (),
    resolution: int = DEFAULT_RESOLUTION,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    labels: Sequence[str] = DEFAULT_LABELS,
    explorer: FeatureExplorer | None = None,
    title: str = "PaKA feature explorer",
):
    """The Gradio ``Blocks`` of the explorer (call ``.launch()`` on it).

    Pass ``model`` and ``base`` (Hub ids or folders; loaded now) or a ready ``explorer``. A model that fails
    to load does not raise: the page shows why, and *Models* → *Load* retries. ``images``: the gallery.
    API endpoints (``gradio_client``): ``/analyse`` (image, K, PCA mode), ``/query`` (image, x, y, second
    image or None), ``/load_models`` (model, base).

    Args:
        model: the adapted model, or None (with ``explorer``, or to load from the page).
        base: the base model; None for the one ``model``'s ``training_config.yaml`` names.
        images: the gallery's image files.
        resolution: the short side images are resized to, in pixels.
        max_pixels: the largest image accepted, in pixels.
        labels: the two models' names in the pictures.
        explorer: a ready explorer, used instead of loading.
        title: the page's title.

    Returns:
        The ``gradio.Blocks``.

    Raises:
        ConfigError: Gradio is not installed.
    """
    gr = require_gradio()
    state: dict[str, Any] = {"explorer": explorer, "error": None}

    def load(model_id, base_id):
        model_id, base_id = (model_id or "").strip(), (base_id or "").strip()
        if not model_id:
            state["error"] = "no model given: enter a Hub id or a folder in *Models* and press *Load*"
            return
        if not base_id:
            base_id = default_base(model_id) or ""
        if not base_id:
            state["error"] = f"no base model given and {model_id!r} names none (training_config.yaml): enter one"
            return
        try:
            state["explorer"] = FeatureExplorer.from_pretrained(
                model_id, base_id, resolution=resolution, max_pixels=max_pixels, labels=labels
            )
            state["error"] = None
        except PaKAUserError as err:
            state["explorer"], state["error"] = None, str(err)
        logger.info("models: %s", state["error"] or _status_line(state["explorer"]))

    if explorer is None:
        load(os.fspath(model) if model is not None else "", os.fspath(base) if base is not None else "")

    def status_markdown() -> str:
        if state["error"]:
            return f"⚠️ **Error:** {state['error']}"
        return _status_line(state["explorer"])

    def current() -> FeatureExplorer:
        if state["explorer"] is None:
            raise gr.Error(state["error"] or "no model loaded", print_exception=False)
        return state["explorer"]

    def encode(image) -> EncodedImage | None:
        if image is None:
            return None
        try:
            return current().encode(image)
        except PaKAUserError as err:
            raise gr.Error(str(err), print_exception=False) from err

    def analyse(image, n_clusters, pca_mode, second=None):
        """A new first image: PCA, k-means, and the similarity of its centre patch (over the second image too)."""
        encoded = encode(image)
        if encoded is None:
            return [None] * 9 + [""]
        explorer_ = current()
        width, height = encoded.shown.size
        query_picture, heat, matches, _ = explorer_.click(encoded, width / 2, height / 2, encode(second))
        return [
            *explorer_.pca(encoded, pca_mode),
            *explorer_.clusters(encoded, n_clusters),
            query_picture,
            *heat,
            *(matches or [None, None]),
            _image_line(encoded),
        ]

    def recluster(image, n_clusters):
        encoded = encode(image)
        return [None, None] if encoded is None else current().clusters(encoded, n_clusters)

    def repca(image, pca_mode):
        encoded = encode(image)
        return [None, None] if encoded is None else current().pca(encoded, pca_mode)

    def query(image, x, y, second=None):
        """Similarity of the patch at pixel (x, y) of the shown first image: 2 heat maps over it and, with a
        second image, 2 over that one (best match boxed)."""
        encoded = encode(image)
        if encoded is None:
            raise gr.Error("load an image first", print_exception=False)
        query_picture, heat, matches, _ = current().click(encoded, float(x), float(y), encode(second))
        return [query_picture, *heat, *(matches or [None, None])]

    def on_select(image, second, evt: gr.SelectData):
        x, y = evt.index[:2]
        return query(image, x, y, second)

    def on_second(image, second):
        """A new second image: correspondence of the centre patch of the first one."""
        if encode(image) is None or second is None:
            return [None, None]
        encoded = encode(image)
        width, height = encoded.shown.size
        return current().click(encoded, width / 2, height / 2, encode(second))[2]

    def reload(model_id, base_id):
        load(model_id, base_id)
        return status_markdown()

    stops = ",".join(f"rgb{tuple(int(v) for v in c)}" for c in viz.VIRIDIS)
    image_kwargs = dict(type="filepath", image_mode=None, format="png", height=320)
    # Pictures go to the browser as JPEG: PNG-encoding a 588x448 heat map costs ~15x longer (benchmarks/explore_click.py)
    shown_kwargs = dict(type="pil", format=PANEL_FORMAT, interactive=False, height=320)
    gallery_files = [os.fspath(p) for p in images]

    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\nBase and PaKA-adapted dense features side by side. Upload an image"
            + (" or pick one from the gallery" if gallery_files else "")
            + "; click a patch of the image under *Similarity* to compare what each model finds alike."
        )
        status = gr.Markdown(status_markdown(), elem_id="explorer-status")
        with gr.Row():
            image_a = _upload_image(
                gr, label="Image", sources=["upload", "clipboard"], elem_id="explorer-image", **image_kwargs
            )
            image_b = _upload_image(
                gr,
                label="Second image (correspondence)",
                sources=["upload", "clipboard"],
                elem_id="explorer-second-image",
                **image_kwargs,
            )
        if gallery_files:
            with gr.Row():
                gallery = gr.Gallery(
                    value=gallery_files,
                    label="Gallery (click: load as the first image)",
                    columns=8,
                    height=160,
                    allow_preview=False,
                    elem_id="explorer-gallery",
                )
                gallery_target = gr.Radio(
                    ["first image", "second image"], value="first image", label="A gallery click loads the", scale=0
                )
        info = gr.Markdown("", elem_id="explorer-image-info")
        with gr.Row():
            n_clusters = gr.Slider(2, 20, value=DEFAULT_CLUSTERS, step=1, label="K (k-means clusters)")
            pca_mode = gr.Radio(
                list(PCA_MODES),
                value=PCA_MODES[0],
                label="PCA fitted",
                info="per model: each model's own components; joint: one PCA on both models",
            )
        gr.Markdown("## PCA of the patch features (first 3 components as RGB)")
        with gr.Row():
            pca_base = gr.Image(label=f"{labels[0]}: PCA", elem_id="explorer-pca-base", **shown_kwargs)
            pca_adapted = gr.Image(label=f"{labels[1]}: PCA", elem_id="explorer-pca-adapted", **shown_kwargs)
        gr.Markdown("## k-means clusters")
        with gr.Row():
            clusters_base = gr.Image(label=f"{labels[0]}: k-means", elem_id="explorer-clusters-base", **shown_kwargs)
            clusters_adapted = gr.Image(
                label=f"{labels[1]}: k-means", elem_id="explorer-clusters-adapted", **shown_kwargs
            )
        gr.Markdown("## Similarity: click a patch of the image on the left")
        gr.HTML(_COLOUR_BAR.format(stops=stops))
        with gr.Row():
            query_image = gr.Image(label="Click a patch", elem_id="explorer-query", **shown_kwargs)
            heat_base = gr.Image(label=f"{labels[0]}: similarity", elem_id="explorer-heat-base", **shown_kwargs)
            heat_adapted = gr.Image(label=f"{labels[1]}: similarity", elem_id="explorer-heat-adapted", **shown_kwargs)
        gr.Markdown("## Correspondence: the clicked patch over the second image (best match boxed)")
        with gr.Row():
            match_base = gr.Image(
                label=f"{labels[0]}: over the second image", elem_id="explorer-match-base", **shown_kwargs
            )
            match_adapted = gr.Image(
                label=f"{labels[1]}: over the second image", elem_id="explorer-match-adapted", **shown_kwargs
            )
        with gr.Accordion("Models", open=state["error"] is not None):
            with gr.Row():
                model_box = gr.Textbox(
                    value=os.fspath(model) if model is not None else "", label="Adapted model (Hub id or folder)"
                )
                base_box = gr.Textbox(
                    value=os.fspath(base) if base is not None else "",
                    label="Base model (empty: from training_config.yaml)",
                )
                load_button = gr.Button("Load", scale=0)
        # API-only inputs of /query (a browser click sends its coordinates through .select instead)
        with gr.Row(visible=False):
            x_box, y_box = gr.Number(label="x"), gr.Number(label="y")
            query_button = gr.Button("query")

        analyse_outputs = [
            pca_base,
            pca_adapted,
            clusters_base,
            clusters_adapted,
            query_image,
            heat_base,
            heat_adapted,
            match_base,
            match_adapted,
            info,
        ]
        image_a.change(analyse, [image_a, n_clusters, pca_mode, image_b], analyse_outputs, api_name="analyse")
        image_b.change(on_second, [image_a, image_b], [match_base, match_adapted], api_name="second_image")
        n_clusters.release(recluster, [image_a, n_clusters], [clusters_base, clusters_adapted], api_name="clusters")
        pca_mode.change(repca, [image_a, pca_mode], [pca_base, pca_adapted], api_name="pca")
        click_outputs = [query_image, heat_base, heat_adapted, match_base, match_adapted]
        for target in (query_image, heat_base, heat_adapted):
            target.select(on_select, [image_a, image_b], click_outputs, api_name=False)
        query_button.click(query, [image_a, x_box, y_box, image_b], click_outputs, api_name="query")
        load_button.click(reload, [model_box, base_box], status, api_name="load_models")
        if gallery_files:

            def pick(target, evt: gr.SelectData):
                path = gallery_files[evt.index]
                return (path, gr.update()) if target == "first image" else (gr.update(), path)

            gallery.select(pick, gallery_target, [image_a, image_b], api_name=False)
    demo.explorer_state = state  # for tests and benchmarks: the explorer behind the page
    return demo
