"""The PaKA objective as one module: student, EMA teacher, alignment and loss.

``PaKAModel(batch) → loss`` for a batch of GLIM views (:func:`paka_hf.views.glim.collate_views`):

1. the teacher (EMA copy of backbone and head, eval mode, no gradients) encodes the clean global
   views: ``(B·n_global, d, h_g, w_g)`` patch grids;
2. the student encodes the augmented local views: ``(B·n_local, d, h_l, w_l)``;
3. each (local j, global j mod n_global) pair is RoI-aligned over the intersection of its boxes:
   ``(P, N, d)`` per side, ``P = B·n_local``, ``N = roi_size²`` (:mod:`paka_hf.views.align`);
4. the optional projection head maps the aligned tokens of each side (the teacher's head is the
   EMA of the student's);
5. the configured loss compares them (:mod:`paka_hf.losses`; 1 − CKA by default).

The head runs on the *aligned* tokens rather than on every patch of every view: RoIAlign is a
linear resampling, and the head costs per token, so this is ~5–8× fewer head FLOPs per step at
paper crops (P·N = 4·49 tokens per image instead of 2·37² + 4·7²).

The teacher is a registered submodule, so ``state_dict`` and any checkpoint hold it; its
parameters have ``requires_grad=False`` and no optimizer sees them. With a LoRA student
(:mod:`paka_hf.modeling.lora`) the teacher is a :class:`~paka_hf.modeling.lora.LoRATeacher`: an EMA copy of the tensors
that train (adapters, unfrozen blocks, norms), run over the student's own frozen base weights, so the base is held once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from paka_hf.losses import NeCoSettings, PaKALoss, cka_per_pair
from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.feature_stats import patch_feature_stats
from paka_hf.modeling.lora import LoRATeacher, is_lora_backbone
from paka_hf.modeling.teacher import EMAPairs, ema_apply_, ema_pairs, make_teacher
from paka_hf.utils.errors import ConfigError, check_choice, check_roi_size
from paka_hf.views.align import AlignedTokens, align_pairs
from paka_hf.views.geometry import ViewGeometry
from paka_hf.views.glim import normalize_views, render_views

#: The views the student encodes: its local views, or also its global views (aligned with the other global).
STUDENT_VIEWS = ("local", "all")


@dataclass
class PaKAOutput(ModelOutput):
    """``loss`` (scalar, float32), ``cka`` (mean CKA of the batch's qualifying pairs, detached),
    ``num_pairs`` (number of pairs that entered the loss), and the collapse guard's two measures of the student's
    patch features on the batch's local views (:mod:`paka_hf.modeling.feature_stats`, detached float32 scalars):
    ``mean_patch_cosine`` and ``effective_rank``."""

    loss: torch.Tensor | None = None
    cka: torch.Tensor | None = None
    num_pairs: torch.Tensor | None = None
    mean_patch_cosine: torch.Tensor | None = None
    effective_rank: torch.Tensor | None = None


class PaKAModel(nn.Module):
    """Student backbone (+ optional head), its EMA teacher, and the PaKA loss.

    Args:
        backbone: the student's :class:`PatchBackbone`; the teacher is an EMA copy (for LoRA, of every tensor that trains: adapters, unfrozen blocks, norms).
        head: an optional projection head on the aligned tokens, with its own EMA teacher head.
        roi_size: RoIAlign output size per side, so each pair compares ``roi_size**2`` tokens.
        sampling_ratio: RoIAlign sampling points per output bin and side.
        loss: the alignment loss (``cka``, ``gram``, ``cosine``, ``neco``; :class:`~paka_hf.losses.PaKALoss`).
        kernel: the kernel of the kernel losses.
        kernel_scope: what one kernel spans (``pair``, ...), see :class:`~paka_hf.losses.PaKALoss`.
        student_views: ``local`` (the student sees the local views) or ``all`` (the global views too, paired
            with the teacher's other global view).
        neco: the NeCo loss's settings, for ``loss="neco"``.

    Raises:
        ConfigError: ``student_views`` or ``roi_size`` is out of range, or a loss setting
            :class:`~paka_hf.losses.PaKALoss` refuses.
    """

    def __init__(
        self,
        backbone: PatchBackbone,
        head: ProjectionHead | None = None,
        *,
        roi_size: int = 7,
        sampling_ratio: int = 2,
        loss: str = "cka",
        kernel: str = "linear",
        kernel_scope: str = "pair",
        student_views: str = "local",
        neco: NeCoSettings | None = None,
    ):
        super().__init__()
        check_choice("student_views", student_views, STUDENT_VIEWS)
        check_roi_size(roi_size)
        # Parameters that never reach the patch grid (DINO's mask token, SigLIP's pooling head): frozen, so
        # that DDP sees no unused parameter and AdamW keeps no state for them (the registry lists them).
        unused = set(backbone.unused_parameter_names())
        for name, param in backbone.named_parameters():
            if name in unused:
                param.requires_grad_(False)
        self.student = backbone
        self.student_head = head
        # A LoRA student (paka_hf.modeling.lora.add_lora): the teacher is an EMA of what trains over the same base weights.
        self.teacher = LoRATeacher(backbone) if is_lora_backbone(backbone) else make_teacher(backbone)
        self.teacher_head = make_teacher(head) if head is not None else None
        # NeCo's reference queue (a buffer of the criterion, so checkpoints hold it) stores head outputs.
        compared_dim = head.out_dim if head is not None else backbone.hidden_size
        self.criterion = PaKALoss(loss, kernel=kernel, scope=kernel_scope, neco=neco, feature_dim=compared_dim)
        self.roi_size, self.sampling_ratio = int(roi_size), int(sampling_ratio)
        self.student_views = student_views
        # uint8 views (what the training stream ships) are normalized here, on the model's device, with the
        # checkpoint's image-processor mean and std (the backbone carries them).
        self.register_buffer("pixel_mean", torch.tensor(backbone.image_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.image_std), persistent=False)
        self._ema_pairs: EMAPairs | None = None

    # ``Trainer`` must not pass ``num_items_in_batch``: the loss is a per-batch mean.
    accepts_loss_kwargs = False

    def train(self, mode: bool = True) -> PaKAModel:
        """Set training mode on the student and head; the teacher and teacher head stay in eval mode.

        Args:
            mode: training mode (``True``) or eval mode.

        Returns:
            The module itself.
        """
        super().train(mode)
        self.teacher.eval()  # the teacher never trains: no dropout, no drop-path
        if self.teacher_head is not None:
            self.teacher_head.eval()
        return self

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """Activation checkpointing of the student backbone's layers (what ``Trainer`` calls for
        ``activation_checkpointing`` / ``gradient_checkpointing``); keyword arguments go to the
        backbone's own method. The teacher runs without gradients and needs none.

        Args:
            **kwargs: ``activation_checkpointing_kwargs`` / ``gradient_checkpointing_kwargs`` for the backbone;
                a LoRA student gets ``use_reentrant: False`` added.

        Raises:
            ConfigError: a LoRA student with ``use_reentrant: True``, under which its adapters would never train.
        """
        backbone = self.student.model
        if is_lora_backbone(self.student):
            # Re-entrant checkpointing drops the gradients of parameters inside a checkpointed block whose input
            # needs none (the frozen embeddings'): LoRA's adapters would never train.
            key = next(
                (k for k in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs") if k in kwargs),
                "activation_checkpointing_kwargs",
            )
            options = dict(kwargs.get(key) or {})
            if options.get("use_reentrant", False):
                raise ConfigError(
                    "use_lora needs non-reentrant activation checkpointing: remove use_reentrant from "
                    "activation_checkpointing_kwargs (or set it to false)"
                )
            kwargs[key] = {**options, "use_reentrant": False}
        enable = getattr(backbone, "activation_checkpointing_enable", None) or backbone.gradient_checkpointing_enable
        enable(**kwargs)

    # transformers < 5.20 calls it by its older name, with ``gradient_checkpointing_kwargs``
    gradient_checkpointing_enable = activation_checkpointing_enable

    @torch.no_grad()
    def update_teacher(self, teacher_momentum: float) -> None:
        """EMA step on backbone and head: ``θ_t ← m θ_t + (1 − m) θ_s`` with ``m = teacher_momentum``.

        One ``_foreach_lerp_`` over the parameter lists of both networks, matched by name once
        (:func:`~paka_hf.modeling.teacher.ema_pairs`) and kept until the module is moved or cast.

        Args:
            teacher_momentum: ``m``, in [0, 1].
        """
        if self._ema_pairs is None:
            if isinstance(self.teacher, LoRATeacher):
                pairs = self.teacher.ema_pairs()  # the trained tensors only; the frozen base is shared
            else:
                pairs = ema_pairs(self.teacher, self.student)
            if self.student_head is not None:
                pairs = pairs + ema_pairs(self.teacher_head, self.student_head)
            self._ema_pairs = pairs
        ema_apply_(self._ema_pairs, teacher_momentum)

    def _apply(self, fn, recurse=True):
        self._ema_pairs = None  # .to(), .cuda(), .half() ...: buffers may be new tensors; list them again
        return super()._apply(fn, recurse)

    def objective(
        self,
        teacher_grids: torch.Tensor,
        student_grids: torch.Tensor,
        geometry: ViewGeometry,
        student_global_grids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, AlignedTokens]:
        """Everything after the backbones: RoIAlign of every pair, the heads, the loss.

        Args:
            teacher_grids, student_grids: ``(B·n_global | B·n_local, d, h, w)`` as the backbones return them.
            geometry: the batch's boxes, ``pair_index`` and flips (:class:`~paka_hf.views.geometry.ViewGeometry`).
            student_global_grids: with ``student_views="all"``, the student on the global views: adds the pairs
                (student global g, teacher global g + 1 mod n_global) (:meth:`ViewGeometry.between_globals`).

        Returns:
            The loss and the tokens it compared: ``(P, N, d_out)`` per side after the heads, and the mask.
        """
        aligned = align_pairs(
            teacher_grids, student_grids, geometry, roi_size=self.roi_size, sampling_ratio=self.sampling_ratio
        )
        if student_global_grids is not None:
            crossed = align_pairs(
                teacher_grids,
                student_global_grids,
                geometry.between_globals(),
                roi_size=self.roi_size,
                sampling_ratio=self.sampling_ratio,
            )
            aligned = AlignedTokens(*(torch.cat(pair, dim=0) for pair in zip(aligned, crossed)))
        teacher_tokens, student_tokens = aligned.teacher, aligned.student
        if self.student_head is not None:
            with torch.no_grad():
                teacher_tokens = self.teacher_head(teacher_tokens)
            student_tokens = self.student_head(student_tokens)
        loss = self.criterion(student_tokens, teacher_tokens, aligned.mask, num_images=geometry.global_boxes.shape[0])
        return loss, AlignedTokens(teacher_tokens, student_tokens, aligned.mask)

    def forward(
        self,
        global_views: torch.Tensor | None = None,
        local_views: torch.Tensor | None = None,
        global_boxes: torch.Tensor | None = None,
        local_boxes: torch.Tensor | None = None,
        pair_index: torch.Tensor | None = None,
        global_flips: torch.Tensor | None = None,
        local_flips: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        view_spec: dict[str, int] | None = None,
        global_color: torch.Tensor | None = None,
        local_color: torch.Tensor | None = None,
        **unused,
    ) -> PaKAOutput:
        """Shapes: views (B, V, 3, S, S), float32 normalized or uint8; boxes (B, V, 4);
        pair_index (B, n_local); flips (B, V). The batch is the flat dict of :func:`~paka_hf.views.glim.collate_views`
        (what ``Trainer`` moves to the device); boxes, ``pair_index`` and flips are gathered here into the
        batch's :class:`~paka_hf.views.geometry.ViewGeometry`.

        Or, for views rendered here on the model's device (``view_rendering: device``), instead of
        the views: ``images`` (B, H, W, 3) uint8, ``image_sizes`` (B, 2), ``view_spec`` and the
        photometric parameters ``global_color``/``local_color`` (B, V, P) — see
        :func:`paka_hf.views.glim.render_views`. Flips are then folded into the rendering and recorded
        as usual.

        Args:
            global_views: the teacher's views, ``(B, n_global, 3, S, S)``.
            local_views: the student's views, ``(B, n_local, 3, s, s)``.
            global_boxes: each global view's box in its image, ``(B, n_global, 4)``.
            local_boxes: each local view's box, ``(B, n_local, 4)``.
            pair_index: the global view each local view is paired with, ``(B, n_local)``.
            global_flips: whether each global view is mirrored, ``(B, n_global)``.
            local_flips: whether each local view is mirrored, ``(B, n_local)``.
            images: images to render the views from, ``(B, H, W, 3)`` uint8, zero-padded.
            image_sizes: each image's true ``(height, width)``, ``(B, 2)``.
            view_spec: ``global_size``, ``local_size``, ``blur_kernel_size`` (:meth:`GlimTransform.view_spec`).
            global_color: the global views' photometric parameters, ``(B, n_global, P)``.
            local_color: the local views' photometric parameters, ``(B, n_local, P)``.
            **unused: other batch entries (stream bookkeeping, image keys), ignored.

        Returns:
            A :class:`PaKAOutput`: the loss, the mean linear CKA over the pairs with at least two tokens and their
            number, and the student's mean patch cosine and effective rank on the local views (no gradient).

        Raises:
            ValueError: both views and images are given, images without ``image_sizes`` or ``view_spec``, or
                neither.
        """
        geometry = ViewGeometry(global_boxes, local_boxes, pair_index, global_flips, local_flips)
        if images is not None:
            if global_views is not None or local_views is not None:
                raise ValueError(
                    "pass either rendered views (global_views, local_views) or images to render, not both"
                )
            if image_sizes is None or view_spec is None:
                raise ValueError(
                    "rendering views on the device needs images, image_sizes and view_spec (collate_views makes them)"
                )
            global_views, local_views = render_views(
                images, image_sizes, geometry, view_spec, global_color, local_color
            )
        elif global_views is None or local_views is None:
            raise ValueError(
                "PaKAModel needs global_views and local_views, or images (with image_sizes, view_spec) to render"
            )
        global_views = normalize_views(global_views, self.pixel_mean, self.pixel_std)
        local_views = normalize_views(local_views, self.pixel_mean, self.pixel_std)
        with torch.no_grad():
            teacher_grids = self.teacher(global_views.flatten(0, 1))
        student_grids = self.student(local_views.flatten(0, 1))
        student_global_grids = self.student(global_views.flatten(0, 1)) if self.student_views == "all" else None
        loss, tokens = self.objective(
            teacher_grids, student_grids, geometry, student_global_grids=student_global_grids
        )
        teacher_tokens, student_tokens = tokens.teacher, tokens.student
        with torch.no_grad():
            criterion = self.criterion
            if (criterion.loss, criterion.kernel, criterion.scope) == ("cka", "linear", "pair"):
                # The loss already is 1 − mean linear CKA over the qualifying pairs: don't compute it twice.
                num_pairs = ((~tokens.mask).sum(1) >= 2).sum()
                mean_cka = torch.where(num_pairs > 0, 1.0 - loss.detach(), torch.zeros_like(loss))
            else:  # log linear pairwise CKA whatever the training loss, so runs stay comparable
                cka, qualifies = cka_per_pair(student_tokens.detach(), teacher_tokens, tokens.mask)
                num_pairs = qualifies.sum()
                mean_cka = (cka * qualifies).sum() / num_pairs.clamp_min(1)
            # The student's own patch grids, before the head: what the export holds and what a collapse empties.
            # The local views are encoded whatever student_views is, so the measure is the same in every recipe.
            health = patch_feature_stats(student_grids, views_per_image=local_views.shape[1])
        return PaKAOutput(
            loss=loss,
            cka=mean_cka,
            num_pairs=num_pairs,
            mean_patch_cosine=health.mean_patch_cosine,
            effective_rank=health.effective_rank,
        )
