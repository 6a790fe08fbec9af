"""Backbones: any supported Hub ViT as a dense patch-feature extractor, through one registry.

PaKA works on the *last-layer patch grid* of a ViT (docs/METHOD.md §3): the final hidden state of every
token after the model's final layer norm, with the prefix tokens (CLS, registers) dropped,
reshaped to ``(B, D, h, w)`` where ``h = H / p`` and ``w = W / p`` for patch size ``p``.

Each supported family is one :class:`BackboneFamily` entry of :data:`FAMILIES`, which says all
that differs between families (checked against ``transformers`` 5.24):

================================  ===============  =====  ==================================================
family (vision ``model_type``)    prefix tokens    patch  any input size
================================  ===============  =====  ==================================================
``dinov2``                        CLS              14     position embeddings interpolated (always)
``dinov2_with_registers``         CLS + registers  14     position embeddings interpolated (always)
``dinov3_vit`` (plain, gated MLP) CLS + registers  16     RoPE coordinates recomputed per input size
``siglip_vision_model``           none             16     ``interpolate_pos_encoding=True`` (bicubic)
``siglip2_vision_model`` (NaFlex) none             16     patchified input + ``spatial_shapes`` (below)
``clip_vision_model``             CLS              14/16  ``interpolate_pos_encoding=True`` (bicubic)
================================  ===============  =====  ==================================================

A full CLIP / SigLIP / SigLIP 2 checkpoint (``model_type`` ``clip``, ``siglip``, ``siglip2``, text
tower included) loads its vision tower only (``CLIPVisionModel.from_pretrained(full_checkpoint)``);
what is saved afterwards is the vision model, which ``AutoModel`` loads back as that class.

Choices made per family (each is a field of the entry, so a new family is one entry plus its tests):

- **Final norm.** ``CLIPVisionModel`` returns ``last_hidden_state`` *before* its ``post_layernorm``
  (it normalizes only the pooled CLS token); the patch grid applies ``post_layernorm`` to every
  token, so every family's grid is "after the final layer norm" as docs/METHOD.md §3 reads the method.
- **NaFlex (SigLIP 2).** ``Siglip2VisionModel`` takes pre-patchified pixels ``(B, h·w, p·p·3)``, a
  ``pixel_attention_mask`` and ``spatial_shapes`` (its image processor resizes each image to at most
  ``max_num_patches`` patches and pads). On PaKA's fixed-size square or rectangular views every image
  of a batch has the same ``h × w`` grid, so the backbone patchifies exactly as
  ``Siglip2ImageProcessor`` does (row-major patches, each flattened as ``(p, p, channel)``), passes
  ``spatial_shapes = (h, w)`` for every image and an all-ones mask (no padding): the position
  embeddings are resized to ``h × w`` by the model itself. Grids larger than the checkpoint's
  ``max_num_patches`` work (the model resizes its embeddings to any grid), but differ from what
  the processor would feed it.
- **Unused parameters.** Parameters that never reach the patch grid (DINO's ``mask_token``, the
  attention-pooling ``head`` of SigLIP) are frozen in the student, so DDP sees no unused parameter
  and no optimizer state is kept for them; they are exported unchanged.
- **Drop-path.** DINOv2 and DINOv3 have stochastic depth (``drop_path_rate``); SigLIP and CLIP do
  not, and a non-zero ``drop_path_rate`` is ignored for them with a warning.
- **DINOv3 RoPE augmentation.** In ``.train()`` ``DINOv3ViTModel`` rescales (and optionally shifts
  and jitters) its RoPE patch coordinates at random on every forward (``pos_embed_rescale`` 2.0 in
  the released configs), drawing from the global torch RNG. The teacher always runs in eval mode
  (exact coordinates). For the student it is a choice, ``rope_augment`` (``PaKAConfig.student_rope_augment``,
  off by default): off keeps the RoPE module in eval mode while the rest of the student trains, so
  student and teacher grids align by position exactly, as with DINOv2. On, the draws come from the
  global RNG, which ``Trainer`` checkpoints save and restore, so resume stays bit-exact either way.
  The saved config keeps the checkpoint's ``pos_embed_*`` values.
- **Normalization.** Always the checkpoint's image processor (``AutoImageProcessor``); for a
  checkpoint saved without one (a random-init test model, a bare ``save_pretrained``), the family's
  reference processor (:func:`default_image_processor`, with a warning) — it is then saved with the
  exported model, so the exported folder always carries its own.
- **LoRA targets.** The attention and MLP projections of the transformer blocks, by their in-memory
  names in ``transformers`` 5.x (:func:`lora_target_modules` matches them against the loaded model;
  :func:`resolve_lora_targets` fails loudly when a configured target matches nothing). The group names
  ``attention`` and ``mlp`` (:data:`LORA_TARGET_GROUPS`) name the same layers in every family, so one
  recipe (``configs/repro/paka_lora.yaml``: ``attention``) fits DINOv2, DINOv3, SigLIP and CLIP alike.
- **Model card.** Licence, ``pipeline_tag`` and tags of a derivative (:class:`CardMetadata`).

Example::

    >>> from paka_hf.modeling.backbones import PatchBackbone
    >>> backbone = PatchBackbone.from_pretrained("facebook/dinov3-vits16-pretrain-lvd1689m")
    >>> grid = backbone(torch.randn(2, 3, 224, 320))   # (2, 384, 14, 20)
    >>> backbone.image_mean, backbone.image_std          # from the checkpoint's image processor

The wrapped model stays a plain ``transformers`` model (``backbone.model``), so what is saved
with ``backbone.model.save_pretrained`` loads back with ``AutoModel.from_pretrained`` and no
custom code.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, PretrainedConfig, PreTrainedModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from paka_hf.utils.errors import ConfigError

logger = logging.getLogger(__name__)

#: The ``pipeline_tag`` of every PaKA derivative: a backbone whose output is features.
FEATURE_EXTRACTION = "image-feature-extraction"
DINOV3_LICENSE_LINK = "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"


@dataclass(frozen=True)
class CardMetadata:
    """What a derivative's model card must say about the base model's terms.

    ``license`` is the Hub licence id (``other`` with ``license_name``/``license_link`` for a custom
    licence); ``notice`` is text the licence requires on the card (``None`` when it requires none).

    Args:
        license: the Hub licence id.
        license_name: the custom licence's name (with ``license="other"``).
        license_link: the custom licence's address (with ``license="other"``).
        notice: text the licence requires on the card, or None.
        pipeline_tag: the card's ``pipeline_tag``.
        tags: extra card tags.
    """

    license: str
    license_name: str | None = None
    license_link: str | None = None
    notice: str | None = None
    pipeline_tag: str = FEATURE_EXTRACTION
    tags: tuple[str, ...] = ()


_DINOV3_NOTICE = (
    "Built with DINOv3. These weights are a derivative of the DINOv3 Materials and are distributed under the "
    f"[DINOv3 License]({DINOV3_LICENSE_LINK}); a copy of that licence must accompany any redistribution, and "
    "research publications that use them must acknowledge DINOv3."
)


@dataclass(frozen=True)
class BackboneFamily:
    """One supported ViT family. See the module docstring for what each choice means.

    Attributes:
        name: the vision model's ``model_type`` (what an exported folder's ``config.json`` says).
        title: human name, for messages and docs.
        model_class: the ``transformers`` class of the vision model (loads the vision tower of a full
            checkpoint; ``AutoModel`` returns it for an exported folder).
        full_model_types: ``model_type`` of full (vision + text) checkpoints whose vision tower this
            family loads.
        input_mode: ``"pixels"`` (``model(pixel_values)``), ``"interpolate"`` (with
            ``interpolate_pos_encoding=True``) or ``"naflex"`` (patchified, with ``spatial_shapes``).
        prefix_tokens: ``config → number of tokens before the patches`` in ``last_hidden_state``.
        final_norm: name of a module the model does *not* apply to ``last_hidden_state`` but which the
            patch grid applies to every token (``None``: the model already returns normalized tokens).
        has_drop_path: the config's ``drop_path_rate`` adds stochastic depth.
        unused_parameters: ``config → name prefixes`` of parameters that never reach the patch grid.
        rope_module: name of the RoPE module whose ``.train()`` randomizes the coordinates (DINOv3).
        block_pattern: regex of the transformer blocks' module names (LoRA targets live inside them).
        lora_targets: ``config → in-memory names`` of the LoRA target ``nn.Linear``s of each block (the default).
        attention_targets: the names among those of the attention's projections (what the ``attention`` group of
            ``lora_target_modules`` means for this family; the rest of ``lora_targets`` is the ``mlp`` group).
        processor_class / processor_kwargs: the reference image processor for a checkpoint without one
            (empty kwargs: the ``transformers`` class defaults are the reference checkpoints' values).
        card: licence and metadata of a derivative's model card.
        example_ids: Hub checkpoints of the family (docs and messages).
    """

    name: str
    title: str
    model_class: str
    input_mode: str
    prefix_tokens: Callable[[PretrainedConfig], int]
    block_pattern: str
    lora_targets: Callable[[PretrainedConfig], tuple[str, ...]]
    attention_targets: tuple[str, ...]
    processor_class: str
    card: CardMetadata
    example_ids: tuple[str, ...]
    full_model_types: tuple[str, ...] = ()
    final_norm: str | None = None
    has_drop_path: bool = False
    unused_parameters: Callable[[PretrainedConfig], tuple[str, ...]] = lambda config: ()
    rope_module: str | None = None
    processor_kwargs: dict[str, Any] = field(default_factory=dict)

    def num_prefix_tokens(self, config: PretrainedConfig) -> int:
        """The number of tokens before the patches in ``last_hidden_state`` (class token, registers).

        Args:
            config: the vision model's config.

        Returns:
            The prefix length.
        """
        return int(self.prefix_tokens(config))


def _cls_and_registers(config: PretrainedConfig) -> int:
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


_DINO_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_CLIP_LIKE_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def _dinov3_targets(config: PretrainedConfig) -> tuple[str, ...]:
    mlp = (
        ("gate_proj", "up_proj", "down_proj") if getattr(config, "use_gated_mlp", False) else ("up_proj", "down_proj")
    )
    return (*_DINO_ATTENTION, *mlp)


def _dinov2_targets(config: PretrainedConfig) -> tuple[str, ...]:
    # ViT-g/14 has a SwiGLU MLP (gate_proj, up_proj, down_proj) where the smaller sizes have fc1, fc2
    mlp = ("gate_proj", "up_proj", "down_proj") if getattr(config, "use_swiglu_ffn", False) else ("fc1", "fc2")
    return (*_DINO_ATTENTION, *mlp)


def _siglip_unused(config: PretrainedConfig) -> tuple[str, ...]:
    # The attention-pooling head reads the patch tokens but its output (pooler_output) is not the grid.
    return ("head.",) if getattr(config, "vision_use_head", True) else ()


_DINOV2_PROCESSOR = dict(  # preprocessor_config.json of the facebook/dinov2-* checkpoints
    do_resize=True,
    size={"shortest_edge": 256},
    resample=3,
    do_center_crop=True,
    crop_size={"height": 224, "width": 224},
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    image_mean=list(IMAGENET_DEFAULT_MEAN),
    image_std=list(IMAGENET_DEFAULT_STD),
    do_convert_rgb=True,
)
_APACHE = CardMetadata(license="apache-2.0")
_VIT_BLOCKS = r"encoder\.layers\.\d+"
_CLIP_LIKE_TARGETS = (*_CLIP_LIKE_ATTENTION, "fc1", "fc2")

_DINOV2 = BackboneFamily(
    name="dinov2",
    title="DINOv2",
    model_class="Dinov2Model",
    input_mode="pixels",
    prefix_tokens=_cls_and_registers,
    block_pattern=r"encoder\.layer\.\d+",
    lora_targets=_dinov2_targets,
    attention_targets=_DINO_ATTENTION,
    has_drop_path=True,
    unused_parameters=lambda config: ("embeddings.mask_token",),
    processor_class="BitImageProcessor",
    processor_kwargs=_DINOV2_PROCESSOR,
    card=CardMetadata(license="apache-2.0", tags=("dinov2",)),
    example_ids=("facebook/dinov2-small", "facebook/dinov2-base", "facebook/dinov2-large", "facebook/dinov2-giant"),
)

FAMILIES: dict[str, BackboneFamily] = {
    family.name: family
    for family in (
        _DINOV2,
        # the same architecture with register tokens (their count is in the config: prefix_tokens reads it)
        replace(
            _DINOV2,
            name="dinov2_with_registers",
            title="DINOv2 with registers",
            model_class="Dinov2WithRegistersModel",
            example_ids=tuple(
                f"facebook/dinov2-with-registers-{size}" for size in ("small", "base", "large", "giant")
            ),
        ),
        BackboneFamily(
            name="dinov3_vit",
            title="DINOv3 ViT",
            model_class="DINOv3ViTModel",
            input_mode="pixels",
            prefix_tokens=_cls_and_registers,
            block_pattern=r"model\.layer\.\d+",
            lora_targets=_dinov3_targets,
            attention_targets=_DINO_ATTENTION,
            has_drop_path=True,
            unused_parameters=lambda config: ("embeddings.mask_token",),
            rope_module="rope_embeddings",
            processor_class="DINOv3ViTImageProcessor",
            card=CardMetadata(
                license="other",
                license_name="dinov3-license",
                license_link=DINOV3_LICENSE_LINK,
                notice=_DINOV3_NOTICE,
                tags=("dinov3",),
            ),
            example_ids=(
                "facebook/dinov3-vits16-pretrain-lvd1689m",
                "facebook/dinov3-vits16plus-pretrain-lvd1689m",
                "facebook/dinov3-vitb16-pretrain-lvd1689m",
                "facebook/dinov3-vitl16-pretrain-lvd1689m",
                "facebook/dinov3-vith16plus-pretrain-lvd1689m",
                "facebook/dinov3-vit7b16-pretrain-lvd1689m",
            ),
        ),
        BackboneFamily(
            name="siglip_vision_model",
            title="SigLIP / SigLIP 2 (fixed resolution) vision",
            model_class="SiglipVisionModel",
            full_model_types=("siglip",),
            input_mode="interpolate",
            prefix_tokens=lambda config: 0,
            block_pattern=_VIT_BLOCKS,
            lora_targets=lambda config: _CLIP_LIKE_TARGETS,
            attention_targets=_CLIP_LIKE_ATTENTION,
            unused_parameters=_siglip_unused,
            processor_class="SiglipImageProcessor",
            card=CardMetadata(license="apache-2.0", tags=("siglip",)),
            example_ids=(
                "google/siglip-base-patch16-224",
                "google/siglip2-base-patch16-224",
                "google/siglip2-base-patch16-512",
                "google/siglip2-so400m-patch16-384",
            ),
        ),
        BackboneFamily(
            name="siglip2_vision_model",
            title="SigLIP 2 NaFlex vision",
            model_class="Siglip2VisionModel",
            full_model_types=("siglip2",),
            input_mode="naflex",
            prefix_tokens=lambda config: 0,
            block_pattern=_VIT_BLOCKS,
            lora_targets=lambda config: _CLIP_LIKE_TARGETS,
            attention_targets=_CLIP_LIKE_ATTENTION,
            unused_parameters=_siglip_unused,
            processor_class="Siglip2ImageProcessor",
            card=CardMetadata(license="apache-2.0", tags=("siglip2",)),
            example_ids=("google/siglip2-base-patch16-naflex", "google/siglip2-so400m-patch16-naflex"),
        ),
        BackboneFamily(
            name="clip_vision_model",
            title="CLIP vision",
            model_class="CLIPVisionModel",
            full_model_types=("clip",),
            input_mode="interpolate",
            prefix_tokens=lambda config: 1,
            final_norm="post_layernorm",
            block_pattern=_VIT_BLOCKS,
            lora_targets=lambda config: _CLIP_LIKE_TARGETS,
            attention_targets=_CLIP_LIKE_ATTENTION,
            processor_class="CLIPImageProcessor",
            # OpenAI released CLIP's code and weights under the MIT licence; pass --license for other bases.
            card=CardMetadata(license="mit", tags=("clip",)),
            example_ids=(
                "openai/clip-vit-base-patch16",
                "openai/clip-vit-large-patch14",
                "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
            ),
        ),
    )
}

#: ``model_type`` of the vision models themselves, one per family: what an exported backbone folder holds.
VISION_MODEL_TYPES = tuple(FAMILIES)
#: Every ``model_type`` a checkpoint may have: the families' own and the full checkpoints they load from.
SUPPORTED_MODEL_TYPES = VISION_MODEL_TYPES + tuple(t for f in FAMILIES.values() for t in f.full_model_types)


def family_for(model_type: str | None, source: str = "the model") -> BackboneFamily:
    """The family of a vision or full checkpoint's ``model_type``; :class:`ConfigError` when unsupported.

    Args:
        model_type: the config's ``model_type``.
        source: what the config came from, for the message.

    Returns:
        The :class:`BackboneFamily`.

    Raises:
        ConfigError: the model type is not supported.
    """
    for family in FAMILIES.values():
        if model_type == family.name or model_type in family.full_model_types:
            return family
    raise ConfigError(
        f"{source} is a {model_type!r} model; paka_hf supports the model types {', '.join(SUPPORTED_MODEL_TYPES)} "
        "(DINOv2, DINOv2 with registers, DINOv3 ViT, SigLIP / SigLIP 2, CLIP vision towers): pass a checkpoint such as "
        "'facebook/dinov2-with-registers-small' or a local folder saved from one"
    )


def vision_config(config: PretrainedConfig) -> PretrainedConfig:
    """The vision tower's config of a full CLIP/SigLIP checkpoint; any other config as is.

    Args:
        config: a supported checkpoint's config.

    Returns:
        The vision tower's config.

    Raises:
        ConfigError: the model type is not supported.
    """
    family = family_for(getattr(config, "model_type", None), type(config).__name__)
    if config.model_type in family.full_model_types:
        return config.vision_config
    return config


def _transformers_class(name: str):
    import transformers

    return getattr(transformers, name)


def _apply_drop_path(config: PretrainedConfig, family: BackboneFamily, drop_path_rate: float | None) -> None:
    if drop_path_rate is None:
        return
    if family.has_drop_path:
        config.drop_path_rate = float(drop_path_rate)
    elif drop_path_rate:
        logger.warning("%s has no stochastic depth; drop_path_rate=%s is ignored", family.title, drop_path_rate)


def load_backbone(
    name_or_path: str | os.PathLike,
    *,
    drop_path_rate: float | None = None,
    attn_implementation: str | None = "sdpa",
    revision: str | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load the vision model of a supported checkpoint (Hub id or local folder).

    Loads with the family's own class (``Dinov2Model``, ``DINOv3ViTModel``, ``CLIPVisionModel``...), which
    also takes the vision tower out of a full CLIP / SigLIP checkpoint (``AutoBackbone`` cannot load a
    local folder offline, docs/STACK.md). ``drop_path_rate`` overrides the checkpoint's stochastic depth (0.1 for
    the PaKA student; ignored with a warning for families without it). Extra keyword arguments go to
    ``from_pretrained`` (``dtype``, ``token``, ``cache_dir``...). Raises :class:`ConfigError` for an
    unsupported ``model_type``.

    Args:
        name_or_path: a Hub id or a local folder.
        drop_path_rate: stochastic depth to set; None keeps the checkpoint's.
        attn_implementation: ``transformers``' attention implementation; None for its default.
        revision: the Hub revision.
        **kwargs: passed to ``from_pretrained``.

    Returns:
        The ``transformers`` vision model.

    Raises:
        ConfigError: the checkpoint's model type is not supported.
    """
    source = os.fspath(name_or_path)
    config = AutoConfig.from_pretrained(source, revision=revision, token=kwargs.get("token"))
    family = family_for(getattr(config, "model_type", None), repr(source))
    config = vision_config(config)
    _apply_drop_path(config, family, drop_path_rate)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return _transformers_class(family.model_class).from_pretrained(source, config=config, revision=revision, **kwargs)


def default_image_processor(family: BackboneFamily | str = "dinov2"):
    """The family's reference image processor (for a checkpoint saved without one).

    ``family`` is a :class:`BackboneFamily` or the ``model_type`` of a vision or full checkpoint
    (``"dinov2"``, ``"siglip"``, ``"clip_vision_model"``, ...).

    DINOv2: ``BitImageProcessor`` with the ``facebook/dinov2-*`` settings (ImageNet mean/std, shortest edge
    256, center crop 224 — the class's own defaults are CLIP's); the others: their processor class with its
    ``transformers`` defaults, which are the reference checkpoints' values (DINOv3: ImageNet; SigLIP /
    SigLIP 2: mean = std = 0.5; CLIP: OpenAI's).

    Args:
        family: a :class:`BackboneFamily` or a ``model_type``.

    Returns:
        A new image processor of the family's class.

    Raises:
        ConfigError: an unsupported ``model_type``.
    """
    family = family_for(family) if isinstance(family, str) else family
    return _transformers_class(family.processor_class)(**family.processor_kwargs)


def load_image_processor(
    name_or_path: str | os.PathLike, revision: str | None = None, family: BackboneFamily | None = None
):
    """The checkpoint's image processor; the family's reference one (with a warning) when it has none.

    Args:
        name_or_path: a Hub id or a local folder.
        revision: the Hub revision.
        family: the checkpoint's family, when already known (else read from its config).

    Returns:
        The image processor.

    Raises:
        ConfigError: the checkpoint has no image processor and its model type is not supported.
    """
    source = os.fspath(name_or_path)
    try:
        return AutoImageProcessor.from_pretrained(source, revision=revision)
    except (OSError, ValueError, KeyError):
        if family is None:
            config = AutoConfig.from_pretrained(source, revision=revision)
            family = family_for(getattr(config, "model_type", None), repr(source))
        logger.warning(
            "%s has no image processor (preprocessor_config.json); using %s's reference %s",
            source,
            family.title,
            family.processor_class,
        )
        return default_image_processor(family)


def processor_normalization(image_processor: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel of an image processor (applied to pixels scaled to [0, 1]).

    Args:
        image_processor: a ``transformers`` image processor.

    Returns:
        ``(mean, std)``, three floats each; ``(0, 0, 0), (1, 1, 1)`` when the processor does not normalize.

    Raises:
        ConfigError: the processor has no ``image_mean`` / ``image_std``.
    """
    mean, std = getattr(image_processor, "image_mean", None), getattr(image_processor, "image_std", None)
    if mean is None or std is None:
        raise ConfigError(
            f"{type(image_processor).__name__} has no image_mean / image_std; pass an image processor that normalizes"
        )
    if not getattr(image_processor, "do_normalize", True):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def as_triple(value) -> tuple[float, ...]:
        return tuple(float(x) for x in (value if isinstance(value, (list, tuple)) else [value] * 3))

    return as_triple(mean), as_triple(std)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, h·w, p·p·C)``, row-major patches each flattened as ``(p, p, C)``.

    The layout of ``Siglip2ImageProcessor`` (its ``convert_image_to_patches``), which ``Siglip2VisionModel``
    expects; ``H`` and ``W`` must be multiples of ``p``.

    Args:
        pixel_values: ``(B, C, H, W)`` images.
        patch_size: the patch side ``p``.

    Returns:
        ``(B, h·w, p·p·C)`` patches.
    """
    batch, channels, height, width = pixel_values.shape
    p = patch_size
    patches = pixel_values.reshape(batch, channels, height // p, p, width // p, p)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, (height // p) * (width // p), p * p * channels)


# --------------------------------------------------------------------------------------------------
# LoRA target modules
# --------------------------------------------------------------------------------------------------


def lora_target_modules(model: PreTrainedModel | nn.Module) -> tuple[str, ...]:
    """The family's default LoRA targets (short names) for this model's config.

    Args:
        model: a :class:`PatchBackbone` or a ``transformers`` vision model.

    Returns:
        The short module names.

    Raises:
        ConfigError: the model type is not supported.
    """
    model = getattr(model, "model", model) if isinstance(model, PatchBackbone) else model
    config = vision_config(model.config)
    return family_for(config.model_type).lora_targets(config)


#: The group names ``lora_target_modules`` accepts beside module names, each in the family's own module names:
#: ``attention`` is every projection of a block's attention (``q_proj k_proj v_proj o_proj`` in DINOv2 and DINOv3,
#: ``... out_proj`` in SigLIP and CLIP), ``mlp`` every other default target (``fc1 fc2``, or the SwiGLU's three).
LORA_TARGET_GROUPS = ("attention", "mlp")


def expand_lora_targets(family: BackboneFamily, config: PretrainedConfig, targets: tuple[str, ...]) -> tuple[str, ...]:
    """``targets`` with each group name of :data:`LORA_TARGET_GROUPS` replaced by the family's module names.

    Args:
        family: the model's family.
        config: the vision model's config (the MLP's names depend on it).
        targets: short module names and group names.

    Returns:
        Short module names, in the given order, each once.
    """
    default = family.lora_targets(config)
    groups = {
        "attention": family.attention_targets,
        "mlp": tuple(name for name in default if name not in family.attention_targets),
    }
    expanded: list[str] = []
    for target in targets:
        expanded += [name for name in groups.get(target, (target,)) if name not in expanded]
    return tuple(expanded)


def resolve_lora_targets(
    model: PreTrainedModel | nn.Module, targets: list[str] | tuple[str, ...] | None = None
) -> list[str]:
    """Full names of the ``nn.Linear`` modules LoRA should wrap, matched against the loaded model.

    ``targets`` are short names (``q_proj``, ``fc1``...; default: :func:`lora_target_modules`) or the group
    names ``attention`` and ``mlp`` (:func:`expand_lora_targets`), which name the same layers in every family; a module
    matches when its name is ``<block>.<...>.<target>`` inside one of the transformer blocks (so SigLIP's
    pooling head, whose MLP is also named ``fc1``/``fc2``, is never wrapped). Returns the names in model
    order, to pass to ``peft.LoraConfig(target_modules=...)``. Raises :class:`ConfigError` naming the
    targets that match nothing, and the candidate names the blocks do have — the ``transformers`` 4.x names
    ``query``/``key``/``value``/``dense`` on a 5.x model, for example.

    Args:
        model: a :class:`PatchBackbone` or a ``transformers`` vision model.
        targets: short module names; None for the family's default.

    Returns:
        The matching modules' full names, in model order.

    Raises:
        ConfigError: ``targets`` is empty, or some target matches no linear layer of a block.
    """
    inner = model.model if isinstance(model, PatchBackbone) else model
    config = vision_config(inner.config)
    family = family_for(config.model_type)
    targets = (
        expand_lora_targets(family, config, tuple(targets)) if targets is not None else family.lora_targets(config)
    )
    if not targets:
        raise ConfigError(
            "lora_target_modules is empty; leave it unset for the family's default or name modules to wrap"
        )
    block = re.compile(rf"^{family.block_pattern}\.(.+\.)?([^.]+)$")
    matched: dict[str, list[str]] = {target: [] for target in targets}
    available: set[str] = set()
    for name, module in inner.named_modules():
        found = block.match(name)
        if found is None or not isinstance(module, nn.Linear):
            continue
        available.add(found.group(2))
        if found.group(2) in matched:
            matched[found.group(2)].append(name)
    missing = [target for target, names in matched.items() if not names]
    if missing:
        raise ConfigError(
            f"lora_target_modules {missing} match no linear layer of this {family.title} model ({config.model_type}); "
            f"its blocks have {sorted(available)} (transformers 5.x names; 4.x used query/key/value/dense)"
        )
    wanted = {name for names in matched.values() for name in names}
    return [name for name, _ in inner.named_modules() if name in wanted]


# --------------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------------


class PatchBackbone(nn.Module):
    """A supported ViT that returns its last-layer patch grid.

    Input ``pixel_values``: ``(B, 3, H, W)``, normalized with :attr:`image_mean` / :attr:`image_std`, ``H`` and
    ``W`` multiples of the patch size (non-square is fine).
    Output: ``(B, D, H / p, W / p)``, the patch tokens of the final hidden state (after the final norm)
    with the family's prefix tokens removed.

    Attributes: ``model`` (the ``transformers`` vision model), ``family`` (:class:`BackboneFamily`),
    ``patch_size``, ``hidden_size``, ``num_prefix_tokens``, ``image_processor`` (the checkpoint's, or the
    family's reference one), ``image_mean`` / ``image_std`` (its normalization), ``rope_augment``.

    Args:
        model: a supported ``transformers`` vision model (not a full CLIP / SigLIP model).
        image_processor: its image processor; None for the family's reference one.
        rope_augment: keep the RoPE coordinate augmentation on in training mode (DINOv3 only).

    Raises:
        ConfigError: an unsupported or full (vision + text) model, or ``rope_augment`` for a family without RoPE.

    Example::

        from paka_hf import PatchBackbone
        backbone = PatchBackbone.from_pretrained("facebook/dinov2-with-registers-small")
        grid = backbone(torch.randn(1, 3, 224, 224))  # (1, 384, 16, 16)
    """

    def __init__(self, model: PreTrainedModel, image_processor: Any = None, *, rope_augment: bool = False):
        super().__init__()
        config = model.config
        self.family = family_for(getattr(config, "model_type", None), type(model).__name__)
        if config.model_type in self.family.full_model_types:
            raise ConfigError(
                f"{type(model).__name__} is a full {config.model_type} model; pass its vision tower "
                f"({self.family.model_class}) or load it with PatchBackbone.from_pretrained"
            )
        if rope_augment and self.family.rope_module is None:
            raise ConfigError(f"rope_augment applies to RoPE backbones (dinov3_vit) only, not {self.family.title}")
        self.model = model
        patch = config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        self.hidden_size = int(config.hidden_size)
        self.num_prefix_tokens = self.family.num_prefix_tokens(config)
        self.image_processor = image_processor if image_processor is not None else default_image_processor(self.family)
        self.image_mean, self.image_std = processor_normalization(self.image_processor)
        self.rope_augment = bool(rope_augment)
        self.train(self.training)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, image_processor: Any = None, rope_augment: bool = False, **kwargs: Any
    ) -> PatchBackbone:
        """Load from a Hub id or local folder (keyword arguments as :func:`load_backbone`), with the
        checkpoint's image processor unless ``image_processor`` is given.

        Args:
            name_or_path: a Hub id or a local folder.
            image_processor: the image processor; None for the checkpoint's own (or the family's reference).
            rope_augment: as for :class:`PatchBackbone`.
            **kwargs: passed to :func:`load_backbone`.

        Returns:
            The backbone.

        Raises:
            ConfigError: an unsupported model type, or ``rope_augment`` for a family without RoPE.
        """
        model = load_backbone(name_or_path, **kwargs)
        if image_processor is None:
            image_processor = load_image_processor(
                name_or_path, kwargs.get("revision"), family_for(model.config.model_type)
            )
        return cls(model, image_processor, rope_augment=rope_augment)

    @classmethod
    def from_config(
        cls, config: PretrainedConfig, *, image_processor: Any = None, rope_augment: bool = False, **kwargs: Any
    ) -> PatchBackbone:
        """Random-init backbone from a supported (vision) config, with the family's reference processor.

        Args:
            config: a supported vision or full config.
            image_processor: the image processor; None for the family's reference one.
            rope_augment: as for :class:`PatchBackbone`.
            **kwargs: passed to the model class's ``_from_config`` (``attn_implementation`` defaults to ``"sdpa"``).

        Returns:
            The backbone, randomly initialized.

        Raises:
            ConfigError: an unsupported model type, or ``rope_augment`` for a family without RoPE.
        """
        family = family_for(getattr(config, "model_type", None), type(config).__name__)
        config = vision_config(config)
        kwargs.setdefault("attn_implementation", "sdpa")
        model = _transformers_class(family.model_class)._from_config(config, **kwargs)
        return cls(model, image_processor, rope_augment=rope_augment)

    def unused_parameter_names(self) -> list[str]:
        """Names (in this module) of the parameters that never reach the patch grid; frozen by PaKA.

        Returns:
            The parameter names, ``model.``-prefixed.
        """
        prefixes = self.family.unused_parameters(self.model.config)
        return [f"model.{name}" for name, _ in self.model.named_parameters() if name.startswith(prefixes)]

    def train(self, mode: bool = True) -> PatchBackbone:
        """Set training mode; the RoPE module stays in eval mode (exact coordinates) unless ``rope_augment``.

        Args:
            mode: training (True) or evaluation (False).

        Returns:
            The backbone itself.
        """
        super().train(mode)
        if self.family.rope_module is not None and not self.rope_augment:
            getattr(self.model, self.family.rope_module).eval()  # exact RoPE coordinates, as the teacher's
        return self

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch-grid size ``(h, w)`` for an input of ``height`` × ``width`` pixels.

        Args:
            height: the input height in pixels.
            width: the input width in pixels.

        Returns:
            ``(height // p, width // p)``.
        """
        return height // self.patch_size, width // self.patch_size

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Every final token, prefix included: ``(B, prefix + h·w, D)``, after the final norm.

        Args:
            pixel_values: ``(B, 3, H, W)`` normalized images, sides multiples of the patch size.

        Returns:
            ``(B, prefix + h·w, D)`` tokens.
        """
        mode = self.family.input_mode
        if mode == "pixels":
            hidden = self.model(pixel_values=pixel_values).last_hidden_state
        elif mode == "interpolate":
            hidden = self.model(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state
        else:  # naflex: one unpadded h × w grid per image
            batch, _, height, width = pixel_values.shape
            h, w = self.grid_size(height, width)
            shapes = torch.tensor([[h, w]], dtype=torch.long, device=pixel_values.device).expand(batch, 2)
            mask = torch.ones(batch, h * w, dtype=torch.long, device=pixel_values.device)
            hidden = self.model(
                pixel_values=patchify(pixel_values, self.patch_size), pixel_attention_mask=mask, spatial_shapes=shapes
            ).last_hidden_state
        if self.family.final_norm is not None:
            hidden = getattr(self.model, self.family.final_norm)(hidden)
        return hidden

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The patch grid of ``pixel_values``.

        Args:
            pixel_values: ``(B, 3, H, W)`` normalized images, sides multiples of the patch size ``p``.

        Returns:
            ``(B, D, H / p, W / p)`` patch tokens.

        Raises:
            ValueError: ``pixel_values`` is not 4-D, or a side is not a multiple of ``p``.
        """
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got shape {tuple(pixel_values.shape)}")
        batch, _, height, width = pixel_values.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the patch size {p}; "
                f"resize views to multiples of {p} (for example {max(p, height // p * p)}x{max(p, width // p * p)})"
            )
        hidden = self.tokens(pixel_values)  # (B, prefix + h*w, D)
        patches = hidden[:, self.num_prefix_tokens :]
        h, w = height // p, width // p
        return patches.transpose(1, 2).reshape(batch, hidden.shape[-1], h, w)


class ProjectionHead(nn.Module):
    """Token-wise MLP ``D → hidden → hidden → out`` with GELU (docs/METHOD.md §3; default 2048/2048/256).

    Acts on the last dimension, so it takes ``(..., D)`` tokens and returns ``(..., out_dim)``.
    Used during training only; the exported model is always the bare backbone.

    Args:
        in_dim: the token width ``D``.
        hidden_dim: the hidden layers' width.
        out_dim: the output width.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 256):
        super().__init__()
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Project ``tokens``.

        Args:
            tokens: ``(..., in_dim)`` tokens.

        Returns:
            ``(..., out_dim)`` projections.

        Raises:
            ValueError: the last dimension is not ``in_dim``.
        """
        if tokens.shape[-1] != self.in_dim:
            raise ValueError(f"ProjectionHead expects tokens (..., {self.in_dim}), got shape {tuple(tokens.shape)}")
        return self.mlp(tokens)
