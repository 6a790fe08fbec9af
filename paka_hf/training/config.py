"""``PaKAConfig``: every setting of a PaKA run, as ``TrainingArguments`` plus the method's fields.

One dataclass drives ``scripts/train.py --help``, the YAML configs in ``configs/`` (any field,
overridable on the command line), validation (``__post_init__``, with errors that say what to
change) and the training configuration stored beside the exported model.

Defaults are the paper-scale recipe of docs/METHOD.md §7 (NeCo's published optimisation settings): AdamW,
lr 1e-5 (backbone) and 1e-4 (head), cosine to 0, weight decay cosine 0.04 → 0.5 with biases and
1-D parameters (norms, layer scales) excluded, batch 64, drop-path 0.1 on the student, teacher
momentum 0.9995 → 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from paka_hf.losses import (
    KERNELS,
    LOSSES,
    NECO_QUEUE_LENGTH,
    NECO_QUEUE_PER_IMAGE,
    NECO_STEEPNESS,
    SCOPES,
    NeCoSettings,
)
from paka_hf.modeling.backbones import SUPPORTED_MODEL_TYPES
from paka_hf.modeling.lora import LORA_VARIANTS, LoRASettings
from paka_hf.modeling.model import STUDENT_VIEWS
from paka_hf.modeling.teacher import DEFAULT_TEACHER_MOMENTUM, check_teacher_momentum
from paka_hf.utils.errors import (
    ConfigError,
    check_choice,
    check_fraction,
    check_patch_multiple,
    check_positive_int,
    check_roi_size,
)
from paka_hf.utils.imaging import DEFAULT_MAX_IMAGE_PIXELS
from paka_hf.utils.paths import check_local_path
from paka_hf.views.glim import (
    CROP_RATIO,
    GLOBAL_SCALE,
    GLOBAL_SIZE,
    LOCAL_SCALE,
    LOCAL_SIZE,
    MAX_TRIES,
    MIN_INTERSECTION,
    MIN_INTERSECTION_MEANING,
    N_LOCAL,
    RENDERINGS,
)

EXPORTS = ("student", "teacher")
#: How a local dataset folder is read (``dataset_format``): by the format most of its files have, or as one of
#: ``datasets``' builders (:func:`paka_hf.training.data.load_image_source`).
DATASET_FORMATS = ("auto", "imagefolder", "parquet", "webdataset")
#: What the collapse guard (paka_hf.training.collapse_guard) does when the student's patch features collapse.
COLLAPSE_ACTIONS = ("stop", "warn")
#: The collapse limits: the share of its distance to 1 that the mean patch cosine may close, and the share of its
#: starting value below which the effective rank may not fall (paka_hf.training.collapse_guard explains both).
DEFAULT_COLLAPSE_COSINE_RISE = 0.3
DEFAULT_COLLAPSE_RANK_RATIO = 0.7


def check_collapse_limits(cosine_rise: float, rank_ratio: float) -> None:
    """Raise :class:`ConfigError` unless ``0 < cosine_rise <= 1`` and ``0 < rank_ratio < 1``.

    Args:
        cosine_rise: ``collapse_cosine_rise``.
        rank_ratio: ``collapse_rank_ratio``.

    Raises:
        ConfigError: either is out of its range.
    """
    if not 0.0 < cosine_rise <= 1.0:
        raise ConfigError(f"collapse_cosine_rise must be in (0, 1] (a share of the distance to 1), got {cosine_rise}")
    if not 0.0 < rank_ratio < 1.0:
        raise ConfigError(f"collapse_rank_ratio must be in (0, 1) (a share of the starting rank), got {rank_ratio}")


#: The LoRA options that mean nothing without use_lora, with their defaults: a run that changes one without
#: use_lora stops at start-up (lora_rank, lora_alpha... predate the rule and are ignored without use_lora).
LORA_OPTION_DEFAULTS = {
    "lora_variant": "lora",
    "lora_unfrozen_blocks": 0,
    "lora_train_norms": False,
    "lora_learning_rate": None,
    "lora_weight_decay": None,
}

#: Fields read as a local path when they look like one (paka_hf.utils.paths.looks_like_local_path).
PATH_FIELDS = ("model_name_or_path", "dataset_name")
#: A field whose name ends so holds a secret (the rule TrainingArguments.to_dict masks by).
SECRET_FIELD_SUFFIX = "_token"


def secret_fields(names) -> list[str]:
    """The names among ``names`` that hold secrets (``hub_token``, ...).

    Args:
        names: field names.

    Returns:
        Those ending in :data:`SECRET_FIELD_SUFFIX`, in their order.
    """
    return [name for name in names if name.endswith(SECRET_FIELD_SUFFIX)]


def _help(text: str, choices: tuple[str, ...] | None = None, **kwargs) -> Any:
    """A field with its ``--help`` text and, for an enumerated setting, its ``choices``: ``HfArgumentParser``
    passes the metadata to ``add_argument``, so ``--help`` lists them and a bad value fails at parse time, and
    ``__post_init__`` checks the same tuple for a config built in Python."""
    metadata = {"help": text} if choices is None else {"help": text, "choices": tuple(choices)}
    return field(metadata=metadata, **kwargs)


@dataclass
class PaKAConfig(TrainingArguments):
    """Training arguments for PaKA post-training (Yeo, Jang, Kim, arXiv 2509.05606).

    Example::

        >>> from paka_hf import PaKAConfig
        >>> args = PaKAConfig(output_dir="out", dataset_name="path/to/images", max_steps=1000, loss="cka")
        >>> args.teacher_momentum, args.global_size, args.local_size
        (0.9995, 224, 98)
        >>> PaKAConfig(output_dir="out", max_steps=10, loss="mse")  # doctest: +SKIP
        paka_hf.utils.errors.ConfigError: loss must be one of ('cka', 'gram', 'cosine', 'neco'), got 'mse'

    Args:
        **kwargs: every field of ``transformers.TrainingArguments`` and the PaKA fields below, each described
            by its ``help`` metadata (``train.py --help`` prints them).

    Raises:
        ConfigError: a value out of range or not among its field's choices, or settings that do not go
            together (checked in ``__post_init__``, so a config built in Python is checked as the command
            line's is).
    """

    # ---- model ------------------------------------------------------------------------------
    model_name_or_path: str = _help(
        "Backbone checkpoint, a Hub id or a local directory, of a supported model type: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)} (full or vision-only; the vision tower is trained).",
        default="facebook/dinov2-with-registers-small",
    )
    model_revision: str | None = _help("Hub revision (branch, tag or commit) of the model.", default=None)
    drop_path_rate: float = _help("Stochastic depth on the student backbone.", default=0.1)
    attn_implementation: str = _help("Attention kernel of the backbone ('sdpa' or 'eager').", default="sdpa")
    student_rope_augment: bool = _help(
        "DINOv3 (RoPE) backbones only: keep the checkpoint's random RoPE coordinate augmentation (its config's "
        "pos_embed_shift / pos_embed_jitter / pos_embed_rescale; 2.0 rescale in the released models) on the student "
        "while training. Off: the student's patch coordinates are exact, like the eval-mode teacher's. Either way "
        "resume is bit-exact (the draws come from the global RNG, which checkpoints save).",
        default=False,
    )

    # ---- data -------------------------------------------------------------------------------
    dataset_name: str = _help(
        "Images to train on: a Hub dataset id, or a local folder of images, parquet or webdataset (.tar) files, "
        "or one such file.",
        default="detection-datasets/coco",
    )
    dataset_config_name: str | None = _help("Configuration (subset) of the Hub dataset.", default=None)
    dataset_split: str = _help("Split of the dataset to train on.", default="train")
    image_column_name: str = _help("Column that holds the images.", default="image")
    dataset_revision: str | None = _help("Hub revision of the dataset.", default=None)
    dataset_format: str = _help(
        "How to read a local folder: 'auto' (the format most of its files have: images, .parquet or .tar shards; a "
        "warning names the choice when it mixes them), or 'imagefolder', 'parquet', 'webdataset'.",
        choices=DATASET_FORMATS,
        default="auto",
    )
    streaming: bool = _help("Stream the dataset instead of downloading it first.", default=True)
    shuffle_buffer_size: int = _help(
        "Rows of the streaming shuffle buffer of each data stream (0 = no shuffling). Rows are undecoded: memory on a "
        "machine is about processes x dataloader_num_workers x shuffle_buffer_size x the mean encoded image size "
        "(8 x 4 x 1000 x 160 KB of COCO JPEG = 5 GB; a local folder's rows are paths). A warning says when that "
        "exceeds 1/8 of the RAM.",
        default=1_000,
    )
    max_image_pixels: int = _help(
        "Images whose header announces more pixels are skipped (and counted in images_skipped) without being "
        "decoded: decompression bombs and giant scans. Default: Pillow's MAX_IMAGE_PIXELS; 0 = no limit.",
        default=DEFAULT_MAX_IMAGE_PIXELS,
    )
    max_image_side: int | None = _help(
        "Longer side (pixels) to which a larger decoded image is downscaled before its views are cut, in both view "
        "renderings; bounds the padded batch of view_rendering 'device' to batch x side x side x 3 bytes. Default: "
        "twice the side at which the smallest crop still covers its view's pixels (1088 for 224/98 views, 2432 for "
        "518/98); 0 = never downscale.",
        default=None,
    )
    dataset_num_images: int = _help(
        "Images per epoch, used with num_train_epochs to derive max_steps when max_steps is not set "
        "(COCO train2017: 118287).",
        default=0,
    )
    record_rank_diagnostics: bool = _help(
        "Write rank_diagnostics/rank{r}.json to output_dir: the images each process saw and checksums of its "
        "student and teacher weights (for checking multi-process runs).",
        default=False,
    )

    # ---- views (GLIM) -----------------------------------------------------------------------
    global_size: int = _help(
        "Side of the teacher's global views in pixels (multiple of the patch size).", default=GLOBAL_SIZE
    )
    local_size: int = _help(
        "Side of the student's local views in pixels (multiple of the patch size).", default=LOCAL_SIZE
    )
    n_local: int = _help("Local views per image; local j pairs with global j mod 2.", default=N_LOCAL)
    global_scale: list[float] = _help("Area scale range of global crops.", default_factory=lambda: list(GLOBAL_SCALE))
    local_scale: list[float] = _help("Area scale range of local crops.", default_factory=lambda: list(LOCAL_SCALE))
    crop_ratio: list[float] = _help("Aspect-ratio range of all crops.", default_factory=lambda: list(CROP_RATIO))
    min_intersection: float = _help(
        "Minimum containment |L ∩ G| / |L| of a local crop in its global crop (0 = plain random crops).",
        default=MIN_INTERSECTION,
    )
    max_box_tries: int = _help("Candidate boxes drawn per crop before the fallback.", default=MAX_TRIES)
    flip: bool = _help("Random horizontal flips (recorded and undone on the feature grid).", default=False)
    teacher_augment: bool = _help("Photometric augmentation on the teacher's views too (ablation).", default=False)
    view_rendering: str = _help(
        "Where the views are rendered: 'cpu' (data workers, Pillow + torchvision, one view at a time) or 'device' "
        "(workers only decode and draw the random parameters; the model crops, resizes and augments the whole batch "
        "on its device, with the same arithmetic). 'device' needs far fewer CPU cores per GPU.",
        choices=RENDERINGS,
        default="cpu",
    )
    student_views: str = _help(
        "Views the student encodes: 'local', or 'all' (its global views are also aligned with the other global).",
        choices=STUDENT_VIEWS,
        default="local",
    )

    # ---- method -----------------------------------------------------------------------------
    roi_size: int = _help("Side of the RoIAlign grid per pair (N = roi_size² tokens).", default=7)
    loss: str = _help(
        "'cka' (PaKA), 'gram' (Gram matching), 'cosine' (feature distillation) or 'neco' (NeCo's patch-neighbour "
        "sorting loss, the neco_* fields).",
        choices=LOSSES,
        default="cka",
    )
    kernel: str = _help(
        "Kernel for cka/gram: 'linear' or 'rbf' (median heuristic).", choices=KERNELS, default="linear"
    )
    kernel_scope: str = _help(
        "'pair': one kernel per crop pair; 'batch': one over the whole batch.", choices=SCOPES, default="pair"
    )
    use_head: bool = _help(
        "Train through a projection head (its teacher is an EMA too); never exported.", default=True
    )
    head_hidden_dim: int = _help("Hidden width of the projection head.", default=2048)
    head_out_dim: int = _help("Output width of the projection head.", default=256)
    head_learning_rate: float = _help("Peak learning rate of the projection head.", default=1e-4)
    weight_decay_end: float = _help("Final weight decay of the cosine weight-decay schedule.", default=0.5)
    teacher_momentum: float = _help(
        "Fraction of the teacher kept at each EMA step at the start; follows a cosine to 1.0.",
        default=DEFAULT_TEACHER_MOMENTUM,
    )
    export: str = _help(
        "Network written to output_dir at the end: 'student' or 'teacher'.", choices=EXPORTS, default="student"
    )
    collapse_action: str = _help(
        "What to do when the student's patch features collapse (mean patch cosine up, effective rank down, against "
        "the first batch; docs/RELIABILITY.md): 'stop' the run with one line, or 'warn' and go on.",
        choices=COLLAPSE_ACTIONS,
        default="stop",
    )
    collapse_cosine_rise: float = _help(
        "Collapse limit of the mean patch cosine: the share of its distance to 1 it may close (0.3: 0.5 -> 0.65).",
        default=DEFAULT_COLLAPSE_COSINE_RISE,
    )
    collapse_rank_ratio: float = _help(
        "Collapse limit of the effective rank of the patch features: the share of its starting value it must keep.",
        default=DEFAULT_COLLAPSE_RANK_RATIO,
    )

    # ---- NeCo (loss: neco; defaults: NeCo's published configs) --------------------------------
    neco_student_steepness: float = _help(
        "Steepness of the student's differentiable sort (loss 'neco').", default=NECO_STEEPNESS
    )
    neco_teacher_steepness: float = _help(
        "Steepness of the teacher's differentiable sort (loss 'neco').", default=NECO_STEEPNESS
    )
    neco_queue_length: int = _help(
        "Teacher tokens kept in NeCo's reference queue (0 = draw the reference tokens from the batch only).",
        default=NECO_QUEUE_LENGTH,
    )
    neco_queue_per_image: int = _help(
        "Teacher tokens pushed to NeCo's queue per image and step.", default=NECO_QUEUE_PER_IMAGE
    )

    # ---- LoRA (use_lora: adapters on a frozen base; paka_hf.modeling.lora, needs pip install 'paka_hf[peft]') ----------
    use_lora: bool = _help(
        "Train LoRA adapters (and the head) on a frozen base instead of every weight. The EMA teacher keeps a copy "
        "of the adapters only and shares the student's base weights in memory. The export is the merged model, "
        "with the adapter alone in output_dir/adapter. A learning rate about 10x the full run's suits adapters.",
        default=False,
    )
    lora_rank: int = _help("Rank r of each LoRA adapter.", default=16)
    lora_alpha: float = _help("LoRA scaling alpha: the adapter's update is scaled by alpha / r.", default=16.0)
    lora_dropout: float = _help("Dropout on the adapters' input (student only).", default=0.0)
    lora_target_modules: list[str] | None = _help(
        "Short names of the linear layers to wrap in every transformer block (e.g. q_proj v_proj), or the group "
        "names 'attention' (every attention projection, in any family's names) and 'mlp'; default: the family's "
        "attention and MLP projections (paka_hf.modeling.backbones.lora_target_modules).",
        default=None,
    )
    lora_variant: str = _help(
        "The adapter: 'lora' (update scaled by alpha / r), 'rslora' (scaled by alpha / sqrt(r); same parameters) or "
        "'dora' (weight-decomposed: a trained magnitude per output row beside the low-rank direction; slower steps).",
        choices=LORA_VARIANTS,
        default="lora",
    )
    lora_unfrozen_blocks: int = _help(
        "Train the last N transformer blocks fully (every weight, no adapter in them; ExPLoRA); their EMA teacher "
        "keeps its own copy of them, and the exported adapter carries them (peft modules_to_save).",
        default=0,
    )
    lora_train_norms: bool = _help(
        "Also train the LayerNorms (and DINOv2/DINOv3 LayerScales) of the blocks that carry adapters, with their own "
        "EMA in the teacher; the exported adapter carries them (peft modules_to_save).",
        default=False,
    )
    lora_learning_rate: float | None = _help(
        "Peak learning rate of the adapters (unset: learning_rate). Unfrozen blocks and norms train at learning_rate.",
        default=None,
    )
    lora_weight_decay: float | None = _help(
        "Constant weight decay of the adapters' matrices (unset: the weight_decay -> weight_decay_end schedule, as "
        "every other decayed weight). DoRA magnitudes, norms and biases take none.",
        default=None,
    )

    # ---- Trainer defaults changed for PaKA --------------------------------------------------
    learning_rate: float = _help("Peak learning rate of the backbone.", default=1e-5)
    weight_decay: float = _help("Initial weight decay (cosine schedule to weight_decay_end).", default=0.04)
    lr_scheduler_type: str = _help("Learning-rate schedule.", default="cosine")
    per_device_train_batch_size: int = _help("Images per device and step.", default=64)
    logging_steps: float = _help("Log every N optimizer steps.", default=10)
    save_steps: float = _help("Checkpoint every N optimizer steps.", default=1000)
    save_total_limit: int | None = _help("Keep at most this many checkpoints.", default=2)
    remove_unused_columns: bool = _help("Must stay False: the collator needs the raw image column.", default=False)
    ignore_data_skip: bool = _help(
        "Kept True: the stream restores its own position on resume instead of replaying batches.", default=True
    )
    dataloader_num_workers: int = _help("Data-loading worker processes per device.", default=4)
    logging_nan_inf_filter: bool = _help(
        "Off: Trainer's filter reads the loss on the host after every micro-batch (a device sync per step) "
        "and only hides a NaN/inf loss from the logs; the update is applied either way.",
        default=False,
    )
    overwrite_output_dir: bool = _help(
        "Start a new run in an output_dir that holds checkpoints of an earlier one: remove those checkpoints (and "
        "nothing else) first. Without it such a run stops at start-up; --resume_from_checkpoint latest continues "
        "the earlier run instead.",
        default=False,
    )
    ddp_find_unused_parameters: bool | None = _help(
        "Every trainable parameter is used each step (the mask token is frozen), so DDP need not search.",
        default=False,
    )

    def __post_init__(self):
        self._validate_method_fields()
        if self.remove_unused_columns:
            raise ConfigError(
                "remove_unused_columns must be False for PaKA: with True the collator never sees the image column"
            )
        if not self.ignore_data_skip:
            raise ConfigError(
                "ignore_data_skip must stay True: the PaKA stream resumes from its saved position; replaying "
                "batches would decode every image again"
            )
        try:
            super().__post_init__()
        except ValueError as error:  # TrainingArguments' own validation: a value the user set
            raise ConfigError(str(error)) from error
        if self.max_steps is None or self.max_steps <= 0:
            if self.dataset_num_images <= 0:
                raise ConfigError(
                    "a streamed dataset has no length: set max_steps, or dataset_num_images together with "
                    "num_train_epochs (max_steps is then derived)"
                )
            images_per_step = self.per_device_train_batch_size * self.world_size * self.gradient_accumulation_steps
            self.max_steps = math.ceil(self.num_train_epochs * self.dataset_num_images / images_per_step)

    def _validate_method_fields(self) -> None:
        trainer_fields = {spec.name for spec in fields(TrainingArguments)}  # TrainingArguments checks its own
        for spec in fields(self):  # every enumerated PaKA field declares its choices (_help)
            if "choices" in spec.metadata and spec.name not in trainer_fields:
                check_choice(spec.name, getattr(self, spec.name), spec.metadata["choices"])
        check_fraction("min_intersection", self.min_intersection, MIN_INTERSECTION_MEANING)
        check_collapse_limits(self.collapse_cosine_rise, self.collapse_rank_ratio)
        try:
            check_teacher_momentum(self.teacher_momentum)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for name in ("global_scale", "local_scale", "crop_ratio"):
            value = getattr(self, name)
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise ConfigError(f"{name} must be two numbers [min, max] with 0 < min <= max, got {value}")
        for name in ("global_scale", "local_scale"):
            if getattr(self, name)[1] > 1.0:
                raise ConfigError(
                    f"{name} is a fraction of the image area; its max must be <= 1, got {getattr(self, name)}"
                )
        for name in (
            "global_size",
            "local_size",
            "n_local",
            "roi_size",
            "head_hidden_dim",
            "head_out_dim",
            "max_box_tries",
        ):
            check_positive_int(name, getattr(self, name))
        check_roi_size(self.roi_size)
        if self.loss in ("cosine", "neco") and self.kernel_scope != "pair":
            raise ConfigError(
                f"kernel_scope applies to loss 'cka' and 'gram' only; leave it at 'pair' for {self.loss!r}"
            )
        try:
            self.neco_settings()  # NeCoSettings checks the neco_* fields
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.max_image_pixels < 0 or (self.max_image_side is not None and self.max_image_side < 0):
            raise ConfigError(
                f"max_image_pixels and max_image_side must be >= 0 (0 = no limit), got {self.max_image_pixels} and "
                f"{self.max_image_side}"
            )
        if self.shuffle_buffer_size < 0:
            raise ConfigError(f"shuffle_buffer_size must be >= 0, got {self.shuffle_buffer_size}")
        self.lora_settings()  # LoRASettings checks the lora_* fields
        self._validate_lora_options()

    def _validate_lora_options(self) -> None:
        """The LoRA options beyond the adapter itself: their ranges, and use_lora when one is set."""
        if self.lora_learning_rate is not None and self.lora_learning_rate <= 0:
            raise ConfigError(
                f"lora_learning_rate must be positive (unset: learning_rate), got {self.lora_learning_rate}"
            )
        if self.lora_weight_decay is not None and self.lora_weight_decay < 0:
            raise ConfigError(f"lora_weight_decay must be >= 0 (unset: the schedule), got {self.lora_weight_decay}")
        if not self.use_lora:
            changed = [name for name, default in LORA_OPTION_DEFAULTS.items() if getattr(self, name) != default]
            if changed:
                raise ConfigError(f"{', '.join(changed)} apply to LoRA runs only: set use_lora: true, or remove them")

    def __getstate__(self) -> dict[str, Any]:
        """What pickling keeps: every field except the secrets (:data:`SECRET_FIELD_SUFFIX`), which become ``None``.

        ``Trainer`` pickles its arguments into every checkpoint (``training_args.bin``); a token there would be
        readable by anyone who gets the folder. The token stays in this object only (and ``huggingface_hub``
        falls back to ``HF_TOKEN`` or the stored login when it is ``None``)."""
        state = dict(self.__dict__)
        for name in secret_fields(state):
            state[name] = None
        return state

    def check_local_paths(self, origins: dict[str, str] | None = None) -> None:
        """Raise :class:`~paka_hf.utils.errors.MissingPathError` if ``model_name_or_path`` or ``dataset_name`` looks like
        a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``) that does not exist, before anything asks the Hub.
        ``origins`` maps a field to where it was set (a config file) for the message.

        Args:
            origins: ``{field name: config file}`` for fields set in a file, or ``None``.

        Raises:
            MissingPathError: such a path does not exist.
        """
        origins = origins or {}
        for name in PATH_FIELDS:
            check_local_path(getattr(self, name), f"--{name}", origins.get(name))

    def neco_settings(self) -> NeCoSettings:
        """The ``neco_*`` fields as the loss takes them.

        Returns:
            The :class:`NeCoSettings`.
        """
        return NeCoSettings(
            student_steepness=self.neco_student_steepness,
            teacher_steepness=self.neco_teacher_steepness,
            queue_length=self.neco_queue_length,
            queue_per_image=self.neco_queue_per_image,
        )

    def lora_settings(self) -> LoRASettings:
        """The ``lora_*`` fields as :func:`paka_hf.modeling.lora.add_lora` takes them.

        Returns:
            The :class:`LoRASettings`.
        """
        targets = tuple(self.lora_target_modules) if self.lora_target_modules is not None else None
        return LoRASettings(
            rank=self.lora_rank,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=targets,
            variant=self.lora_variant,
            unfrozen_blocks=self.lora_unfrozen_blocks,
            train_norms=self.lora_train_norms,
        )

    def check_patch_size(self, patch_size: int) -> None:
        """Raise if a view size is not a multiple of the backbone's patch size.

        Args:
            patch_size: the backbone's patch size in pixels.

        Raises:
            ConfigError: ``global_size`` or ``local_size`` is not a multiple of ``patch_size``.
        """
        for name in ("global_size", "local_size"):
            check_patch_multiple(name, getattr(self, name), patch_size)

    def paka_dict(self) -> dict[str, Any]:
        """The PaKA-specific fields plus the main optimisation settings, for the model card and YAML export.

        Returns:
            ``{field name: value}`` sorted by name, enums as their values and tokens masked.
        """
        keep = {f.name for f in fields(PaKAConfig) if f.name not in {f.name for f in fields(TrainingArguments)}}
        keep.discard("overwrite_output_dir")  # what to do with an earlier run's folder, not a training setting
        keep |= {
            "learning_rate",
            "weight_decay",
            "lr_scheduler_type",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "max_steps",
            "num_train_epochs",
            "seed",
            "bf16",
            "warmup_steps",
        }
        values = self.to_dict()  # enums as their values, tokens masked
        return {k: values[k] for k in sorted(keep) if k in values}
