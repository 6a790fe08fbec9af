"""``PaKATrainer``: the Hugging Face ``Trainer`` for PaKA post-training.

What it adds to ``Trainer`` (the rest — mixed precision, DDP through ``accelerate``,
gradient accumulation, logging, checkpoint rotation, the progress bar — is ``Trainer``'s own):

- the model is a :class:`~paka_hf.modeling.model.PaKAModel` (student, EMA teacher, head, loss) built
  from :class:`~paka_hf.training.config.PaKAConfig`; the teacher is a registered submodule, so every
  checkpoint holds it;
- data comes from a resumable :class:`~paka_hf.training.data.PaKAViewStream`, split between processes
  and workers by the stream itself (the DataLoader is not re-sharded by ``accelerate``);
- the EMA teacher update and the weight-decay schedule run once per *optimizer* step, as
  callbacks (``on_step_end`` / ``on_step_begin``), never per micro-batch;
- AdamW parameter groups: backbone lr, LoRA adapter lr (and weight decay) and head lr, no weight decay on
  biases and 1-D parameters (norms, layer scales);
- logs, each logging step: loss, mean CKA, teacher momentum, learning rates, weight decay,
  images/s and images skipped;
- checkpoints are marked complete only once every file of every process is written and
  fsynced (the marker of a folder being rewritten is removed first), and resuming picks the
  newest complete one and loads it strictly (docs/STACK.md: ``Trainer``'s own loader is not strict),
  restoring the stream position, so a resumed run is bit-identical to an uninterrupted one on
  CPU; the folders' rules are :mod:`paka_hf.training.checkpoints`, the barriers between processes here;
- ``output_dir`` belongs to one run: a fresh run stops if it holds checkpoints (unless
  ``overwrite_output_dir``), a resume from ``checkpoint-N`` removes the higher-numbered ones (an
  abandoned future), so rotation (``save_total_limit``) only ever removes older saves;
- every checkpoint and every export carries its own ``training_config.yaml`` and
  ``training_summary.json`` (written atomically, totals over every process and every resume);
  pickled arguments (``training_args.bin``) never hold a token;
- Ctrl-C stops training where it is, and one that a finalizer swallowed stops it at the next step
  (:mod:`paka_hf.training.interrupts`);
- ``save_model(dir)`` writes the bare backbone (student or teacher, ``export``) as a plain
  ``transformers`` model with its image processor: ``AutoModel.from_pretrained(dir)`` works with
  no custom code.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import yaml
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer import SCHEDULER_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, enable_full_determinism, set_seed

from paka_hf.hub import save_backbone
from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.lora import add_lora, export_lora_backbone, is_lora_backbone
from paka_hf.modeling.model import PaKAModel
from paka_hf.modeling.sharding import (
    FSDP2,
    gather_full_state,
    gather_full_tensors,
    shard_paka_model,
    unsharded_backbone,
)
from paka_hf.modeling.teacher import teacher_momentum_at
from paka_hf.training.checkpoints import (
    UNSHARDED,
    RunTotals,
    check_checkpoint_layout,
    complete_checkpoints,
    feature_health_start,
    folder_names,
    fsync_tree,
    mark_checkpoint_complete,
    remove_checkpoint,
    resolve_checkpoint,
    rotate_checkpoints,
    stale_checkpoints,
    write_text_atomic,
    write_training_summary,
)
from paka_hf.training.collapse_guard import CollapseGuard, CollapseGuardCallback
from paka_hf.training.config import PaKAConfig
from paka_hf.training.data import (
    SKIPPED_IMAGES_KEY,
    STREAM_KEYS,
    PaKACollator,
    PaKAViewStream,
    StreamState,
    append_skipped_images,
    empty_stream_error,
    load_image_source,
    read_skipped_images,
    skipped_images_message,
    warn_if_shuffle_buffers_exceed_memory,
)
from paka_hf.training.fsdp import (
    FSDPPlan,
    ensure_process_group,
    fsdp_plan,
    load_sharded_model,
    load_sharded_optimizer,
    save_sharded_model,
    save_sharded_optimizer,
)
from paka_hf.training.hub_push import HubPushMixin
from paka_hf.training.interrupts import InterruptGuard
from paka_hf.training.optimization import SCHEDULED_DECAY_KEY, optimizer_groups
from paka_hf.utils.errors import ConfigError, MissingPathError
from paka_hf.utils.files import (
    ADAPTER_DIR,
    MODEL_SHARDS_DIR,
    OPTIMIZER_SHARDS_DIR,
    RANK_DIAGNOSTICS_DIR,
    RANK_DIAGNOSTICS_FILE,
    SKIPPED_IMAGES_FILE,
    STREAM_STATE_FILE,
    TRAINING_CONFIG_FILE,
    TRAINING_SUMMARY_FILE,
    WEIGHTS_FILE,
)
from paka_hf.utils.paper import PAPER_ID, PAPER_TITLE, TAGS
from paka_hf.utils.schedules import cosine_schedule
from paka_hf.views.glim import GlimTransform

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# building blocks from a config
# ---------------------------------------------------------------------------------------------


def build_model(config: PaKAConfig) -> PaKAModel:
    """Student backbone from ``model_name_or_path`` (any family of :mod:`paka_hf.modeling.backbones`, with
    ``drop_path_rate``, ``student_rope_augment`` and the checkpoint's image processor), LoRA adapters with
    ``use_lora`` (:mod:`paka_hf.modeling.lora`), optional head, teacher.

    Args:
        config: the run's settings.

    Returns:
        The :class:`PaKAModel`.

    Raises:
        ConfigError: the checkpoint's model type is not supported, or a view size is not a multiple of its patch
            size.
    """
    backbone = PatchBackbone.from_pretrained(
        config.model_name_or_path,
        drop_path_rate=config.drop_path_rate,
        attn_implementation=config.attn_implementation,
        revision=config.model_revision,
        rope_augment=config.student_rope_augment,
    )
    config.check_patch_size(backbone.patch_size)
    if config.use_lora:
        add_lora(backbone, config.lora_settings(), base_model_name_or_path=config.model_name_or_path)
    head = (
        ProjectionHead(backbone.hidden_size, config.head_hidden_dim, config.head_out_dim) if config.use_head else None
    )
    return PaKAModel(
        backbone,
        head,
        roi_size=config.roi_size,
        loss=config.loss,
        kernel=config.kernel,
        kernel_scope=config.kernel_scope,
        student_views=config.student_views,
        neco=config.neco_settings() if config.loss == "neco" else None,
    )


def build_transform(config: PaKAConfig, patch_size: int) -> GlimTransform:
    """The GLIM view sampler of the config: uint8 views, normalized later by :class:`PaKAModel` on its device.

    Args:
        config: the run's settings (view sizes, scales, ratio, flips, rendering).
        patch_size: the backbone's patch size; boxes snap to its grid.

    Returns:
        The :class:`GlimTransform`.
    """
    return GlimTransform(
        config.global_size,
        config.local_size,
        config.n_local,
        global_scale=config.global_scale,
        local_scale=config.local_scale,
        ratio=config.crop_ratio,
        min_intersection=config.min_intersection,
        max_tries=config.max_box_tries,
        flip=config.flip,
        teacher_augment=config.teacher_augment,
        patch_size=patch_size,
        normalize=False,  # uint8 views; PaKAModel normalizes them on its device
        rendering=config.view_rendering,  # "device": PaKAModel renders the views from the decoded images
        max_image_side=config.max_image_side,
    )


def state_checksum(module: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and bytes of a module's state dict (for cross-process comparisons).

    Args:
        module: the module, or its state dict (whole tensors: gathered, for a sharded module).

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    state = module if isinstance(module, dict) else module.state_dict()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parameter_counts(model: PaKAModel) -> dict[str, int]:
    """What trains and what it is trained in: parameters of the student backbone and its head (the network a run
    exports), as peft's ``print_trainable_parameters`` counts them. The EMA teacher, which no optimizer sees, is not
    counted. Counted before sharding, or from the DTensors' global shapes: the same on every process.

    Args:
        model: the training module.

    Returns:
        ``{"trainable_parameters": T, "total_parameters": T + F}``.
    """
    networks = [model.student] + ([model.student_head] if model.student_head is not None else [])
    params = [p for network in networks for p in network.parameters()]
    return {
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "total_parameters": sum(p.numel() for p in params),
    }


# ---------------------------------------------------------------------------------------------
# callbacks: once per optimizer step
# ---------------------------------------------------------------------------------------------


class TeacherEMACallback(TrainerCallback):
    """After each optimizer step ``k`` (1-based): ``θ_t ← m θ_t + (1 − m) θ_s`` with
    ``m = teacher_momentum_at(k − 1, max_steps)`` (cosine from ``teacher_momentum`` to 1)."""

    def __init__(self):
        self.momentum = None
        self.updates = 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Apply the EMA step with this step's momentum.

        Args:
            args: the :class:`PaKAConfig` (``teacher_momentum``).
            state: the trainer state (``global_step``, ``max_steps``).
            control: the trainer control (unused).
            model: the :class:`PaKAModel`.
            **kwargs: the other objects ``Trainer`` passes to callbacks (unused).
        """
        self.momentum = teacher_momentum_at(state.global_step - 1, state.max_steps, args.teacher_momentum, 1.0)
        model.update_teacher(self.momentum)
        self.updates += 1


class WeightDecayScheduleCallback(TrainerCallback):
    """Before each optimizer step: weight decay of the decayed groups on a cosine from
    ``weight_decay`` to ``weight_decay_end``."""

    def __init__(self):
        self.value = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        """Set this step's weight decay on the groups marked for the schedule.

        Args:
            args: the :class:`PaKAConfig` (``weight_decay``, ``weight_decay_end``).
            state: the trainer state (``global_step``, ``max_steps``).
            control: the trainer control (unused).
            optimizer: the optimizer whose groups carry the schedule's mark.
            **kwargs: the other objects ``Trainer`` passes to callbacks (unused).
        """
        self.value = cosine_schedule(args.weight_decay, args.weight_decay_end, state.global_step, state.max_steps)
        for group in optimizer.param_groups:
            if group.get(SCHEDULED_DECAY_KEY):
                group["weight_decay"] = self.value


class EpochCallback(TrainerCallback):
    r"""``state.epoch`` = optimizer steps done / ``max_steps``, the same in a resumed run as in an uninterrupted one.

    The view stream has no length, so ``Trainer`` counts one epoch as ``max_steps`` optimizer steps (``max_steps``
    × gradient accumulation batches) and sets ``state.epoch`` from the batches of the current ``train`` call only:
    a run resumed at step :math:`k` would end at :math:`1 - k / \text{max\_steps}`. Set after every optimizer
    step, before ``Trainer`` logs (the ``epoch`` of the logs and of the final metrics) or saves it
    (``trainer_state.json``).
    """

    def on_step_end(self, args, state, control, **kwargs):
        """Set ``state.epoch`` from ``global_step``.

        Args:
            args: the run's training arguments (unused).
            state: the trainer state, updated.
            control: the trainer control (unused).
            **kwargs: the other objects ``Trainer`` passes to callbacks (unused).
        """
        state.epoch = state.global_step / state.max_steps


class FinalStepLogCallback(TrainerCallback):
    """Log at the last optimizer step too, so the final loss is logged whatever ``logging_steps`` is
    (``Trainer`` logs only at multiples of it: ``logging_steps`` > ``max_steps`` would log no loss at all)."""

    def on_step_end(self, args, state, control, **kwargs):
        """Ask for a log at the last step.

        Args:
            args: the run's training arguments (``logging_strategy``).
            state: the trainer state (``global_step``, ``max_steps``).
            control: the trainer control; its ``should_log`` is set at the last step.
            **kwargs: the other objects ``Trainer`` passes to callbacks (unused).
        """
        if args.logging_strategy == "steps" and state.global_step >= state.max_steps:
            control.should_log = True


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------


class PaKATrainer(HubPushMixin, Trainer):
    """Trainer for PaKA post-training; see the module docstring.

    Args:
        model: a :class:`PaKAModel`; built from ``args`` when omitted.
        args: the :class:`PaKAConfig`.
        image_source: a ``datasets.IterableDataset`` of undecoded images (column ``image``); loaded
            from ``args.dataset_name`` when omitted.
        image_processor: saved with checkpoints and the exported backbone; by default the student's own
            (the checkpoint's, or its family's reference processor), whose mean/std the model normalizes with.
        callbacks: extra ``TrainerCallback``s.

    Example::

        >>> from paka_hf import PaKAConfig, PaKATrainer
        >>> args = PaKAConfig(output_dir="out", model_name_or_path="facebook/dinov2-with-registers-small",
        ...                   dataset_name="path/to/images", max_steps=1000, use_lora=True, learning_rate=1e-4)
        >>> trainer = PaKATrainer(args=args)
        >>> trainer.train()
        >>> trainer.export_backbone()  # out/: AutoModel.from_pretrained("out") loads it (LoRA: merged, + out/adapter)
    """

    _tag_names = list(TAGS)
    _paper = {"title": PAPER_TITLE, "id": PAPER_ID}
    # compute_loss returns a per-batch mean: Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PaKAModel | None = None,
        args: PaKAConfig | None = None,
        image_source=None,
        image_processor=None,
        callbacks: list[TrainerCallback] | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, PaKAConfig):
            raise TypeError(f"PaKATrainer needs a PaKAConfig as args, got {type(args).__name__}")
        if model is None or image_source is None:
            args.check_local_paths()  # a mistyped folder is "no such folder", never a Hub lookup
        if model is None:
            # Seed before building, as Trainer seeds before its model_init: the head's init draws from the RNG.
            enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
            model = build_model(args)
        if not isinstance(model, PaKAModel):
            raise TypeError(f"PaKATrainer trains a PaKAModel, got {type(model).__name__}; use build_model(config)")
        if image_source is None:
            image_source = load_image_source(
                args.dataset_name,
                args.dataset_config_name,
                args.dataset_split,
                args.image_column_name,
                streaming=args.streaming,
                revision=args.dataset_revision,
                token=args.hub_token,
                dataset_format=args.dataset_format,
            )
        if image_processor is None:
            image_processor = model.student.image_processor
        self.image_source = image_source
        self.view_transform = build_transform(args, model.student.patch_size)
        self.ema_callback = TeacherEMACallback()
        self.weight_decay_callback = WeightDecayScheduleCallback()
        self.interrupt_guard = InterruptGuard()
        self.collapse_callback = CollapseGuardCallback(
            CollapseGuard(
                args.collapse_action,
                args.collapse_cosine_rise,
                args.collapse_rank_ratio,
                cause=(
                    f"learning rate {args.learning_rate:g}, "
                    + (f"LoRA learning rate {args.lora_learning_rate:g}, " if args.lora_learning_rate else "")
                    + f"head learning rate {args.head_learning_rate:g}, teacher momentum {args.teacher_momentum:g}"
                ),
            ),
            reduce_sum=(lambda t: self.accelerator.reduce(t, reduction="sum")) if args.world_size > 1 else None,
            last_checkpoint=self._last_checkpoint_line,
        )
        super().__init__(
            model=model,
            args=args,
            train_dataset=self._make_stream(args, None),
            data_collator=PaKACollator(),
            processing_class=image_processor,
            # The EMA step first, then the guard, which may stop the run before Trainer logs or saves the step.
            callbacks=[
                EpochCallback(),
                self.ema_callback,
                self.weight_decay_callback,
                self.collapse_callback,
                FinalStepLogCallback(),
                self.interrupt_guard,
                *(callbacks or []),
            ],
            **kwargs,
        )
        self.parameter_counts = parameter_counts(model)
        logger.info(
            "trainable parameters: %s of %s (%.2f%%)",
            f"{self.parameter_counts['trainable_parameters']:,}",
            f"{self.parameter_counts['total_parameters']:,}",
            100.0 * self.parameter_counts["trainable_parameters"] / max(1, self.parameter_counts["total_parameters"]),
        )
        self.fsdp: FSDPPlan | None = fsdp_plan(args, self.accelerator)
        if self.fsdp is not None:
            self._shard(model)
        elif args.world_size > 1:
            logger.info("DDP over %d processes: every process holds the whole model", args.world_size)
        self.stream_state = StreamState.fresh(args.dataloader_num_workers, args.world_size)
        self._resume_stream_state: StreamState | None = None
        self._reset_log_accumulators()
        self._images_seen = 0  # this process, this session (training_step)
        self._seen_keys: list[str] = []
        self._skipped_pending: list[dict[str, str]] = []  # this process's skipped images, not yet listed
        self._skipped_listed: set[str] = set()  # process zero: the images output_dir's list holds
        self._train_start = None
        self._totals_before = RunTotals()  # from the checkpoint resumed, over every process
        self._totals: RunTotals | None = None  # last gathered over every process (checkpoint saves, end of train)

    # ---- sharding -----------------------------------------------------------------------------

    def _shard(self, model: PaKAModel) -> None:
        """Shard student and teacher with FSDP2 (:func:`~paka_hf.modeling.sharding.shard_paka_model`) and hand
        the sharded model to ``Trainer`` as one that owns its placement and gradient reduction, so that neither
        ``Trainer`` nor Accelerate wraps it in DDP or shards it again; checkpoints and export are this class's."""
        plan = self.fsdp
        ensure_process_group(plan.device_type)
        if plan.activation_checkpointing and not self.args.activation_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        shard_paka_model(model, plan.device_mesh(), plan.settings)
        self.is_fsdp_enabled = False  # Accelerate's FSDP checkpoint and wrapping paths are not used
        self.is_distributed_loading_by_transformers = True
        logger.info(plan.describe())

    @property
    def export_is_collective(self) -> bool:
        """Whether exporting needs every process (a sharded model is gathered first); see :class:`HubPushMixin`."""
        return self.fsdp is not None and self.args.world_size > 1

    @property
    def sharding(self) -> str:
        """The checkpoints' sharding (:func:`~paka_hf.training.checkpoints.check_checkpoint_layout`)."""
        return FSDP2 if self.fsdp is not None else UNSHARDED

    def parallelism(self) -> dict[str, object]:
        """How the processes share the work, as ``training_summary.json`` records it.

        Returns:
            The FSDP plan's summary, or ``{"strategy": "DDP" | "single process", "processes": N}``.
        """
        if self.fsdp is not None:
            return self.fsdp.summary()
        return {"strategy": "DDP" if self.args.world_size > 1 else "single process", "processes": self.args.world_size}

    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self):
        """Gradient accumulation of a sharded model: no reduce-scatter until the window's last micro-batch."""
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    # ---- data ---------------------------------------------------------------------------------

    def _make_stream(self, args: PaKAConfig, state: StreamState | None) -> PaKAViewStream:
        return PaKAViewStream(
            self.image_source,
            self.view_transform,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            shuffle_buffer_size=args.shuffle_buffer_size,
            rank=args.process_index,
            world_size=args.world_size,
            num_workers=args.dataloader_num_workers,
            state=copy.deepcopy(state),
            record_keys=args.record_rank_diagnostics,
            max_image_pixels=args.max_image_pixels,
        )

    def get_train_dataloader(self) -> DataLoader:
        """Our own DataLoader over the view stream (not passed to ``accelerator.prepare``: the stream
        already splits data between processes and workers, and restores its position on resume).

        Its workers ignore Ctrl-C (:func:`ignore_interrupts_in_worker`): the main process alone handles it and
        shuts them down, so an interrupted run prints no worker's traceback.

        Returns:
            The DataLoader over a :class:`PaKAViewStream` resumed at the checkpoint's position, if any.
        """
        stream = self._make_stream(self.args, self._resume_stream_state)
        self.stream_state = copy.deepcopy(stream.state)
        args = self.args
        generator = torch.Generator().manual_seed(args.seed)  # worker seeds must not draw from the global RNG
        return DataLoader(
            stream,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory and torch.cuda.is_available(),
            prefetch_factor=args.dataloader_prefetch_factor if args.dataloader_num_workers > 0 else None,
            persistent_workers=False,
            generator=generator,
            worker_init_fn=ignore_interrupts_in_worker,
        )

    # ---- optimisation ---------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """AdamW (or ``args.optim``) with backbone / LoRA adapters / head × decayed / not decayed groups.

        Not decayed: biases and every parameter with at most one dimension (norms, layer scales, DoRA magnitudes),
        as in DINO (:func:`~paka_hf.training.optimization.optimizer_groups`, which ``benchmarks/gpu_step.py`` uses too).
        The adapters take ``lora_learning_rate`` and ``lora_weight_decay`` when set. The decayed groups on the
        schedule carry ``paka_decay=True`` for the weight-decay schedule.

        Args:
            model: ignored (``Trainer``'s signature); the groups are made from ``self.model``.

        Returns:
            The optimizer (the existing one when already created).
        """
        if self.optimizer is not None:
            return self.optimizer
        model = self.model
        args = self.args
        groups = optimizer_groups(
            model,
            args.learning_rate,
            args.head_learning_rate,
            args.weight_decay,
            lora_learning_rate=args.lora_learning_rate,
            lora_weight_decay=args.lora_weight_decay,
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in ("lr", "weight_decay")}
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
        return self.optimizer

    # ---- the step -------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        """``Trainer.training_step`` after PaKA's bookkeeping: the stream position and skipped images are taken
        out of the batch (on CPU) and recorded, and the images counted.

        Args:
            model: the model being trained.
            inputs: the batch of :class:`PaKACollator`.
            num_items_in_batch: passed on to ``Trainer`` (the loss does not use it).

        Returns:
            The step's loss, detached, as ``Trainer`` returns it.
        """
        if "stream_index" in inputs:  # bookkeeping on CPU tensors, before they move to the device
            self.stream_state.record({key: inputs.pop(key) for key in STREAM_KEYS})
            self._skipped_pending.extend(inputs.pop(SKIPPED_IMAGES_KEY, ()))
        keys = inputs.pop("image_keys", None)
        if keys is not None and self.args.record_rank_diagnostics:
            self._seen_keys.extend(keys)
        batch_images = int(inputs["global_boxes"].shape[0])
        self._images_since_log += batch_images
        self._images_seen += batch_images
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own loss; in training, its CKA and feature-health measures are also accumulated for the
        logs and handed to the collapse guard.

        Args:
            model: the (wrapped) :class:`PaKAModel`.
            inputs: the batch's model inputs.
            return_outputs: also return the :class:`PaKAOutput`.
            num_items_in_batch: unused: the loss is a per-batch mean.

        Returns:
            The loss, or ``(loss, outputs)`` with ``return_outputs``.
        """
        outputs = model(**inputs)
        if model.training:
            self._cka_sum = self._cka_sum + outputs["cka"].detach().float()
            self._cka_batches += 1
            cosine, rank = outputs["mean_patch_cosine"], outputs["effective_rank"]
            # 0-dim sums on the model's device, as the CKA's: no host sync until the log step reads them
            self._cosine_sum = self._cosine_sum + cosine.float()
            self._rank_sum = self._rank_sum + rank.float()
            self.collapse_callback.add(cosine, rank)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    # ---- logging --------------------------------------------------------------------------------

    def _reset_log_accumulators(self) -> None:
        self._cka_sum = torch.zeros(())
        # mean patch cosine and effective rank: sums over the same batches as _cka_sum
        self._cosine_sum = torch.zeros(())
        self._rank_sum = torch.zeros(())
        self._cka_batches = 0
        self._images_since_log = 0
        self._last_log_time = time.perf_counter()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """``Trainer.log`` with PaKA's training figures added to a log that carries the loss: the mean CKA,
        the student's mean patch cosine and effective rank, images per second and images skipped, each
        gathered over the processes.

        Args:
            logs: the figures ``Trainer`` logs.
            start_time: passed on to ``Trainer.log``.
        """
        if "loss" in logs:
            now = time.perf_counter()
            stats = torch.tensor(
                [
                    float(self._cka_sum) if self._cka_batches else 0.0,
                    float(self._cka_batches),
                    float(self._cosine_sum),
                    float(self._rank_sum),
                    float(self._images_since_log),
                    float(self.stream_state.images_skipped),
                ],
                dtype=torch.float64,
                device=self.args.device,
            )
            if self.args.world_size > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            cka_sum, cka_batches, cosine_sum, rank_sum, images, skipped = stats.tolist()
            if cka_batches:
                logs["cka"] = round(cka_sum / cka_batches, 6)
                logs["mean_patch_cosine"] = round(cosine_sum / cka_batches, 4)
                logs["effective_rank"] = round(rank_sum / cka_batches, 3)
            if self.ema_callback.momentum is not None:
                logs["teacher_momentum"] = self.ema_callback.momentum
            if self.weight_decay_callback.value is not None:
                logs["weight_decay"] = round(self.weight_decay_callback.value, 6)
            if self.optimizer is not None:
                logs.update(self._group_learning_rates(logs.get("learning_rate")))
            logs["images_per_second"] = round(images / max(now - self._last_log_time, 1e-9), 2)
            logs["images_skipped"] = int(skipped)
            self._list_skipped_images()
            self._reset_log_accumulators()
        super().log(logs, start_time)

    def _group_learning_rates(self, learning_rate: float | None) -> dict[str, float]:
        """``learning_rate_head`` and ``learning_rate_lora``: the head's and the adapters' learning rates at the step
        ``Trainer``'s ``learning_rate`` (the first group's, read before the scheduler stepped) was logged for.

        The schedule scales every group's peak rate by the same factor (``LambdaLR``), so a group's rate at that step
        is its peak times ``learning_rate`` / the first group's peak. (A group's ``lr`` at log time is already the
        next step's: at the last step of a cosine it is 0 while the step just taken had ``learning_rate``.)
        """
        groups = self.optimizer.param_groups
        first_peak = groups[0].get("initial_lr", groups[0]["lr"])
        rates = {}
        for group in groups:
            name = str(group.get("name"))
            key = "learning_rate_head" if name.startswith("student_head/") else None
            key = "learning_rate_lora" if name.startswith("student_lora/") else key
            if key is None or key in rates:
                continue
            peak = group.get("initial_lr", group["lr"])
            rates[key] = peak * learning_rate / first_peak if learning_rate is not None and first_peak else group["lr"]
        return rates

    # ---- checkpoints and resume -----------------------------------------------------------------
    #
    # What a complete checkpoint is, which one a run resumes and which it removes: paka_hf.training.checkpoints.
    # Here: which process writes or removes, and the barriers that keep every process in step with it.

    def _save_checkpoint(self, model, trial) -> None:
        """``Trainer``'s checkpoint plus the stream state of every process, the run's configuration and
        summary, fsynced; then the completion marker; then rotation (``save_total_limit``)."""
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and folder.exists():
            # Rewriting a folder (a torn save of an earlier attempt): unmark it first, then start it empty so
            # it holds exactly what this save writes (no file of another world size).
            logger.warning("checkpoint folder %s exists; it is rewritten", folder)
            remove_checkpoint(folder)
        self.accelerator.wait_for_everyone()  # no process writes into the folder before it is unmarked
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # Trainer's rotation would run before the marker exists
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            folder / STREAM_STATE_FILE.format(rank=self.args.process_index), json.dumps(self.stream_state.to_dict())
        )
        totals = self._gather_totals()  # a collective: every process is here
        self._list_skipped_images(checkpoint=folder)
        if self.args.should_save:
            self._write_training_config(folder)
            self._write_training_summary(folder, totals, exported=None)
        self.accelerator.wait_for_everyone()  # every file of every process is written ...
        fsync_tree(folder)  # ... and each process has flushed what it sees of them to disk
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_checkpoint_complete(
                folder,
                global_step=self.state.global_step,
                world_size=self.args.world_size,
                num_workers=self.args.dataloader_num_workers,
                sharding=self.sharding,
            )
            self._rotate_complete_checkpoints(keep=folder)
        self.accelerator.wait_for_everyone()

    def _rotate_complete_checkpoints(self, keep: Path) -> None:
        """Keep the ``save_total_limit`` newest complete checkpoints, ``keep`` (just written) always among them
        (:func:`~paka_hf.training.checkpoints.rotate_checkpoints`)."""
        rotate_checkpoints(keep, self.args.save_total_limit)

    def _prepare_output_dir(self, checkpoint: str | None) -> None:
        """Make ``output_dir`` hold only this run's checkpoints before the first save: remove what
        :func:`~paka_hf.training.checkpoints.stale_checkpoints` names (or stop with its :class:`ConfigError`).

        Every process reads the folder; process zero removes; all wait for it.
        """
        doomed, why = stale_checkpoints(self.args.output_dir, checkpoint, self.args.overwrite_output_dir)
        self.accelerator.wait_for_everyone()  # every process has looked before anything is removed
        if doomed and self.args.should_save:
            logger.warning("%s: %s", why, folder_names(doomed))
            for _, path in doomed:
                remove_checkpoint(path)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """A checkpoint's model: ``Trainer``'s ``model.safetensors``, or, sharded, every process's shards
        (:func:`~paka_hf.training.fsdp.save_sharded_model`) with the image processor and the pickled arguments."""
        if self.fsdp is None:
            return super()._save(output_dir, state_dict=state_dict)
        out = Path(output_dir or self.args.output_dir)
        save_sharded_model(self.model, out / MODEL_SHARDS_DIR)
        if self.args.should_save:
            self.processing_class.save_pretrained(out)
            torch.save(self.args, out / TRAINING_ARGS_NAME)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """``Trainer``'s ``optimizer.pt`` and ``scheduler.pt``; sharded, every process's optimizer shards
        (:func:`~paka_hf.training.fsdp.save_sharded_optimizer`) and the scheduler from process zero."""
        if self.fsdp is None:
            return super()._save_optimizer_and_scheduler(output_dir)
        save_sharded_optimizer(self.model, self.optimizer, Path(output_dir) / OPTIMIZER_SHARDS_DIR)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """``Trainer``'s load; sharded, the optimizer's shards and the scheduler."""
        if self.fsdp is None or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_sharded_optimizer(self.model, self.optimizer, Path(checkpoint) / OPTIMIZER_SHARDS_DIR)
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_NAME, weights_only=True))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Strict load of the whole PaKAModel (student, teacher, heads): a missing or renamed tensor is an error.
        Sharded, every process loads its own shards."""
        model = model if model is not None else self.model
        if self.fsdp is not None:
            load_sharded_model(model, Path(resume_from_checkpoint) / MODEL_SHARDS_DIR)
            return
        weights = Path(resume_from_checkpoint) / WEIGHTS_FILE
        if not weights.is_file():
            raise MissingPathError(f"{weights} not found: {resume_from_checkpoint} is not a PaKA checkpoint")
        state = safetensors.torch.load_file(str(weights), device="cpu")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ConfigError(
                f"checkpoint {resume_from_checkpoint} does not match this model (different architecture or head "
                f"settings?): {error}"
            ) from error

    def resolve_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """``True``/"latest" → newest complete checkpoint of ``output_dir``; a path must be complete
        (:func:`~paka_hf.training.checkpoints.resolve_checkpoint`, which says what raises).

        Args:
            resume_from_checkpoint: ``None``/``False``, ``True``/``"latest"``, or a checkpoint folder.

        Returns:
            The checkpoint folder to resume from, or ``None`` for a fresh run.
        """
        return resolve_checkpoint(self.args.output_dir, resume_from_checkpoint)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train`` with PaKA's checks and state around it: the checkpoint is resolved (only complete
        ones resume), the data stream's position, run totals and the collapse guard's start are restored from
        it, the data is checked and the output folder prepared before the first step; afterwards the skipped
        images are listed and the totals gathered over the processes.

        Args:
            resume_from_checkpoint: as :meth:`resolve_checkpoint`.
            **kwargs: passed on to ``Trainer.train``.

        Returns:
            ``Trainer.train``'s ``TrainOutput``.

        Raises:
            ConfigError: no usable checkpoint (:meth:`resolve_checkpoint`), a checkpoint written by fewer
                processes or of another model, or an output folder holding stale checkpoints.
            MissingPathError: the checkpoint path does not exist.
            EmptyDatasetError: a data stream holds no decodable image.
            FeatureCollapseError: with ``collapse_action: stop``, the features collapse.
            KeyboardInterrupt: on Ctrl-C (SIGINT), at once or, where a finalizer swallowed it, at the next step
                boundary or the end of the loop (:class:`~paka_hf.training.interrupts.InterruptGuard`).
        """
        checkpoint = self.resolve_checkpoint(resume_from_checkpoint)
        self._resume_stream_state = None
        self._totals_before = RunTotals()
        if checkpoint is not None:
            check_checkpoint_layout(checkpoint, world_size=self.args.world_size, sharding=self.sharding)
            state_file = Path(checkpoint) / STREAM_STATE_FILE.format(rank=self.args.process_index)
            if not state_file.is_file():
                raise ConfigError(
                    f"{state_file} is missing: {checkpoint} was written by fewer processes; resume with the "
                    "number of processes that wrote it"
                )
            self._resume_stream_state = StreamState.from_dict(json.loads(state_file.read_text()))
            self._totals_before = RunTotals.read(Path(checkpoint) / TRAINING_SUMMARY_FILE)
            # The guard compares with the checkpoint as first loaded, not with the weights resumed.
            self.collapse_callback.guard.restore(*feature_health_start(Path(checkpoint) / TRAINING_SUMMARY_FILE))
        self._check_data_before_training()
        self._prepare_output_dir(checkpoint)
        self._restore_skipped_images(checkpoint)
        self._images_seen = 0
        self._totals = None
        self._train_start = time.perf_counter()
        self._reset_log_accumulators()
        with self.interrupt_guard:  # a Ctrl-C that a finalizer swallowed still stops the run at the next step
            output = super().train(resume_from_checkpoint=checkpoint, **kwargs)
        self.interrupt_guard.raise_if_requested()
        self._list_skipped_images()
        self._totals = self._gather_totals()
        if self.args.record_rank_diagnostics:
            self._write_rank_diagnostics()
        return output

    def _restore_skipped_images(self, checkpoint: str | None) -> None:
        """Start output_dir's list of skipped images (:data:`~paka_hf.utils.files.SKIPPED_IMAGES_FILE`) as the
        resumed checkpoint's copy, so images listed after that checkpoint, which the resumed stream skips again,
        are listed once; a fresh run starts with no list. Process zero alone writes the list."""
        self._skipped_pending, self._skipped_listed = [], set()
        if not self.args.should_save:
            return
        path = Path(self.args.output_dir) / SKIPPED_IMAGES_FILE
        records = read_skipped_images(Path(checkpoint) / SKIPPED_IMAGES_FILE) if checkpoint else []
        path.unlink(missing_ok=True)
        if records:
            append_skipped_images(path, records)
        self._skipped_listed = {record["image"] for record in records}

    def _list_skipped_images(self, checkpoint: Path | None = None) -> None:
        """Gather the images every process skipped since the last call (a collective call); process zero appends
        those new to the list to output_dir's :data:`~paka_hf.utils.files.SKIPPED_IMAGES_FILE` and names the first
        few in one warning. With ``checkpoint``, it also copies the list into that checkpoint folder (for a resume).
        """
        pending, self._skipped_pending = self._skipped_pending, []
        if self.args.world_size > 1:
            from accelerate.utils import gather_object

            pending = gather_object(pending)
        if not self.args.should_save:
            return
        path = Path(self.args.output_dir) / SKIPPED_IMAGES_FILE
        new = []
        for record in pending:  # an image is skipped again each epoch: listed once
            if record["image"] not in self._skipped_listed:
                self._skipped_listed.add(record["image"])
                new.append(record)
        if new:
            append_skipped_images(path, new)
            logger.warning(skipped_images_message(new, len(self._skipped_listed), path))
        if checkpoint is not None and path.is_file():
            write_text_atomic(Path(checkpoint) / SKIPPED_IMAGES_FILE, path.read_text(encoding="utf-8"))

    def _gather_totals(self) -> RunTotals:
        """This run's totals so far over every process and every resume (a collective call).

        images_seen = Σ_processes (images trained this session) + images_seen before the resume;
        images_skipped = Σ_processes (the stream's skip count, which a resume restores); runtime = max over
        processes of this session's wall time + runtime before the resume."""
        runtime = time.perf_counter() - self._train_start if self._train_start is not None else 0.0
        local = torch.tensor(
            [[float(self._images_seen), float(self.stream_state.images_skipped), runtime]],
            dtype=torch.float64,
            device=self.args.device,
        )
        rows = self.accelerator.gather(local) if self.args.world_size > 1 else local
        seen, skipped = rows[:, 0].sum().item(), rows[:, 1].sum().item()
        before = self._totals_before
        return RunTotals(
            images_seen=before.images_seen + int(seen),
            images_skipped=int(skipped),
            train_runtime_s=before.train_runtime_s + float(rows[:, 2].max().item()),
        )

    def _check_data_before_training(self) -> None:
        """Before the first collective operation: every process checks its data streams and learns the others'
        results, so an empty or too small dataset stops every process with the same message (no process waits
        in a collective for one that has failed). Then one process per machine estimates the memory of that
        machine's shuffle buffers and warns when it is too much."""
        empty = self._make_stream(self.args, None).streams_without_images()
        if self.args.world_size > 1:
            from accelerate.utils import gather_object

            empty = gather_object(empty)
        if empty:
            raise empty_stream_error(empty, self.args.world_size, self.args.dataloader_num_workers)
        if self.args.local_process_index == 0:
            processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", self.args.world_size))
            streams_here = processes_here * max(1, self.args.dataloader_num_workers)
            warn_if_shuffle_buffers_exceed_memory(self.image_source, self.args.shuffle_buffer_size, streams_here)

    def _write_rank_diagnostics(self) -> None:
        folder = Path(self.args.output_dir) / RANK_DIAGNOSTICS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        # sharded: every process gathers (and keeps) the whole tensors, so that the digests compare across processes
        student, teacher = (
            gather_full_state(net, keep=True) if self.fsdp else net for net in (model.student, model.teacher)
        )
        write_text_atomic(
            folder / RANK_DIAGNOSTICS_FILE.format(rank=self.args.process_index),
            json.dumps(
                {
                    "rank": self.args.process_index,
                    "images": self._seen_keys,
                    "student_sha256": state_checksum(student),
                    "teacher_sha256": state_checksum(teacher),
                    "global_step": self.state.global_step,
                },
                indent=1,
            ),
        )

    # ---- export ---------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints (internal calls) keep the whole PaKAModel; a user's ``save_model`` exports the backbone.

        Args:
            output_dir: the folder; ``args.output_dir`` when ``None``.
            _internal_call: ``True`` when ``Trainer`` saves a checkpoint.
        """
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        self.export_backbone(output_dir)

    def export_backbone(self, output_dir: str | os.PathLike | None = None, network: str | None = None) -> Path:
        """Write the ``export`` network (student or teacher) as a plain ``transformers`` model —
        ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` — plus
        ``training_config.yaml`` and ``training_summary.json``. With ``use_lora`` the model is the merged one
        and the adapter alone goes to ``adapter/`` (:func:`paka_hf.modeling.lora.export_lora_backbone`). ``network`` ('student' or 'teacher')
        overrides ``args.export`` for this call, e.g. to write the other network beside the exported one.

        The configuration and summary of an earlier export are removed before the weights are written and
        the new ones written (atomically) after, so an interrupted export never leaves a configuration that
        describes other weights. The summary's totals are those last gathered over every process (at the
        last checkpoint save, or the end of ``train``). Process zero writes. Unsharded, it is no collective
        call, so the Hub callback may call it from process zero alone; sharded (FSDP2), every process must call it:
        the exported network is gathered first (:meth:`_gather_for_export`, and :attr:`export_is_collective`).

        Args:
            output_dir: the folder; ``args.output_dir`` when ``None``.
            network: ``student`` or ``teacher``; ``args.export`` when ``None``.

        Returns:
            The folder written (on every process; only process zero writes).

        Raises:
            ValueError: ``network`` is neither ``student`` nor ``teacher``.
        """
        output_dir = Path(output_dir or self.args.output_dir)
        which = self.args.export if network is None else network
        if which not in ("student", "teacher"):
            raise ValueError(f"network must be 'student' or 'teacher', got {network!r}")
        model = self.accelerator.unwrap_model(self.model)
        lora = is_lora_backbone(model.student)
        if self.fsdp is not None:
            exported, adapters = self._gather_for_export(model, which)  # every process takes part
        else:
            exported = model.student if lora or which == "student" else model.teacher
            adapters = model.teacher.trained_state() if lora and which == "teacher" else None
        if not self.args.should_save:
            return output_dir
        for name in (TRAINING_CONFIG_FILE, TRAINING_SUMMARY_FILE):
            (output_dir / name).unlink(missing_ok=True)
        if lora:
            export_lora_backbone(exported, output_dir, self.processing_class, trained_state=adapters)
        else:
            if (output_dir / ADAPTER_DIR).is_dir():  # an earlier LoRA run's adapter would describe other weights
                shutil.rmtree(output_dir / ADAPTER_DIR)
            save_backbone(exported, output_dir, image_processor=self.processing_class)
        self._write_training_config(output_dir)
        self._write_training_summary(output_dir, self._totals, exported=which)
        return output_dir

    def _gather_for_export(self, model: PaKAModel, which: str):
        """A sharded model's exported network, whole, on process zero (a collective call; the others get ``None``).

        Tensors are gathered one at a time (:func:`~paka_hf.modeling.sharding.gather_full_state`) into a plain copy
        of the backbone built on the meta device (:func:`~paka_hf.modeling.sharding.unsharded_backbone`): process
        zero holds one whole copy of the exported network on its CPU, the others nothing. A LoRA teacher's export is
        the student's frozen base with the teacher's trained tensors, gathered likewise.

        Returns:
            ``(backbone, trained_state)``: the copy (the student's for LoRA) and, for a LoRA teacher, its whole
            trained tensors by student names; ``(None, None)`` on the other processes.
        """
        keep = self.args.process_index == 0
        lora = is_lora_backbone(model.student)
        network = model.student if lora or which == "student" else model.teacher
        state = gather_full_state(network, keep=keep)
        adapters = None
        if lora and which == "teacher":
            adapters = gather_full_tensors(model.teacher.trained_state(), keep=keep)
        if not keep:
            return None, None
        settings = self.args.lora_settings() if lora else None
        return unsharded_backbone(model.student, state, lora_settings=settings), adapters

    def _write_training_config(self, output_dir: str | os.PathLike) -> None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / TRAINING_CONFIG_FILE, yaml.safe_dump(self.args.paka_dict(), sort_keys=True))

    def _write_training_summary(self, output_dir: Path, totals: RunTotals | None, exported: str | None) -> None:
        """``training_summary.json``: compute and data totals of the run so far (``None`` where not gathered)."""
        write_training_summary(
            output_dir,
            totals,
            global_step=self.state.global_step,
            device=_device_name(self.args.device),
            num_processes=self.args.world_size,
            exported=exported,
            feature_health=self.collapse_callback.guard.summary(),
            parallelism=self.parallelism(),
            parameters=self.parameter_counts,
        )

    def _last_checkpoint_line(self) -> str:
        """Where a stopped run leaves the user: its last complete checkpoint, or that there is none."""
        complete = complete_checkpoints(self.args.output_dir)
        if not complete:
            return f"no complete checkpoint in {self.args.output_dir} yet"
        return f"the last complete checkpoint is {complete[-1]}, from before the collapse"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({os.cpu_count()} cores)"


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: ignore SIGINT.

    Ctrl-C in a terminal sends SIGINT to the whole foreground process group, the loader's workers included; a
    worker would stop wherever it is (decoding an image, rendering views) and print its own traceback. Ignoring
    it leaves the interrupt to the main process, which ends training and shuts the workers down. Module-level so
    that it pickles for the ``spawn`` start method.

    The main process may also be interrupted while it fetches a batch's tensors from the worker: those travel as
    file descriptors through :mod:`multiprocessing.resource_sharer`, whose serving thread reports a reader that
    vanished mid-handshake (``EOFError`` or ``ConnectionError``) through ``sys.excepthook``, as a traceback on the
    terminal. The worker keeps ``sys.excepthook`` for everything else and stays silent about that one case
    (:func:`_silence_vanished_reader`): the batch belonged to a run that is stopping.

    Args:
        worker_id: the worker's index (unused: every worker ignores SIGINT alike).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _silence_vanished_reader(sys.excepthook)


def _silence_vanished_reader(excepthook):
    """Wrap ``excepthook`` so that a reader's disconnect (``EOFError``, ``ConnectionError``) prints nothing.

    Only the worker's resource-sharing thread reaches ``sys.excepthook`` with those: the worker's own errors travel
    to the main process through the DataLoader, never through the hook.
    """

    def hook(kind, value, traceback):
        if issubclass(kind, (EOFError, ConnectionError)):
            return
        excepthook(kind, value, traceback)

    return hook
