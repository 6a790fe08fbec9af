r"""The geometry of GLIM views: where each view was cut, which views pair, which were flipped.

One :class:`ViewGeometry` describes the views of one image, as :meth:`paka_hf.views.glim.GlimTransform.sample`
draws them, or of a batch, as :func:`paka_hf.views.glim.collate_views` stacks them (every field gains a leading
batch dimension ``B``). The views are rendered from it (:func:`paka_hf.views.glim.render_views`), the patch grids
are aligned with it (:func:`paka_hf.views.align.align_pairs`) and the model reads it
(:meth:`paka_hf.modeling.model.PaKAModel.objective`).

Between the data workers and the model a batch travels as a flat dict of tensors (what ``Trainer`` and
accelerate move to the device), whose geometry entries are named by :data:`GEOMETRY_KEYS`, the fields of
:class:`ViewGeometry`; :meth:`ViewGeometry.from_batch` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch


class ViewGeometry(NamedTuple):
    r"""Boxes, pairing and flips of the global (teacher) and local (student) views.

    Shapes are those of one image; a batch has a leading ``B`` on every field.

    - ``global_boxes`` ``(n_global, 4)`` float32, ``local_boxes`` ``(n_local, 4)`` float32: the boxes the views
      were cut from, ``(x1, y1, x2, y2)`` in original-image pixels (floats, so that the alignment maps their
      intersection onto each view's patch grid exactly).
    - ``pair_index`` ``(n_local,)`` int64: the global view local view ``j`` pairs with (``j mod n_global`` for
      GLIM).
    - ``global_flips`` ``(n_global,)``, ``local_flips`` ``(n_local,)`` bool: whether the view was flipped
      left-right after cutting; ``None`` for no flips (:func:`paka_hf.views.glim.sample_boxes` draws none).

    A NamedTuple: ``torch.compile`` traces through it (no graph break), and it unpacks like the tuple it is.
    """

    global_boxes: torch.Tensor
    local_boxes: torch.Tensor
    pair_index: torch.Tensor
    global_flips: torch.Tensor | None = None
    local_flips: torch.Tensor | None = None

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> ViewGeometry:
        """The geometry entries (:data:`GEOMETRY_KEYS`) of a batch or sample dict; absent flips are ``None``.

        Args:
            batch: a dict as :func:`~paka_hf.views.glim.collate_views` or :class:`~paka_hf.views.glim.GlimTransform`
                makes it.

        Returns:
            The :class:`ViewGeometry` of those entries.

        Raises:
            KeyError: if the boxes or ``pair_index`` are missing.
        """
        return cls(*(batch[key] if key in REQUIRED_KEYS else batch.get(key) for key in GEOMETRY_KEYS))

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The fields as the flat dict entries a sample or batch carries (``None`` flips left out).

        Returns:
            ``{key: tensor}`` for the :data:`GEOMETRY_KEYS` whose value is not None.
        """
        return {key: value for key, value in zip(GEOMETRY_KEYS, self) if value is not None}

    def between_globals(self) -> ViewGeometry:
        """The geometry that pairs global view ``g`` with global ``(g + 1) mod n_global`` of the same image.

        With ``student_views="all"`` (:class:`~paka_hf.modeling.model.PaKAModel`) the student also encodes the
        global views, and each is aligned with the teacher's *other* global view: the "local" side of this
        geometry is the global views. Batched geometry only (``global_boxes`` ``(B, n_global, 4)``).

        Returns:
            A :class:`ViewGeometry` with ``local_boxes = global_boxes``, ``local_flips = global_flips`` and
            ``pair_index`` ``(B, n_global)``.
        """
        batch, n_global = self.global_boxes.shape[:2]
        other = (torch.arange(n_global, device=self.global_boxes.device) + 1) % n_global
        return ViewGeometry(
            self.global_boxes, self.global_boxes, other.expand(batch, -1), self.global_flips, self.global_flips
        )


#: The dict keys of the geometry in a sample or batch: the fields of :class:`ViewGeometry`, in order.
GEOMETRY_KEYS: tuple[str, ...] = ViewGeometry._fields
#: The entries every geometry has (the flips are optional).
REQUIRED_KEYS: tuple[str, ...] = ("global_boxes", "local_boxes", "pair_index")
