r"""GLIM views (global–local intersection maximization): sampling crop boxes and rendering views.

From each image we sample ``n_global`` (2) *global* boxes, random resized crops with area scale
in ``global_scale`` (0.25–1) and aspect ratio in ``ratio`` (3/4–4/3), and ``n_local`` (4) *local*
boxes with area scale in ``local_scale`` (0.05–0.25). Local box ``j`` is paired with global box
``j mod n_global``, and is kept only if its *containment* in that global box is high enough:

.. math::

    c(L, G) = \frac{|L \cap G|}{|L|} \ge \tau \qquad (\tau = \texttt{min\_intersection}, 0.9)

Candidates are drawn in a vectorized batch and the first one that fits is kept; if none does,
the local box is drawn inside ``G`` itself (containment 1). ``τ = 0`` gives plain random crops.
Boxes are float ``(x1, y1, x2, y2)`` in original-image pixels, so the alignment step can map
their intersection onto each view's patch grid exactly.

Rendering (:class:`GlimTransform`): each box is resampled straight from the source image to
``global_size`` / ``local_size`` pixels (PIL ``resize`` with a float ``box``, bicubic). Teacher
(global) views are clean: resize and normalize only. Student (local) views get DINO photometric
augmentation (:mod:`paka_hf.views.augment`). An optional horizontal flip is recorded per view so that
it can be undone on the feature grid.

Where the views are rendered is a choice (``rendering``): on the CPU, in the data workers, with
Pillow and torchvision, one view at a time; or on the accelerator, a batch at a time
(:func:`render_views`): the workers then only decode the image and make the random draws (the same
draws, through the same :meth:`GlimTransform.sample`), and the model renders the views on its device
with the same arithmetic — Pillow's bicubic weights (:mod:`paka_hf.views.resample`) and torchvision's
``uint8`` colour operations with a factor per view (:mod:`paka_hf.views.photometric`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from paka_hf.utils.errors import check_choice, check_fraction, check_patch_multiple, check_positive_int
from paka_hf.utils.imaging import fit_within, to_rgb
from paka_hf.views.augment import PhotometricAugment
from paka_hf.views.geometry import GEOMETRY_KEYS, ViewGeometry
from paka_hf.views.resample import resample_boxes

# The GLIM defaults (the paper's recipe, docs/METHOD.md): the one source for sample_boxes, GlimTransform,
# default_max_image_side and the training configuration (paka_hf.training.config.PaKAConfig).
GLOBAL_SIZE = 224  # side of the teacher's global views, pixels
LOCAL_SIZE = 98  # side of the student's local views, pixels
N_GLOBAL = 2  # global views per image
N_LOCAL = 4  # local views per image
GLOBAL_SCALE = (0.25, 1.0)  # area scale range of global crops
LOCAL_SCALE = (0.05, 0.25)  # area scale range of local crops
CROP_RATIO = (3 / 4, 4 / 3)  # aspect-ratio (w / h) range of all crops
MIN_INTERSECTION = 0.9  # τ: the containment every local box needs in its global box
MAX_TRIES = 64  # candidates drawn per box before the fallback

#: What min_intersection is, in the one message that checks its range (config and sample_boxes).
MIN_INTERSECTION_MEANING = "the fraction of each local box that must lie inside its global box"
CONTAINMENT_TOLERANCE = 1e-6  # float round-off allowance when comparing containment to τ


def containment(inner: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """``|inner ∩ outer| / |inner|`` for boxes ``(..., 4)`` broadcast against each other.

    Args:
        inner: boxes ``(..., 4)`` as ``(x1, y1, x2, y2)`` pixels.
        outer: boxes ``(..., 4)``, broadcastable against ``inner``.

    Returns:
        The fraction of each inner box's area inside its outer box, shape of the broadcast ``(...)``; 0 for an
        inner box of zero area.
    """
    x1 = torch.maximum(inner[..., 0], outer[..., 0])
    y1 = torch.maximum(inner[..., 1], outer[..., 1])
    x2 = torch.minimum(inner[..., 2], outer[..., 2])
    y2 = torch.minimum(inner[..., 3], outer[..., 3])
    overlap = (x2 - x1).clamp_min(0) * (y2 - y1).clamp_min(0)
    area = (inner[..., 2] - inner[..., 0]) * (inner[..., 3] - inner[..., 1])
    return overlap / area.clamp_min(torch.finfo(inner.dtype).tiny)


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    lo, hi = float(value[0]), float(value[1])
    if not (low <= lo <= hi <= high) or hi <= 0:
        raise ValueError(
            f"{name} must be (min, max) with {low} <= min <= max <= {high} and max > 0, got {tuple(value)}"
        )
    return lo, hi


# The samplers below draw with torch (one ``torch.rand`` per batch of candidates, from the caller's
# generator) and compute in numpy float64: they run in the data workers for every image, where the per-call
# overhead of tiny torch ops costs more than their arithmetic. The arithmetic is the float64 IEEE operations
# torch would do, in the same order (``_containment`` is :func:`containment` step for step), so checking the
# boxes with the torch functions gives the numbers the sampler compared against τ.


def _rand(count: int, generator) -> np.ndarray:
    return torch.rand(count, 2, generator=generator, dtype=torch.float64).numpy()


def _candidate_sizes(
    count: int, area: float, scale: tuple[float, float], ratio: tuple[float, float], generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random (w, h) with area ∈ scale·area and log-uniform aspect ratio w/h ∈ ratio."""
    u = _rand(count, generator)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(torch.from_numpy(log_r)).numpy()  # torch's exp, as ever: the same last bit
    return np.sqrt(target * aspect), np.sqrt(target / aspect)


def _place(w: np.ndarray, h: np.ndarray, region: np.ndarray, generator) -> np.ndarray:
    """Boxes of size (w, h) at uniform positions inside ``region`` (x1, y1, x2, y2); (count, 4)."""
    u = _rand(len(w), generator)
    x1 = region[0] + np.maximum(region[2] - region[0] - w, 0) * u[:, 0]
    y1 = region[1] + np.maximum(region[3] - region[1] - h, 0) * u[:, 1]
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1)


def _containment(inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """:func:`containment` in numpy float64."""
    x1 = np.maximum(inner[..., 0], outer[..., 0])
    y1 = np.maximum(inner[..., 1], outer[..., 1])
    x2 = np.minimum(inner[..., 2], outer[..., 2])
    y2 = np.minimum(inner[..., 3], outer[..., 3])
    overlap = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    area = (inner[..., 2] - inner[..., 0]) * (inner[..., 3] - inner[..., 1])
    return overlap / np.maximum(area, np.finfo(np.float64).tiny)


def _global_box(height: int, width: int, scale, ratio, tries: int, generator) -> np.ndarray:
    """A random resized crop (torchvision's rule: ``tries`` draws, else the largest centred box
    whose aspect ratio is clamped into ``ratio``)."""
    w, h = _candidate_sizes(tries, height * width, scale, ratio, generator)
    fits = (w <= width) & (h <= height)
    image = np.array([0.0, 0.0, width, height])
    boxes = _place(w, h, image, generator)
    if fits.any():
        return boxes[int(fits.argmax())]
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    x1, y1 = (width - fw) / 2, (height - fh) / 2
    return np.array([x1, y1, x1 + fw, y1 + fh])


def _local_box(height, width, paired_global, scale, ratio, min_intersection, tries, generator) -> np.ndarray:
    w, h = _candidate_sizes(tries, height * width, scale, ratio, generator)
    image = np.array([0.0, 0.0, width, height])
    boxes = _place(w, h, image, generator)
    ok = (w <= width) & (h <= height)
    ok &= _containment(boxes, paired_global) >= min_intersection - CONTAINMENT_TOLERANCE
    if ok.any():
        return boxes[int(ok.argmax())]
    # Fallback: a local box drawn inside the global box (containment 1), shrunk to fit if needed.
    gw, gh = paired_global[2] - paired_global[0], paired_global[3] - paired_global[1]
    w, h = _candidate_sizes(1, height * width, scale, ratio, generator)
    return _place(np.minimum(w, gw), np.minimum(h, gh), paired_global, generator)[0]


def sample_boxes(
    height: int,
    width: int,
    n_local: int = N_LOCAL,
    *,
    n_global: int = N_GLOBAL,
    global_scale: Sequence[float] = GLOBAL_SCALE,
    local_scale: Sequence[float] = LOCAL_SCALE,
    ratio: Sequence[float] = CROP_RATIO,
    min_intersection: float = MIN_INTERSECTION,
    max_tries: int = MAX_TRIES,
    generator: torch.Generator | None = None,
) -> ViewGeometry:
    """Sample the GLIM boxes of one ``height`` × ``width`` image (see the module docstring).

    Every local box lies inside the image and has containment ≥ ``min_intersection`` in global
    box ``pair_index[j] = j mod n_global``. ``max_tries`` candidates are drawn per box in one
    vectorized batch. A seeded ``generator`` makes the result deterministic.

    Returns:
        The boxes and ``pair_index`` of one image as a :class:`~paka_hf.views.geometry.ViewGeometry` without
        flips (``global_boxes`` ``(n_global, 4)``, ``local_boxes`` ``(n_local, 4)`` float32, ``pair_index``
        ``(n_local,)`` int64).

    Raises:
        ValueError: for an empty image or settings out of range.

    Args:
        height: the image height in pixels.
        width: the image width in pixels.
        n_local: the number of local (student) boxes.
        n_global: the number of global (teacher) boxes.
        global_scale: ``(min, max)`` area fraction of the image a global box covers.
        local_scale: ``(min, max)`` area fraction of the image a local box covers.
        ratio: ``(min, max)`` aspect ratio ``w / h`` of every box.
        min_intersection: τ, the containment each local box needs in its global box.
        max_tries: candidates drawn per box before the fallback.
        generator: the random generator; None for torch's global one.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {width}x{height}")
    check_positive_int("n_global", n_global)
    check_positive_int("n_local", n_local)
    check_fraction("min_intersection", min_intersection, MIN_INTERSECTION_MEANING)
    check_positive_int("max_tries", max_tries)
    global_scale = _check_range("global_scale", global_scale, 0.0, 1.0)
    local_scale = _check_range("local_scale", local_scale, 0.0, 1.0)
    ratio = _check_range("ratio", ratio, 1e-6, 1e6)

    globals_ = np.stack(
        [_global_box(height, width, global_scale, ratio, max_tries, generator) for _ in range(n_global)]
    )
    pair_index = [j % n_global for j in range(n_local)]
    locals_ = np.stack(
        [
            _local_box(height, width, globals_[g], local_scale, ratio, min_intersection, max_tries, generator)
            for g in pair_index
        ]
    )
    # Clamp float round-off so every box lies inside the image.
    limits = np.array([width, height, width, height], dtype=np.float64)
    globals_ = torch.from_numpy(np.minimum(np.maximum(globals_, 0), limits))
    locals_ = torch.from_numpy(np.minimum(np.maximum(locals_, 0), limits))
    pair_index = torch.tensor(pair_index, dtype=torch.int64)
    return ViewGeometry(globals_.float(), locals_.float(), pair_index)


def normalize_views(
    views: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """uint8 views ``(..., 3, H, W)`` → float32 ``(x / 255 − mean) / std``; float input is returned as is.

    ``mean``/``std`` are the backbone's (its checkpoint's image processor, :class:`~paka_hf.modeling.backbones.PatchBackbone`).

    Pass ``mean``/``std`` as (3,) tensors already on the views' device (as :class:`~paka_hf.modeling.model.PaKAModel`
    does with its buffers) to avoid a host-to-device copy per call.

    Args:
        views: uint8 views ``(..., 3, H, W)``, or float views (returned unchanged).
        mean: the per-channel mean, 3 values or a ``(3,)`` tensor.
        std: the per-channel standard deviation, likewise.

    Returns:
        float32 views of the same shape, or ``views`` itself when they are not uint8.
    """
    if views.dtype != torch.uint8:
        return views
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=views.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=views.device).view(3, 1, 1)
    return (views.float().div_(255.0) - mean_t).div_(std_t)


RENDERINGS = ("cpu", "device")
MIN_SCALE_FOR_SIZE_BOUND = (
    0.01  # a crop scale range starting at 0 is taken as starting here when bounding the image side
)
IMAGE_SIDE_MARGIN = 2.0  # covers images up to 4:1 (an L-sided image of aspect ≤ 4 has area ≥ (L/2)²)
IMAGE_SIDE_MULTIPLE = 64


def default_max_image_side(
    global_size: int,
    local_size: int,
    global_scale: Sequence[float] = GLOBAL_SCALE,
    local_scale: Sequence[float] = LOCAL_SCALE,
    ratio: Sequence[float] = CROP_RATIO,
) -> int:
    r"""The longer side beyond which an image is downscaled before its views are cut (:class:`GlimTransform`).

    On an ``n × n`` image the smallest crop of a kind (area scale ``s_min``, aspect ratio at the
    extreme ``ρ = min(r_min, 1 / r_max)``) has a short side of ``n·sqrt(s_min·ρ)``; it still holds at
    least as many pixels as its view of side ``S`` when ``n ≥ S / sqrt(s_min·ρ)``. The bound is

    .. math::

        L = \lceil 2 \max_{k \in \{global, local\}} S_k / \sqrt{s_{min,k}\,ρ} \rceil_{64}

    (the factor 2 covers images up to 4:1): beyond ``L`` pixels the views only get downsampled more.
    224/98 views with the default scales give 1088, the paper's 518/98 give 2432; COCO (≤ 640) and
    CamVid (480) images are never touched. With ``view_rendering: device`` the padded batch is then
    at most ``B × L × L × 3`` bytes.

    Args:
        global_size: the side ``S_global`` of a global view in pixels.
        local_size: the side ``S_local`` of a local view in pixels.
        global_scale: ``(min, max)`` area fraction of a global crop.
        local_scale: ``(min, max)`` area fraction of a local crop.
        ratio: ``(min, max)`` aspect ratio of the crops.

    Returns:
        ``L``, a multiple of 64.
    """
    rho = min(float(ratio[0]), 1.0 / float(ratio[1]), 1.0)
    need = max(
        size / math.sqrt(max(float(scale[0]), MIN_SCALE_FOR_SIZE_BOUND) * rho)
        for size, scale in ((global_size, global_scale), (local_size, local_scale))
    )
    return int(math.ceil(IMAGE_SIDE_MARGIN * need / IMAGE_SIDE_MULTIPLE) * IMAGE_SIDE_MULTIPLE)


class GlimTransform:
    """PIL image → clean teacher global views, augmented student local views, boxes and flips.

    With ``rendering="cpu"`` (default) it returns a dict of tensors:

    - ``global_views`` (n_global, 3, global_size, global_size) uint8 — what training uses: 4× less data
      between workers and the device, where :func:`normalize_views` finishes the job with the backbone's
      mean and std — or float32 normalized with ``mean``/``std`` when they are given (``normalize``
      defaults to whether they are)
    - ``local_views`` (n_local, 3, local_size, local_size), likewise
    - ``global_boxes`` (n_global, 4), ``local_boxes`` (n_local, 4) float32 pixel boxes
    - ``pair_index`` (n_local,) int64; ``global_flips`` (n_global,), ``local_flips`` (n_local,) bool

    With ``rendering="device"`` it renders nothing: it returns the decoded image and every random
    draw, and :func:`render_views` renders the views of a whole batch later, on the accelerator:

    - ``image`` (H, W, 3) uint8 numpy array (read-only), as decoded; ``image_size`` (2,) int64 (H, W)
    - the boxes, ``pair_index`` and flips as above
    - ``local_color`` (n_local, P) float64, the photometric parameters of each local view
      (:mod:`paka_hf.views.augment`), and ``global_color`` (n_global, P) when ``teacher_augment``
    - ``view_spec``: the view sizes and blur kernel size (:meth:`view_spec`), plain ints

    Both modes draw from the generator through one method, :meth:`sample`, in the same order, so a
    seed gives the same boxes, flips and photometric parameters whichever side renders.

    Any PIL mode and size (down to 1×1, any aspect ratio) is accepted: see :func:`paka_hf.utils.imaging.to_rgb`.
    An image whose longer side exceeds ``max_image_side`` (default :func:`default_max_image_side`,
    ≤ 0 for none) is first downscaled to it (:func:`paka_hf.utils.imaging.fit_within`), in both renderings,
    so the boxes and views come from the same pixels and a batch padded for the device stays bounded.

    Args:
        global_size: the side of a global (teacher) view in pixels.
        local_size: the side of a local (student) view in pixels.
        n_local: local views per image.
        n_global: global views per image.
        global_scale: ``(min, max)`` area fraction of the image a global box covers.
        local_scale: ``(min, max)`` area fraction of the image a local box covers.
        ratio: ``(min, max)`` aspect ratio of every box.
        min_intersection: τ, the containment each local box needs in its global box.
        max_tries: candidates drawn per box before the fallback.
        flip: flip each view horizontally with probability 1/2.
        teacher_augment: apply photometric augmentation to the global views.
        student_augment: apply photometric augmentation to the local views.
        augment: the photometric augmentation; None for :class:`~paka_hf.views.augment.PhotometricAugment` defaults.
        mean: the backbone's image mean, to normalize on the CPU.
        std: the backbone's image std, likewise.
        patch_size: the backbone's patch size; when given, both view sizes must be multiples of it.
        normalize: return float32 normalized views; None for whether ``mean`` is given.
        rendering: ``"cpu"`` or ``"device"`` (see above).
        max_image_side: downscale longer image sides to this; None for :func:`default_max_image_side`,
            ≤ 0 for no limit.

    Raises:
        ConfigError: a size that is not a positive multiple of ``patch_size``, or an unknown ``rendering``.
        ValueError: box settings out of range (:func:`sample_boxes`), or ``normalize`` without ``mean`` and ``std``.
    """

    def __init__(
        self,
        global_size: int = GLOBAL_SIZE,
        local_size: int = LOCAL_SIZE,
        n_local: int = N_LOCAL,
        *,
        n_global: int = N_GLOBAL,
        global_scale: Sequence[float] = GLOBAL_SCALE,
        local_scale: Sequence[float] = LOCAL_SCALE,
        ratio: Sequence[float] = CROP_RATIO,
        min_intersection: float = MIN_INTERSECTION,
        max_tries: int = MAX_TRIES,
        flip: bool = False,
        teacher_augment: bool = False,
        student_augment: bool = True,
        augment: PhotometricAugment | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        patch_size: int | None = None,
        normalize: bool | None = None,
        rendering: str = "cpu",
        max_image_side: int | None = None,
    ):
        check_positive_int("global_size", global_size)
        check_positive_int("local_size", local_size)
        check_choice("rendering", rendering, RENDERINGS)
        if patch_size is not None:
            for name, size in (("global_size", global_size), ("local_size", local_size)):
                check_patch_multiple(name, size, patch_size)
        self.global_size, self.local_size = int(global_size), int(local_size)
        self.n_global, self.n_local = int(n_global), int(n_local)
        self.box_kwargs = dict(
            n_global=self.n_global,
            global_scale=tuple(global_scale),
            local_scale=tuple(local_scale),
            ratio=tuple(ratio),
            min_intersection=float(min_intersection),
            max_tries=int(max_tries),
        )
        sample_boxes(8, 8, self.n_local, **self.box_kwargs)  # validate the settings now, not per image
        self.flip = bool(flip)
        self.teacher_augment, self.student_augment = bool(teacher_augment), bool(student_augment)
        self.augment = augment if augment is not None else PhotometricAugment()
        normalize = (mean is not None) if normalize is None else bool(normalize)
        if normalize and (mean is None or std is None):
            raise ValueError("normalize=True needs mean and std: pass the backbone's image_mean and image_std")
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self.normalize = normalize
        self.rendering = rendering
        if max_image_side is None:
            max_image_side = default_max_image_side(global_size, local_size, global_scale, local_scale, ratio)
        self.max_image_side = int(max_image_side)

    def view_spec(self) -> dict[str, int]:
        """What :func:`render_views` needs besides the per-sample draws (plain ints, carried in each batch).

        Returns:
            ``{"global_size", "local_size", "blur_kernel_size"}`` as ints.
        """
        return {
            "global_size": self.global_size,
            "local_size": self.local_size,
            "blur_kernel_size": self.augment.blur_kernel_size,
        }

    def _sample_views(self, count: int, augment: bool, generator) -> tuple[torch.Tensor | None, torch.Tensor]:
        colors, flips = [], []
        for _ in range(count):  # per view: its photometric draws, then its flip (the order of the CPU path ever since)
            if augment:
                colors.append(self.augment.sample(generator))
            flips.append(self.flip and torch.rand((), generator=generator).item() < 0.5)
        return (torch.stack(colors) if augment else None), torch.tensor(flips, dtype=torch.bool)

    def sample(self, height: int, width: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Every random draw for one ``height`` × ``width`` image: boxes, flips, photometric parameters.

        Returns the fields of the image's :class:`~paka_hf.views.geometry.ViewGeometry` (boxes of
        :func:`sample_boxes`, ``pair_index``, ``global_flips``/``local_flips``) as dict entries, and
        ``global_color``/``local_color`` ``(n, P)`` float64 for the views that are augmented.

        Args:
            height: the image height in pixels.
            width: the image width in pixels.
            generator: the random generator; None for torch's global one.

        Returns:
            The draws, keyed as described above.
        """
        boxes = sample_boxes(height, width, self.n_local, generator=generator, **self.box_kwargs)
        global_color, global_flips = self._sample_views(self.n_global, self.teacher_augment, generator)
        local_color, local_flips = self._sample_views(self.n_local, self.student_augment, generator)
        draws = boxes._replace(global_flips=global_flips, local_flips=local_flips).as_dict()
        if global_color is not None:
            draws["global_color"] = global_color
        if local_color is not None:
            draws["local_color"] = local_color
        return draws

    def _render(
        self, image: Image.Image, box: torch.Tensor, size: int, color: torch.Tensor | None, flipped: bool
    ) -> torch.Tensor:
        view = image.resize((size, size), resample=Image.Resampling.BICUBIC, box=tuple(box.tolist()))
        tensor = F.pil_to_tensor(view)  # (3, size, size) uint8
        if color is not None:
            tensor = self.augment.apply(tensor, color)
        if flipped:
            tensor = F.horizontal_flip(tensor)
        if not self.normalize:
            return tensor.contiguous()  # uint8, 4x less to collate and ship; normalize_views() on the device
        return normalize_views(tensor, self.mean, self.std)

    def render(self, image: Image.Image, draws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The views of :meth:`sample`'s ``draws`` rendered on the CPU with Pillow and torchvision.

        Args:
            image: the RGB image the boxes were drawn on.
            draws: :meth:`sample`'s output for that image.

        Returns:
            ``{"global_views": (n_global, 3, S_g, S_g), "local_views": (n_local, 3, S_l, S_l)}``, uint8 or
            (when ``normalize``) float32.
        """
        views = {}
        for kind, size in (("global", self.global_size), ("local", self.local_size)):
            colors = draws.get(f"{kind}_color")
            views[f"{kind}_views"] = torch.stack(
                [
                    self._render(image, box, size, None if colors is None else colors[i], bool(flipped))
                    for i, (box, flipped) in enumerate(zip(draws[f"{kind}_boxes"], draws[f"{kind}_flips"]))
                ]
            )
        return views

    def __call__(
        self, image: Image.Image | np.ndarray, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Views (or, with ``rendering="device"``, pixels and draws) of one image.

        ``image``: a PIL image of any mode, or — for ``rendering="device"`` — an RGB ``(H, W, 3)``
        uint8 array as :func:`paka_hf.training.data.decode_rgb_pixels` makes it.

        Args:
            image: the image.
            generator: the random generator; None for torch's global one.

        Returns:
            The dict described in the class docstring for this transform's ``rendering``.

        Raises:
            ValueError: an array image that is not RGB uint8, or an array with ``rendering="cpu"``; an empty image.
        """
        if isinstance(image, np.ndarray):
            if self.rendering != "device" or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"an array image must be RGB (H, W, 3) uint8 and needs rendering='device', got {image.dtype} "
                    f"{image.shape} with rendering={self.rendering!r}; pass a PIL image otherwise"
                )
            pixels = fit_within(image, self.max_image_side)
        else:
            image = fit_within(to_rgb(image), self.max_image_side)
            if self.rendering == "cpu":
                draws = self.sample(image.height, image.width, generator)
                views = self.render(image, draws)
                return {**views, **{key: draws[key] for key in VIEW_KEYS if key in draws}}
            pixels = np.asarray(image)  # (H, W, 3) uint8, read-only: copied once, into the padded batch
        height, width = pixels.shape[:2]
        draws = self.sample(height, width, generator)
        return {"image": pixels, "image_size": torch.tensor([height, width]), **draws, "view_spec": self.view_spec()}


VIEW_KEYS = ("global_views", "local_views", *GEOMETRY_KEYS)
DEVICE_KEYS = ("image_size", *GEOMETRY_KEYS)
COLOR_KEYS = ("global_color", "local_color")


def pad_images(images: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
    """``(H_i, W_i, 3)`` uint8 images → one zero-padded ``(B, max H, max W, 3)`` uint8 tensor.

    Inside a DataLoader worker the batch is allocated in shared memory, as ``default_collate`` does,
    so that sending it to the main process copies nothing; only the padding is zeroed.

    Args:
        images: ``B`` RGB images ``(H_i, W_i, 3)`` uint8, numpy arrays or tensors.

    Returns:
        The ``(B, max H, max W, 3)`` uint8 batch, each image in its top-left corner.
    """
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    shape = (len(images), height, width, 3)
    if torch.utils.data.get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(math.prod(shape))
        batch = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    else:
        batch = torch.empty(shape, dtype=torch.uint8)
    target = batch.numpy()
    for out, image in zip(target, images):
        h, w = image.shape[:2]
        np.copyto(out[:h, :w], np.asarray(image))
        out[h:] = 0
        out[:h, w:] = 0
    return batch


def collate_views(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Stack per-image view dicts into a batch: every tensor gains a leading batch dimension B.

    Samples of ``rendering="device"`` become ``images`` (B, H, W, 3) uint8, zero-padded to the
    largest image, ``image_sizes`` (B, 2), the draws stacked, and ``view_spec`` (plain ints).

    Args:
        samples: the outputs of one :class:`GlimTransform` for the images of a batch.

    Returns:
        The batch dict (views and geometry stacked, or for device rendering images, sizes, draws and
        ``view_spec``).

    Raises:
        ValueError: no samples, or device samples with different view sizes.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    if "image" not in samples[0]:
        return {key: torch.stack([sample[key] for sample in samples]) for key in VIEW_KEYS}
    keys = DEVICE_KEYS + tuple(key for key in COLOR_KEYS if key in samples[0])
    batch: dict[str, Any] = {key: torch.stack([sample[key] for sample in samples]) for key in keys}
    batch["image_sizes"] = batch.pop("image_size")
    batch["images"] = pad_images([sample["image"] for sample in samples])
    specs = {tuple(sorted(sample["view_spec"].items())) for sample in samples}
    if len(specs) != 1:
        raise ValueError(f"samples of one batch must share view sizes, got {sorted(specs)}")
    batch["view_spec"] = dict(samples[0]["view_spec"])
    return batch


def render_views(
    images: torch.Tensor,
    image_sizes: torch.Tensor,
    geometry: ViewGeometry,
    view_spec: dict[str, int],
    global_color: torch.Tensor | None = None,
    local_color: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a batch's views on the images' device: what :meth:`GlimTransform.render` does on the CPU.

    Crop-and-resize of every box with Pillow's bicubic (:func:`paka_hf.views.resample.resample_boxes`,
    flips folded in), then the photometric parameters per view
    (:meth:`~paka_hf.views.augment.PhotometricAugment.apply_batch`). Flipping before the photometric ops
    instead of after changes nothing: they are per pixel, per-view means, or a symmetric blur with
    symmetric (reflect) padding.

    Args:
        images: ``(B, H, W, 3)`` uint8, zero-padded; ``image_sizes`` ``(B, 2)`` true (height, width).
        geometry: the batch's boxes ``(B, n, 4)`` and flips ``(B, n)`` bool or None
            (:class:`~paka_hf.views.geometry.ViewGeometry`).
        global_color, local_color: photometric parameters ``(B, n, P)``, or None for unaugmented views.
        view_spec: ``global_size``, ``local_size``, ``blur_kernel_size`` (:meth:`GlimTransform.view_spec`).

    Returns:
        ``global_views`` ``(B, n_global, 3, S_g, S_g)`` and ``local_views`` ``(B, n_local, 3, S_l, S_l)`` uint8.

    Raises:
        ValueError: if ``images`` is not a uint8 ``(B, H, W, 3)`` batch.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (B, H, W, 3) as collate_views makes them, got {images.dtype} {tuple(images.shape)}"
        )
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        pixels = images.permute(0, 3, 1, 2).float()
        out = []
        for boxes, flips, color, size in (
            (geometry.global_boxes, geometry.global_flips, global_color, view_spec["global_size"]),
            (geometry.local_boxes, geometry.local_flips, local_color, view_spec["local_size"]),
        ):
            views = resample_boxes(pixels, image_sizes, boxes, size, flips)
            if color is not None:
                batch, n = views.shape[:2]
                flat = PhotometricAugment.apply_batch(
                    views.flatten(0, 1), color.flatten(0, 1), view_spec["blur_kernel_size"]
                )
                views = flat.view(batch, n, *flat.shape[1:])
            out.append(views.to(torch.uint8))
    return out[0], out[1]
