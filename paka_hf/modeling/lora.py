r"""LoRA post-training: low-rank adapters on a frozen backbone, and an EMA teacher that shares its base.

With ``use_lora`` the student is the frozen base plus `peft <https://github.com/huggingface/peft>`_ LoRA
adapters (Hu et al., 2021, arXiv 2106.09685) on the attention and MLP projections of every transformer block.
A wrapped linear layer ``y = W x + b`` computes

.. math::

    y = W x + b + s\, B A x, \qquad A \in \mathbb{R}^{r \times d_{in}},\;
    B \in \mathbb{R}^{d_{out} \times r},

with ``W``, ``b`` frozen and ``B = 0`` at the start (peft's initialisation), so the student starts as the base
model. Only ``A`` and ``B`` (and the optional projection head) train.

**Variants** (:class:`LoRASettings` ``variant``, passed to ``peft.LoraConfig``):

- ``lora``: the scale is ``s = α / r``.
- ``rslora`` (rank-stabilised LoRA, Kalajdzievski 2023, arXiv 2312.03732; ``use_rslora``): ``s = α / √r``, so
  the update's size does not shrink as the rank grows. Same parameters and cost as ``lora``.
- ``dora`` (weight-decomposed LoRA, Liu et al. 2024, arXiv 2402.09353; ``use_dora``): the weight is split into a
  trained magnitude ``m ∈ R^{d_out}`` (one number per output row, initialised to the row norms of ``W``) and a
  direction, ``W' = m ⊙ (W + s B A) / ‖W + s B A‖_row``; ``d_out`` more parameters per wrapped layer, and every
  forward computes the row norms of ``W + s B A`` (a ``d_out × d_in`` product).

**More than adapters.** ``unfrozen_blocks = N`` trains the last ``N`` transformer blocks fully, every weight of
them, with no adapter inside them (ExPLoRA, Khanna et al. 2024, arXiv 2406.10973); ``train_norms`` trains the
LayerNorms and LayerScales (DINOv2/v3 ``layer_scale1/2``) of the blocks that carry adapters. Those weights are
the student's own tensors (``requires_grad``), not peft's ``modules_to_save`` copies, so training holds no second
copy of them; the export adds them to the adapter (below).

**The teacher shares the frozen base.** PaKA's teacher is the EMA of the student (docs/METHOD.md). The frozen
weights never change, so the teacher differs from the student only in what trains: :class:`LoRATeacher` keeps
an EMA copy of the *trained* tensors alone (:func:`trained_parameters`: adapters, DoRA magnitudes, unfrozen
blocks, trained norms),

.. math::

    \theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_s \quad \text{for every trained tensor } \theta,

and runs the student's own modules with those copies put in place of the student's
(``torch.func.functional_call``), in eval mode and without gradients. The frozen weights exist once in memory,
not twice, and the EMA step touches ``2 r (d_in + d_out)`` numbers per wrapped layer instead of
``d_in d_out``; an unfrozen block costs the teacher a full copy of it, as in full post-training. (The EMA of
the factors is not the EMA of the product: the teacher's update is ``B_t A_t``, not ``EMA(B A)``. Both start at
zero and both follow the student; the factor form is what fits in the memory of one backbone.)

**Export** (:func:`export_lora_backbone`): the merged model (``W + s B A``, or DoRA's ``W'``, with the unfrozen
blocks and trained norms as trained) as a plain ``transformers`` folder (no ``peft`` needed to load it), and the
adapter in its ``adapter/`` sub-folder, which ``PeftModel.from_pretrained(base, folder, subfolder="adapter")``
loads onto the base checkpoint. The unfrozen blocks and trained norms go into the adapter as peft's
``modules_to_save`` (listed in its ``adapter_config.json``), so the adapter on the base gives the trained model.

Never trained under LoRA: the patch embedding, the position embeddings, the CLS and register tokens (bare
``nn.Parameter``s, which peft's ``modules_to_save`` cannot hold) and the final norm after the last block.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paka_hf.modeling.backbones import PatchBackbone, resolve_lora_targets, vision_config
from paka_hf.modeling.teacher import EMAPairs
from paka_hf.utils.errors import ConfigError, check_choice, check_positive_int
from paka_hf.utils.files import ADAPTER_DIR, CARD_FILE

#: How to get the optional dependency, in every error that needs it.
PEFT_INSTALL_HINT = "pip install 'paka_hf[peft]' (or pip install peft)"
#: peft's name for the single adapter the student trains.
ADAPTER_NAME = "default"
#: The start of transformers' deprecation message for ``is_gradient_checkpointing`` (what peft 0.21.2 reads).
GRADIENT_CHECKPOINTING_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"
#: A module path with one of these parts is an attention projection (DINOv2/v3 ``attention``, CLIP/SigLIP ``self_attn``).
_ATTENTION_PARTS = re.compile(r"(^|\.)(attention|self_attn|attn)(\.|$)")
#: The adapter kinds (``lora_variant``): plain LoRA, DoRA (peft's ``use_dora``), rsLoRA (peft's ``use_rslora``).
LORA_VARIANTS = ("lora", "dora", "rslora")
#: The parts of a parameter name that peft gives an adapter tensor: the two factors and DoRA's magnitude.
ADAPTER_NAME_PARTS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector.")
#: Class-name endings of the modules ``train_norms`` trains in the adapted blocks (beside ``nn.LayerNorm``).
_NORM_CLASS_ENDINGS = ("LayerNorm", "RMSNorm", "LayerScale")


def import_peft():
    """The ``peft`` module; :class:`ConfigError` saying how to install it when it is missing.

    Returns:
        The ``peft`` module.

    Raises:
        ConfigError: ``peft`` is not installed.
    """
    try:
        import peft
    except ImportError as error:
        raise ConfigError(f"use_lora needs the peft library, which is not installed: {PEFT_INSTALL_HINT}") from error
    return peft


@dataclass(frozen=True)
class LoRASettings:
    """The adapter: ``rank`` r, ``alpha`` α (the update is scaled by α / r, or α / √r for rsLoRA), ``dropout`` on
    the adapter's input, ``target_modules`` (short names such as ``q_proj``; ``None``: the family's default from
    :func:`paka_hf.modeling.backbones.lora_target_modules`), the ``variant`` and what trains beside the adapters.

    Args:
        rank: the adapter rank r.
        alpha: the scale α.
        dropout: dropout on the adapter's input, in [0, 1).
        target_modules: short names of the layers to wrap, or None for the family's default.
        variant: one of :data:`LORA_VARIANTS` (``lora``, ``dora``, ``rslora``; the module docstring).
        unfrozen_blocks: the last N transformer blocks train fully and carry no adapter (0: none).
        train_norms: the LayerNorms and LayerScales of the blocks with adapters train too.

    Raises:
        ConfigError: ``rank < 1``, ``alpha <= 0``, ``dropout`` outside [0, 1), an unknown ``variant`` or
            ``unfrozen_blocks < 0``.
    """

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    variant: str = "lora"
    unfrozen_blocks: int = 0
    train_norms: bool = False

    def __post_init__(self):
        check_positive_int("lora_rank", self.rank)
        if self.alpha <= 0:
            raise ConfigError(f"lora_alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.dropout}")
        check_choice("lora_variant", self.variant, LORA_VARIANTS)
        if self.unfrozen_blocks < 0:
            raise ConfigError(f"lora_unfrozen_blocks must be a whole number >= 0, got {self.unfrozen_blocks!r}")


def block_names(backbone: PatchBackbone) -> list[str]:
    """The names of the transformer blocks inside ``backbone.model`` (the family's ``block_pattern``), in depth order.

    Args:
        backbone: a backbone, with or without adapters (peft keeps the blocks' names).

    Returns:
        The block names, e.g. ``["encoder.layer.0", "encoder.layer.1"]``.
    """
    block = re.compile(rf"^{backbone.family.block_pattern}$")
    return [name for name, _ in backbone.model.named_modules() if block.match(name)]


def _is_norm_or_layer_scale(module: nn.Module) -> bool:
    """Whether ``train_norms`` trains this module: a norm or a layer scale that holds parameters of its own."""
    if not any(True for _ in module.parameters(recurse=False)):
        return False
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or type(module).__name__.endswith(
        _NORM_CLASS_ENDINGS
    )


def fully_trained_modules(backbone: PatchBackbone, settings: LoRASettings) -> list[str]:
    """The modules (names inside ``backbone.model``) that ``settings`` trains whole: the last ``unfrozen_blocks``
    blocks, then, with ``train_norms``, every norm and layer scale of the other blocks; in model order.

    Args:
        backbone: the backbone (before or after :func:`add_lora`).
        settings: the adapter's settings.

    Returns:
        The module names.

    Raises:
        ConfigError: ``unfrozen_blocks`` leaves no block for the adapters, or ``train_norms`` finds no norm.
    """
    blocks = block_names(backbone)
    count = settings.unfrozen_blocks
    if count >= len(blocks):
        raise ConfigError(
            f"lora_unfrozen_blocks {count} leaves no block for the adapters: this {backbone.family.title} model has "
            f"{len(blocks)}; set it below {len(blocks)}, or train every weight with use_lora: false"
        )
    adapted, unfrozen = blocks[: len(blocks) - count], blocks[len(blocks) - count :]
    norms = []
    if settings.train_norms:
        for block in adapted:
            module = backbone.model.get_submodule(block)
            norms += [f"{block}.{name}" for name, child in module.named_modules() if _is_norm_or_layer_scale(child)]
        if not norms:
            raise ConfigError(
                f"lora_train_norms found no LayerNorm or LayerScale in the blocks of this {backbone.family.title} "
                "model; set lora_train_norms: false"
            )
    order = {name: index for index, (name, _) in enumerate(backbone.model.named_modules())}
    return sorted(unfrozen + norms, key=order.__getitem__)


def _inside(name: str, modules: list[str] | tuple[str, ...]) -> bool:
    return any(name == module or name.startswith(module + ".") for module in modules)


def check_lora_targets(backbone: PatchBackbone, targets: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Full names of the linear layers to wrap, after checking that the set is whole.

    Stops with a :class:`ConfigError` that names what matched when a target matches nothing
    (:func:`~paka_hf.modeling.backbones.resolve_lora_targets`), when a target matches in some transformer blocks but
    not all of them, or when nothing in the attention is wrapped (the MLP alone: the patch relations that
    PaKA aligns are made by attention, and this is what a list of ``transformers`` 4.x names silently gives
    on a 5.x model).

    Args:
        backbone: the backbone to wrap.
        targets: short names; None for the family's default.

    Returns:
        The full names of the layers to wrap, in model order.

    Raises:
        ConfigError: as above, or an empty ``targets``.
    """
    names = resolve_lora_targets(backbone, targets)
    family = backbone.family
    inner = backbone.model
    default = list(family.lora_targets(vision_config(inner.config)))
    blocks = block_names(backbone)

    def short(name: str) -> str:
        return name.rsplit(".", 1)[-1]

    per_target: dict[str, int] = {}
    for name in names:
        per_target[short(name)] = per_target.get(short(name), 0) + 1
    partial = {target: count for target, count in per_target.items() if count < len(blocks)}
    if partial:
        found = ", ".join(f"{target} in {count}" for target, count in sorted(partial.items()))
        raise ConfigError(
            f"lora_target_modules match only part of the {len(blocks)} transformer blocks of this {family.title} "
            f"model ({found}); name layers that every block has, or leave lora_target_modules unset for the "
            f"family's default {default}"
        )
    if not any(_ATTENTION_PARTS.search(name) for name in names):
        raise ConfigError(
            f"lora_target_modules {sorted(per_target)} wrap no attention projection of this {family.title} model "
            f"(matched: {sorted(per_target)}); PaKA aligns patch relations, which attention makes: add its "
            f"projections, e.g. the family's default {default}"
        )
    return names


def add_lora(backbone: PatchBackbone, settings: LoRASettings, base_model_name_or_path: str | None = None) -> list[str]:
    """Put trainable LoRA adapters into ``backbone`` in place and freeze everything else but the modules
    ``settings`` trains whole (:func:`fully_trained_modules`); returns the wrapped names.

    The ``transformers`` model keeps its place (``backbone.model``) and its parameter names, except that a
    wrapped layer's weight becomes ``<layer>.base_layer.weight`` beside ``<layer>.lora_A.default.weight`` and
    ``<layer>.lora_B.default.weight`` (and, for DoRA, ``<layer>.lora_magnitude_vector.default.weight``). The
    layers of the last ``unfrozen_blocks`` blocks are not wrapped. The ``peft.PeftModel`` around it is kept for
    export (:func:`peft_model_of`), outside the module tree so that no tensor is listed twice.

    Args:
        backbone: the backbone, changed in place.
        settings: the adapter's settings.
        base_model_name_or_path: the base checkpoint the adapter's config records, or None.

    Returns:
        The full names of the wrapped layers.

    Raises:
        ConfigError: ``peft`` is missing, the backbone already has adapters, the targets are not a whole set
            (:func:`check_lora_targets`), or ``unfrozen_blocks``/``train_norms`` do not fit the model
            (:func:`fully_trained_modules`).
    """
    peft = import_peft()
    if is_lora_backbone(backbone):
        raise ConfigError("this backbone already has LoRA adapters")
    whole = fully_trained_modules(backbone, settings)
    # An unfrozen block trains every weight itself: an adapter inside it would only add a second path to the same
    # update. (Its norms are in `whole` too, being inside it.)
    targets = [name for name in check_lora_targets(backbone, settings.target_modules) if not _inside(name, whole)]
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        use_dora=settings.variant == "dora",
        use_rslora=settings.variant == "rslora",
        base_model_name_or_path=base_model_name_or_path,
    )
    with warnings.catch_warnings():
        # peft 0.21.2's PeftModel.__init__ reads model.is_gradient_checkpointing, which transformers 5.x deprecates
        # ("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing`
        # instead."): a FutureWarning on every LoRA run that no setting of ours can avoid.
        warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_DEPRECATION, category=FutureWarning)
        peft_model = peft.get_peft_model(backbone.model, config, adapter_name=ADAPTER_NAME)
    if base_model_name_or_path is not None:
        peft_model.peft_config[ADAPTER_NAME].base_model_name_or_path = base_model_name_or_path
    for name in whole:  # after peft, which froze every parameter but the adapters'
        backbone.model.get_submodule(name).requires_grad_(True)
    backbone.__dict__["_peft_model"] = peft_model  # not a submodule (see the docstring)
    backbone.__dict__["_fully_trained_modules"] = tuple(whole)
    return targets


def is_lora_backbone(backbone: nn.Module) -> bool:
    """Whether ``backbone`` (a :class:`PatchBackbone`) carries LoRA adapters put in by :func:`add_lora`.

    Args:
        backbone: any module.

    Returns:
        True when :func:`add_lora` put adapters into it.
    """
    return "_peft_model" in getattr(backbone, "__dict__", {})


def peft_model_of(backbone: PatchBackbone):
    """The ``peft.PeftModel`` around ``backbone.model`` (:func:`add_lora`).

    Args:
        backbone: a backbone with LoRA adapters.

    Returns:
        The ``peft.PeftModel``.

    Raises:
        ValueError: the backbone has no LoRA adapters.
    """
    if not is_lora_backbone(backbone):
        raise ValueError("this backbone has no LoRA adapters (add them with paka_hf.modeling.lora.add_lora)")
    return backbone.__dict__["_peft_model"]


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter name is one of peft's adapter tensors (``lora_A``, ``lora_B``, DoRA's magnitude).

    Args:
        name: a parameter name.

    Returns:
        True for an adapter tensor.
    """
    return any(part in name for part in ADAPTER_NAME_PARTS)


def adapter_parameters(backbone: PatchBackbone) -> dict[str, nn.Parameter]:
    """The adapter tensors (``lora_A``/``lora_B`` weights, DoRA's ``lora_magnitude_vector``) by their names in
    ``backbone``, in model order.

    Args:
        backbone: a backbone, with or without adapters.

    Returns:
        ``{name: parameter}``; empty without adapters.
    """
    return {name: param for name, param in backbone.named_parameters() if is_adapter_parameter(name)}


def fully_trained_module_names(backbone: PatchBackbone) -> tuple[str, ...]:
    """The modules :func:`add_lora` left trainable whole (unfrozen blocks, trained norms), names inside
    ``backbone.model``.

    Args:
        backbone: a backbone, with or without adapters.

    Returns:
        The names; empty without adapters or without such modules.
    """
    return getattr(backbone, "__dict__", {}).get("_fully_trained_modules", ())


def trained_parameters(backbone: PatchBackbone) -> dict[str, nn.Parameter]:
    """Every tensor a LoRA run trains in ``backbone``: the adapters and the parameters of the modules trained
    whole (:func:`fully_trained_module_names`), by their names in ``backbone``, in model order. What the
    :class:`LoRATeacher` keeps an EMA copy of.

    Args:
        backbone: a backbone, with or without adapters.

    Returns:
        ``{name: parameter}``; empty without adapters.
    """
    whole = tuple(f"model.{name}" for name in fully_trained_module_names(backbone))
    return {
        name: param
        for name, param in backbone.named_parameters()
        if is_adapter_parameter(name) or _inside(name, whole)
    }


def base_parameters(backbone: PatchBackbone) -> dict[str, nn.Parameter]:
    """Every other parameter of ``backbone``: the frozen base, which the student and its teacher share.

    Args:
        backbone: a backbone, with or without adapters.

    Returns:
        ``{name: parameter}`` of every parameter not in :func:`trained_parameters`.
    """
    trained = trained_parameters(backbone)
    return {name: param for name, param in backbone.named_parameters() if name not in trained}


def _key(name: str) -> str:
    # Module attribute names cannot hold dots; a dash never occurs in a Python name, so the mapping is one to one.
    return name.replace(".", "-")


class LoRATeacher(nn.Module):
    """The EMA teacher of a LoRA student: EMA copies of the student's trained tensors over the student's frozen base.

    Holds one frozen parameter per trained tensor (:func:`trained_parameters`: adapters, DoRA magnitudes, the
    unfrozen blocks' weights, trained norms; its state-dict key is the student's name with dots as dashes) and a
    reference to the student that is not a submodule, so the frozen weights are stored once, in the student.
    ``forward(pixel_values)`` runs the student's :class:`PatchBackbone` with these tensors in place of the
    student's, in eval mode (no dropout, drop-path or RoPE jitter), without gradients:
    ``(B, 3, H, W)`` → ``(B, D, H / p, W / p)``, as a teacher copy of the whole backbone would.

    Args:
        student: the student backbone, with LoRA adapters.

    Raises:
        ValueError: ``student`` has no LoRA adapters.
    """

    def __init__(self, student: PatchBackbone):
        super().__init__()
        if not is_lora_backbone(student):
            raise ValueError("LoRATeacher needs a backbone with LoRA adapters (paka_hf.modeling.lora.add_lora)")
        self.__dict__["student"] = student  # a reference, not a submodule: the base belongs to the student
        trained = trained_parameters(student)
        self.names = list(trained)
        for name, param in trained.items():
            self.register_parameter(_key(name), nn.Parameter(param.detach().clone(), requires_grad=False))
        self.eval()

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The teacher's copies of the trained tensors, by the student's parameter names.

        Returns:
            ``{student parameter name: teacher tensor}``.
        """
        return {name: getattr(self, _key(name)) for name in self.names}

    def ema_pairs(self) -> EMAPairs:
        """(teacher copy, student tensor) pairs of every trained tensor for
        :func:`paka_hf.modeling.teacher.ema_apply_`; no buffers.

        Returns:
            The :class:`~paka_hf.modeling.teacher.EMAPairs`, with no buffers.

        Raises:
            ValueError: the student's trained tensors are no longer those the teacher was built from.
        """
        sources = trained_parameters(self.student)
        if list(sources) != self.names:
            raise ValueError("the student's trained tensors changed after the LoRA teacher was built")
        return EMAPairs([getattr(self, _key(name)) for name in self.names], list(sources.values()), [], [])

    @torch.no_grad()
    def shard_like_student(self) -> None:
        """Make each copy a DTensor with the mesh and placements of the student's sharded tensor it copies
        (after :func:`paka_hf.modeling.sharding.shard_paka_model` sharded the student), so that the EMA step and
        :meth:`forward` work on local rows only.

        Raises:
            ValueError: the student's trained tensors are not sharded.
        """
        from torch.distributed.tensor import distribute_tensor

        from paka_hf.modeling.sharding import is_dtensor

        for name, source in trained_parameters(self.student).items():
            if not is_dtensor(source):
                raise ValueError(f"the student's {name} is not sharded: shard the student first")
            mine = getattr(self, _key(name))
            if is_dtensor(mine):
                raise ValueError(f"the teacher's {name} is already sharded")
            sharded = distribute_tensor(mine.detach().to(source.device), source.device_mesh, source.placements)
            setattr(self, _key(name), nn.Parameter(sharded, requires_grad=False))

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's patch grid: the student's backbone with the teacher's trained tensors, in eval mode, no
        gradients.

        Unsharded, the teacher's tensors are passed to the student by ``torch.func.functional_call``. Sharded
        (FSDP2), that cannot work: each block's pre-forward hook installs its own all-gathered parameters over
        whatever was passed. There, the teacher's local rows are swapped into the student's shards for
        the forward and swapped back after it (also after an error): the student's values are unchanged, bit
        for bit, and the swap is local (no communication beyond the forward's own all-gathers).

        Args:
            pixel_values: ``(B, 3, H, W)`` normalized images.

        Returns:
            ``(B, D, H / p, W / p)`` patch tokens.
        """
        from paka_hf.modeling.sharding import is_dtensor, local_tensor

        student = self.student
        was_training = student.training
        student.train(False)
        try:
            teacher = self.trained_state()
            if not any(is_dtensor(tensor) for tensor in teacher.values()):
                return torch.func.functional_call(student, teacher, (pixel_values,), strict=False)
            from torch.distributed.fsdp import FSDPModule

            shards = trained_parameters(student)
            pairs = [(local_tensor(shards[name]), local_tensor(tensor)) for name, tensor in teacher.items()]
            kept = [own.clone() for own, _ in pairs]
            try:
                for own, theirs in pairs:
                    own.copy_(theirs)
                return student(pixel_values)
            finally:
                # A student that keeps its gathered parameters after forward would give the teacher's tensors to
                # its own forward: free them here, so the student's forward gathers its own.
                for module in student.modules():
                    if isinstance(module, FSDPModule):
                        module.reshard()
                for (own, _), value in zip(pairs, kept):
                    own.copy_(value)
        finally:
            student.train(was_training)


def _export_copy(backbone: PatchBackbone, trained_state: dict[str, torch.Tensor] | None):
    """A deep copy of the ``PeftModel`` (on the CPU) with ``trained_state`` (student names) in its trained tensors,
    and the modules trained whole added to the adapter as peft's ``modules_to_save``."""
    from peft.utils import set_additional_trainable_modules

    peft_model = copy.deepcopy(peft_model_of(backbone)).to("cpu")
    if trained_state is not None:
        # backbone names are "model.<name inside the transformers model>"; the PeftModel's are
        # "base_model.model.<name inside the transformers model>"
        own = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name, tensor in trained_state.items():
                inner = name.removeprefix("model.")
                own[f"base_model.model.{inner}"].copy_(tensor.detach().to("cpu"))
    whole = list(fully_trained_module_names(backbone))
    if whole:
        # Wrapped here, in the copy, not for training: a ModulesToSaveWrapper keeps the module it copies beside the
        # copy, a second set of weights that training has no use for. Each wrapper's copy is the trained module;
        # save_pretrained writes it, PeftModel.from_pretrained puts it over the base's module, and merge_and_unload
        # puts it in place.
        config = peft_model.peft_config[ADAPTER_NAME]
        config.modules_to_save = whole
        inner = peft_model.base_model.model
        set_additional_trainable_modules(inner, config, getattr(inner, "config", None), ADAPTER_NAME)
    return peft_model


def export_lora_backbone(
    backbone: PatchBackbone,
    output_dir: str | os.PathLike,
    image_processor: Any = None,
    trained_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the merged model to ``output_dir`` and the adapter to ``output_dir/adapter``.

    - ``output_dir``: :func:`paka_hf.modeling.export.save_backbone` of the merged model (``W + s B A`` for every
      wrapped layer, DoRA's ``m ⊙ (W + s B A) / ‖W + s B A‖`` for DoRA; unfrozen blocks and trained norms as
      trained), a plain ``transformers`` model (``AutoModel.from_pretrained(output_dir)``).
    - ``output_dir/adapter``: ``adapter_config.json`` and ``adapter_model.safetensors`` (peft's format), for
      ``PeftModel.from_pretrained(AutoModel.from_pretrained(base), output_dir, subfolder="adapter")``. The
      unfrozen blocks and trained norms are in it as ``modules_to_save``: the adapter on the base is the whole
      trained model.

    ``trained_state`` (student names → tensors, e.g. :meth:`LoRATeacher.trained_state`) replaces the student's
    trained tensors in what is written (the teacher's export); the backbone in memory is never changed. The merge
    happens in a copy of the model, made where the model is and then moved to the CPU: one more backbone's
    worth of device memory for a moment, and of host memory while exporting.

    Args:
        backbone: the LoRA backbone.
        output_dir: the folder to write.
        image_processor: the processor to save; None for the backbone's.
        trained_state: trained tensors by student names to write instead of the student's; None for the
            student's.

    Returns:
        ``output_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: the backbone has no LoRA adapters.
    """
    # here, not at module level: the model modules (modeling imports this one) stay free of the Hub stack
    from paka_hf.modeling.export import save_backbone

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model = _export_copy(backbone, trained_state)
    adapter_dir = out / ADAPTER_DIR
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    peft_model.save_pretrained(adapter_dir)
    # peft writes a template model card with empty sections; the repository's card (paka_hf.hub.card) is the card.
    (adapter_dir / CARD_FILE).unlink(missing_ok=True)
    merged = peft_model.merge_and_unload()
    return save_backbone(merged, out, image_processor=image_processor or backbone.image_processor)
