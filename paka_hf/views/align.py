r"""Alignment: resample the teacher's and the student's patch grids over the region both views see.

For a pair (global box ``G`` seen by the teacher, local box ``L`` seen by the student), with boxes
in original-image pixels, the shared region is ``I = G ∩ L``. A view rendered from box
``V = (v_x1, v_y1, v_x2, v_y2)`` onto a patch grid of ``h × w`` cells maps an image point
``(x, y)`` to continuous grid coordinates

.. math::

    g_x = \frac{x - v_{x1}}{v_{x2} - v_{x1}}\, w, \qquad g_y = \frac{y - v_{y1}}{v_{y2} - v_{y1}}\, h

where cell ``i`` spans ``[i, i + 1)``; this is the convention of ``torchvision.ops.roi_align``
with ``aligned=True``. Mapping ``I`` into both grids and RoI-aligning each onto a ``roi_size ×
roi_size`` grid gives ``N = roi_size²`` tokens per side that describe the same image locations.
Horizontal flips recorded at rendering are undone without touching the grids: a view flipped
left-right has the grid ``F[:, :, x] = G[:, :, w - 1 - x]``, and RoIAlign commutes with the mirror,

.. math::

    \mathrm{RoIAlign}(G, [x_1, y_1, x_2, y_2]) = \mathrm{flip}_x\,\mathrm{RoIAlign}(F, [w - x_2, y_1, w - x_1, y_2])

(the bins' sample points map to ``w − x``, and torchvision's border rule, zero outside ``[-1, w]``
and clamped inside, is symmetric under it). So the boxes of flipped views are mirrored and the
``roi_size²`` output of those pairs is flipped back: O(P · d · roi²) work instead of copies of
every ``(V, d, h, w)`` grid (at paper crops the teacher's are 128 × 384 × 37², ~270 MB in fp32).
Pairs whose boxes do not intersect (possible only with ``min_intersection = 0``) are returned
fully masked.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchvision.ops import roi_align

from paka_hf.views.geometry import ViewGeometry


class AlignedTokens(NamedTuple):
    """``teacher`` (P, N, d_t) and ``student`` (P, N, d_s) tokens, and ``mask`` (P, N), True = ignore.

    P = B · n_local pairs in (image, local view) order; N = roi_size².
    """

    teacher: torch.Tensor
    student: torch.Tensor
    mask: torch.Tensor


def intersect(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection boxes ``(..., 4)`` of ``a`` and ``b``, and whether each has positive area.

    Args:
        a: boxes ``(..., 4)`` as ``(x1, y1, x2, y2)``.
        b: boxes broadcastable against ``a``.

    Returns:
        The intersection boxes ``(..., 4)`` (possibly inverted where empty) and a bool ``(...)`` mask of the
        non-empty ones.
    """
    box = torch.cat([torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])], dim=-1)
    nonempty = (box[..., 2] > box[..., 0]) & (box[..., 3] > box[..., 1])
    return box, nonempty


def to_grid_coordinates(boxes: torch.Tensor, view_boxes: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Map image-pixel ``boxes`` (P, 4) into the patch-grid coordinates of views cut from ``view_boxes`` (P, 4).

    Args:
        boxes: ``(P, 4)`` boxes in image pixels.
        view_boxes: ``(P, 4)`` the boxes the views were cut from, in image pixels.
        grid_h: the view's patch-grid height.
        grid_w: the view's patch-grid width.

    Returns:
        ``(P, 4)`` boxes in patch units of each view's grid (unflipped).
    """
    origin = view_boxes[:, :2].repeat(1, 2)  # slicing, not a list index: no host-to-device index copy
    extent = (view_boxes[:, 2:] - view_boxes[:, :2]).clamp_min(torch.finfo(view_boxes.dtype).tiny)
    fraction = (boxes - origin) / extent.repeat(1, 2)  # (P, 4): x1, y1, x2, y2 as fractions of the view
    # Scale x by grid_w and y by grid_h with Python scalars: a (4,) scale tensor built with
    # torch.tensor(..., device=cuda) would be a blocking host-to-device copy (a stream sync) every step.
    scaled = torch.stack([fraction[:, 0::2] * grid_w, fraction[:, 1::2] * grid_h], dim=2)  # (P, 2 corners, xy)
    return scaled.flatten(1)


def mirror_boxes(boxes: torch.Tensor, flips: torch.Tensor | None, grid_w: int) -> torch.Tensor:
    """Grid-coordinate boxes (P, 4) mirrored left-right, ``x → grid_w − x``, where ``flips`` (P,) is True.

    Args:
        boxes: ``(P, 4)`` boxes in grid coordinates.
        flips: ``(P,)`` bool, or None for no flips.
        grid_w: the patch-grid width.

    Returns:
        ``(P, 4)`` boxes; ``boxes`` itself when ``flips`` is None.
    """
    if flips is None:
        return boxes
    mirrored = torch.stack([grid_w - boxes[:, 2], boxes[:, 1], grid_w - boxes[:, 0], boxes[:, 3]], dim=1)
    return torch.where(flips[:, None], mirrored, boxes)


def _roi_tokens(
    grids: torch.Tensor,
    index: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor | None,
    roi_size: int,
    sampling_ratio: int,
) -> torch.Tensor:
    """RoIAlign ``boxes`` (P, 4, grid coordinates of the unflipped view) of ``grids[index]`` → (P, r², d);
    ``flips`` (P,) marks pairs whose grid is of a flipped view."""
    # In float32 whatever the grids' dtype: bf16 cannot hold view indices above 256 or box coordinates
    # exactly, and torchvision's autocast rule runs roi_align in float32 anyway.
    boxes = mirror_boxes(boxes.float(), flips, grids.shape[-1])
    rois = torch.cat([index[:, None].float(), boxes], dim=1)
    pooled = roi_align(
        grids.float(), rois, output_size=roi_size, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True
    )
    if flips is not None:
        pooled = torch.where(flips[:, None, None, None], pooled.flip(-1), pooled)
    return pooled.flatten(2).transpose(1, 2)  # (P, d, r, r) -> (P, r*r, d)


def align_pairs(
    teacher_grids: torch.Tensor,
    student_grids: torch.Tensor,
    geometry: ViewGeometry,
    roi_size: int = 7,
    sampling_ratio: int = 2,
) -> AlignedTokens:
    """RoI-align every (global, local) pair of a batch onto ``roi_size²`` tokens per side.

    Args:
        teacher_grids: (B · n_global, d_t, h_t, w_t) patch grids of the global views, image-major.
        student_grids: (B · n_local, d_s, h_s, w_s) patch grids of the local views, image-major.
        geometry: the batch's :class:`~paka_hf.views.geometry.ViewGeometry`: ``global_boxes`` (B, n_global, 4)
            and ``local_boxes`` (B, n_local, 4) pixel boxes, ``pair_index`` (B, n_local) the global view each
            local view pairs with, flips (B, n_global) / (B, n_local) bool or None for no flips.
        roi_size: side of the output token grid (N = roi_size²).
        sampling_ratio: bilinear samples per output bin and axis (see ``torchvision.ops.roi_align``).

    Returns:
        The :class:`AlignedTokens` of the ``P = B · n_local`` pairs, image-major.

    Raises:
        ValueError: if the grids or ``pair_index`` do not match the boxes' batch and view counts.
    """
    global_boxes, local_boxes, pair_index, global_flips, local_flips = geometry
    batch, n_global = global_boxes.shape[:2]
    n_local = local_boxes.shape[1]
    if teacher_grids.shape[0] != batch * n_global or student_grids.shape[0] != batch * n_local:
        raise ValueError(
            f"expected {batch}x{n_global} teacher grids and {batch}x{n_local} student grids, got "
            f"teacher {tuple(teacher_grids.shape)} and student {tuple(student_grids.shape)}"
        )
    if pair_index.shape != (batch, n_local):
        raise ValueError(f"pair_index must have shape {(batch, n_local)}, got {tuple(pair_index.shape)}")
    device = student_grids.device
    global_boxes, local_boxes = global_boxes.to(device).float(), local_boxes.to(device).float()
    pair_index = pair_index.to(device)

    paired_globals = torch.gather(global_boxes, 1, pair_index[..., None].expand(-1, -1, 4))  # (B, n_local, 4)
    shared, nonempty = intersect(paired_globals, local_boxes)
    shared, nonempty = shared.reshape(-1, 4), nonempty.reshape(-1)
    paired_globals, local_flat = paired_globals.reshape(-1, 4), local_boxes.reshape(-1, 4)

    image_index = torch.arange(batch, device=device).repeat_interleave(n_local)
    teacher_index = image_index * n_global + pair_index.reshape(-1)
    student_index = torch.arange(batch * n_local, device=device)

    # per pair: is the grid it reads from that of a flipped view?
    teacher_flips = None if global_flips is None else global_flips.to(device, torch.bool).reshape(-1)[teacher_index]
    student_flips = None if local_flips is None else local_flips.to(device, torch.bool).reshape(-1)
    t_boxes = to_grid_coordinates(shared, paired_globals, *teacher_grids.shape[-2:])
    s_boxes = to_grid_coordinates(shared, local_flat, *student_grids.shape[-2:])

    teacher = _roi_tokens(teacher_grids, teacher_index, t_boxes, teacher_flips, roi_size, sampling_ratio)
    student = _roi_tokens(student_grids, student_index, s_boxes, student_flips, roi_size, sampling_ratio)
    mask = (~nonempty)[:, None].expand(-1, roi_size * roi_size)
    return AlignedTokens(teacher, student, mask)
