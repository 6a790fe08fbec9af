#!/usr/bin/env python
r"""Per-GPU memory of the weight side of PaKA post-training, before renting GPUs: no GPU, no download.

Every architecture is built from its ``transformers`` config on the ``meta`` device (shapes, no storage), wrapped
the way training wraps it (:class:`~paka_hf.modeling.model.PaKAModel`: student, EMA teacher, projection head and
its EMA copy; :func:`~paka_hf.modeling.lora.add_lora` for LoRA), and its tensors are counted. Counted, per GPU:

- **weights**: the student (trainable and frozen parameters) and the projection head, fp32;
- **gradients**: one fp32 gradient per *trainable* parameter. Frozen ones get none: DINO's mask token
  (``PatchBackbone.unused_parameter_names``, frozen by ``PaKAModel``), and under LoRA the whole base;
- **optimizer**: AdamW's two fp32 moments per trainable parameter, plus its 4-byte ``step`` counter per trainable
  tensor (on the GPU with the fused AdamW that ``Trainer`` picks by default);
- **teacher**: the EMA teacher and teacher head, fp32 (a full copy; under LoRA only copies of the adapters, since
  the teacher runs over the student's frozen base);
- **buffers**: every buffer of the training module (normalization constants, DINOv3's RoPE frequencies);
- **DDP buckets**: with more than one process, ``DistributedDataParallel`` keeps its own flat fp32 buffers for the
  gradient all-reduce (``gradient_as_bucket_view=False``, accelerate's default): one more gradient-sized copy;
- **FSDP2 working set**: the all-gathered (unsharded) units; see below.

With ``T`` trainable, ``F`` frozen and ``Θ`` teacher parameters, ``n_T`` trainable tensors and ``B`` buffer bytes,
the bytes on each GPU are

.. math::

    M_\text{1 GPU} = 4(T + F) + 4T + (8T + 4 n_T) + 4Θ + B, \qquad
    M_\text{DDP} = M_\text{1 GPU} + 4T \quad (W \ge 2),

    M_\text{FSDP2}(W) = 4(s_T + s_F) + 4 s_T + (8 s_T + 4 n_T) + 4 s_Θ + B + (8 u_1 + 2 u_2),
    \qquad s_X = ⌈X/W⌉ + p_X,

where ``p_X`` is the shard padding of the ``X`` parameters and ``u_1 ≥ u_2`` the two largest FSDP2 units
(parameters each).

**FSDP2**, assumed layout: one unit per transformer block of student and teacher, one per network's remainder
(embeddings, final norm), one per head, all on one mesh of ``W`` GPUs. Everything persistent is divided by the
world size ``W``: sharded fp32 master weights, gradients, AdamW moments and the sharded teacher; buffers and the
AdamW step counters stay whole on every GPU. FSDP2 splits each tensor by rows (dim 0, as ``torch.chunk``): GPU 0
gets ``⌈rows/W⌉`` rows, and every GPU allocates that many for the weights and gradients (padded shards), so a
tensor of one row — DINOv2's position embeddings ``(1, 1370, D)``, class and register tokens, the mask token — is
whole on every GPU, and its AdamW state whole on GPU 0. ``s_X = Σ_tensors ⌈rows/W⌉ · numel/rows`` is what GPU 0,
the fullest, holds of each kind; the table gives GPU 0. With bf16 mixed precision (``param_dtype=bf16``,
``reduce_dtype=fp32``, ``reshard_after_forward=True``) the working set is assumed to be two units unsharded at a
time (the one running and the one prefetched), each as a bf16 copy of its parameters (2 bytes), and in the
student's backward the running unit also holds its unsharded bf16 gradient (2 bytes) and the fp32 copy the
reduce-scatter sends (4 bytes): ``8 u_1 + 2 u_2`` bytes. Teacher and
student forwards do not overlap, so the teacher adds nothing beyond this. It is an estimate of FSDP2's working
set, not a bound: a reduce-scatter still in flight for the previous unit adds up to ``4 u_1`` more.

**Not counted**: activations (they depend on batch size, view sizes and activation checkpointing), the CUDA
context and cuDNN/cuBLAS workspaces (~0.5–1 GiB), allocator fragmentation, and — without FSDP — the bf16 copies
that autocast makes of each weight, which autograd keeps from a layer's forward to its backward (2 bytes per
student parameter with ``--bf16``; count them with the activations). Under DoRA, each wrapped layer's forward
also builds ``W + (α/r)·B A`` to take its row norms, a weight-sized temporary that its backward keeps: activation
side too.

    python benchmarks/memory_plan.py            # the table (GiB per GPU)
    python benchmarks/memory_plan.py --json     # every count and byte, per backbone and strategy
    python benchmarks/memory_plan.py --no_head --lora_unfrozen_blocks 1 --lora_train_norms   # another LoRA plan
    python benchmarks/memory_plan.py --no_head --lora_variant dora --lora_target_modules q_proj k_proj v_proj o_proj

The functions (:func:`weight_side_bytes`, :func:`count_model`, :func:`plan`) are importable;
``tests/test_benchmarks_memory_plan.py`` checks the persistent bytes byte for byte against a real AdamW step, on one
process and on the first of two CPU processes sharded with FSDP2 (full post-training and LoRA).
"""

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from transformers import Dinov2Config, DINOv3ViTConfig, PretrainedConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead  # noqa: E402
from paka_hf.modeling.lora import LORA_VARIANTS, LoRASettings, add_lora  # noqa: E402
from paka_hf.modeling.model import PaKAModel  # noqa: E402

GIB = 2**30
FP32 = 4  # bytes of an fp32 master weight, gradient, AdamW moment or teacher weight
BF16 = 2  # bytes of an all-gathered parameter under bf16 mixed precision
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq
ADAM_STEP_BYTES = 4  # AdamW's fp32 0-dim "step" tensor, one per trainable tensor
STRATEGIES = ("single", "ddp", "fsdp")
# PaKAConfig's defaults (paka_hf/training/config.py: head_hidden_dim, head_out_dim, lora_rank): the head is
# ProjectionHead(D, 2048, 256), trained, with an EMA copy; LoRA adapters of rank 16 on the family's default targets.
DEFAULT_HEAD = (2048, 256)
DEFAULT_LORA_RANK = 16
DEFAULT_LORA = LoRASettings(rank=DEFAULT_LORA_RANK)

# ---------------------------------------------------------------------------------------------
# the architectures
# ---------------------------------------------------------------------------------------------

# DINOv2 (facebook/dinov2-{small,base,large,giant} config.json, as transformers' Dinov2Config reads it): patch 14,
# image_size 518 (a learned position embedding of 1 + 37 × 37 tokens), layer scale, qkv biases, MLP ratio 4, no
# registers (the *-with-registers checkpoints add 4 × D parameters). The giant uses a SwiGLU MLP: hidden
# int(4 D · 2/3) rounded up to a multiple of 8 = 4096 for D = 1536 (Dinov2SwiGLUFFN in transformers).
_DINOV2 = dict(patch_size=14, image_size=518, mlp_ratio=4, qkv_bias=True, layerscale_value=1.0)
# DINOv3 (facebookresearch/dinov3 dinov3/hub/backbones.py: dinov3_vits16, _vitb16, _vitl16, _vith16plus, _vit7b16;
# the same shapes as transformers' convert_dinov3_vit_to_hf.py get_dinov3_config): patch 16, 4 register ("storage")
# tokens, layer scale, RoPE (no position-embedding parameters), no key bias (mask_k_bias; the converted models drop
# it). The gated models use SwiGLU with hidden int(ffn_ratio · D · 2/3) rounded up to a multiple of align_to
# (dinov3 SwiGLUFFN): H+ ffn_ratio 6, align 8 → 5120; 7B ffn_ratio 3, "swiglu64" → 8192.
_DINOV3 = dict(patch_size=16, num_register_tokens=4, layerscale_value=1e-5)
# The DINOv2 family's default LoRA targets name fc1/fc2 (paka_hf.modeling.backbones), which the SwiGLU MLP of the
# giant does not have (it has gate_proj/up_proj/down_proj): add_lora refuses the default there, so the giant's
# LoRA plan names the same projections explicitly.
_SWIGLU_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Backbone:
    """One architecture of the table: its label, its ``transformers`` config, LoRA targets (None: the default)."""

    label: str
    config: Callable[[], PretrainedConfig]
    lora_targets: tuple[str, ...] | None = None


BACKBONES: dict[str, Backbone] = {
    "dinov2_s14": Backbone(
        "DINOv2 ViT-S/14",
        lambda: Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, **_DINOV2),
    ),
    "dinov2_b14": Backbone(
        "DINOv2 ViT-B/14",
        lambda: Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, **_DINOV2),
    ),
    "dinov2_l14": Backbone(
        "DINOv2 ViT-L/14",
        lambda: Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, **_DINOV2),
    ),
    "dinov2_g14": Backbone(
        "DINOv2 ViT-g/14",
        lambda: Dinov2Config(
            hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True, **_DINOV2
        ),
        lora_targets=_SWIGLU_TARGETS,
    ),
    "dinov3_s16": Backbone(
        "DINOv3 ViT-S/16",
        lambda: DINOv3ViTConfig(
            hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6, **_DINOV3
        ),
    ),
    "dinov3_b16": Backbone(
        "DINOv3 ViT-B/16",
        lambda: DINOv3ViTConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, **_DINOV3
        ),
    ),
    "dinov3_l16": Backbone(
        "DINOv3 ViT-L/16",
        lambda: DINOv3ViTConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, **_DINOV3
        ),
    ),
    # dinov3_vith16plus: embed_dim 1280, depth 32, num_heads 20, ffn_ratio 6, ffn_layer "swiglu", qkv_bias True
    "dinov3_hplus16": Backbone(
        "DINOv3 ViT-H+/16",
        lambda: DINOv3ViTConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            use_gated_mlp=True,
            hidden_act="silu",
            **_DINOV3,
        ),
    ),
    # dinov3_vit7b16: embed_dim 4096, depth 40, num_heads 32, ffn_ratio 3, ffn_layer "swiglu64", qkv_bias False
    # (no query/key/value biases; the output projection and the MLP keep theirs)
    "dinov3_7b16": Backbone(
        "DINOv3 ViT-7B/16",
        lambda: DINOv3ViTConfig(
            hidden_size=4096,
            intermediate_size=8192,
            num_hidden_layers=40,
            num_attention_heads=32,
            query_bias=False,
            value_bias=False,
            use_gated_mlp=True,
            hidden_act="silu",
            **_DINOV3,
        ),
    ),
}


# ---------------------------------------------------------------------------------------------
# counting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCounts:
    """What one :class:`PaKAModel` holds, in parameters (elements) and bytes.

    Attributes:
        backbone: parameters of the bare backbone (as released, LoRA adapters excluded).
        head: parameters of the student's projection head (0 without one).
        trainable: parameters AdamW updates: the student backbone's (or its adapters') and the student head's.
        frozen: student parameters without gradient: the mask token; under LoRA the whole base.
        teacher: parameters of the EMA teacher and teacher head.
        trainable_tensors: tensors AdamW keeps a ``step`` counter for.
        buffer_bytes: bytes of every buffer of the training module.
        units: parameters of each FSDP2 unit of the student: its transformer blocks, its remainder (embeddings,
            final norm), its head; largest first.
    """

    backbone: int
    head: int
    trainable: int
    frozen: int
    teacher: int
    trainable_tensors: int
    buffer_bytes: int
    units: tuple[int, ...]


def _numel(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def _padded_shard(tensor: torch.Tensor, world_size: int) -> int:
    """Elements FSDP2 stores per GPU for ``tensor``: ``⌈rows / W⌉`` rows (dim 0), each of ``numel / rows``."""
    if tensor.dim() == 0:
        return 1
    rows = tensor.shape[0]
    return math.ceil(rows / world_size) * (tensor.numel() // rows if rows else 0)


def _networks(model: PaKAModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(student + student head parameters, teacher + teacher head parameters), each tensor once."""
    student, teacher = [], []
    for name, param in model.named_parameters():
        (teacher if name.startswith("teacher") else student).append(param)
    return student, teacher


def count_model(model: PaKAModel) -> ModelCounts:
    """Count what ``model`` holds (any device, ``meta`` included; each tensor once).

    Args:
        model: the training module, as built for training (frozen parameters already frozen).

    Returns:
        The :class:`ModelCounts`.
    """
    student, teacher = _networks(model)
    trainable = [p for p in student if p.requires_grad]
    backbone = model.student
    adapters = {name for name, _ in backbone.named_parameters() if ".lora_A." in name or ".lora_B." in name}
    base = _numel(p for name, p in backbone.named_parameters() if name not in adapters)
    block = re.compile(rf"^{backbone.family.block_pattern}$")
    blocks = [_numel(m.parameters()) for name, m in backbone.model.named_modules() if block.match(name)]
    units = [*blocks, _numel(backbone.parameters()) - sum(blocks)]
    head = _numel(model.student_head.parameters()) if model.student_head is not None else 0
    if head:
        units.append(head)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return ModelCounts(
        backbone=base,
        head=head,
        trainable=_numel(trainable),
        frozen=_numel(p for p in student if not p.requires_grad),
        teacher=_numel(teacher),
        trainable_tensors=len(trainable),
        buffer_bytes=buffers,
        units=tuple(sorted(units, reverse=True)),
    )


def shard_padding(model: PaKAModel, world_size: int) -> tuple[int, int, int]:
    """Extra elements on GPU 0 from FSDP2's row-wise shards, for the trainable, frozen and teacher parameters.

    For each kind ``X``: ``p_X = Σ_tensors ⌈rows/W⌉ · (numel/rows) − ⌈X/W⌉`` (never negative).

    Args:
        model: the training module.
        world_size: the number of GPUs ``W``.

    Returns:
        ``(p_T, p_F, p_Θ)``; zeros for ``W = 1``.
    """
    student, teacher = _networks(model)
    kinds = (
        [p for p in student if p.requires_grad],
        [p for p in student if not p.requires_grad],
        teacher,
    )
    return tuple(
        sum(_padded_shard(p, world_size) for p in kind) - math.ceil(_numel(kind) / world_size) for kind in kinds
    )


def build_model(
    config: PretrainedConfig,
    *,
    head: tuple[int, int] | None = DEFAULT_HEAD,
    lora: LoRASettings | None = None,
    device: str | torch.device = "meta",
) -> PaKAModel:
    """The training module for ``config`` as training builds it (random weights; on ``meta``, no storage).

    Args:
        config: a supported backbone config.
        head: ``(hidden_dim, out_dim)`` of the projection head, or None for none.
        lora: LoRA settings, or None for full post-training.
        device: where the tensors live (``meta``: shapes only).

    Returns:
        The :class:`PaKAModel`, in training mode.
    """
    with torch.device(device):
        backbone = PatchBackbone.from_config(config)
        if lora is not None:
            add_lora(backbone, lora)
        projection = ProjectionHead(config.hidden_size, *head) if head is not None else None
        return PaKAModel(backbone, projection).train()


# ---------------------------------------------------------------------------------------------
# the model of memory
# ---------------------------------------------------------------------------------------------


def weight_side_bytes(
    num_params_trainable: int,
    num_params_frozen: int,
    num_params_teacher: int,
    *,
    strategy: str,
    world_size: int = 1,
    trainable_tensors: int = 0,
    buffer_bytes: int = 0,
    units: tuple[int, ...] = (),
    padding: tuple[int, int, int] = (0, 0, 0),
) -> dict[str, int]:
    """Bytes per GPU of the weight side of one training step, by part (the module docstring derives them).

    With ``T``, ``F``, ``Θ`` the trainable, frozen and teacher parameters and ``s_X = X`` (``single``, ``ddp``)
    or ``⌈X / W⌉ + p_X`` (``fsdp``, ``p_X`` the shard padding):

    - weights ``4 (s_T + s_F)``, gradients ``4 s_T``, optimizer ``8 s_T + 4 n_T``, teacher ``4 s_Θ``, buffers ``B``;
    - ``ddp`` with ``W ≥ 2``: DDP buckets ``4 T``;
    - ``fsdp``: working set ``8 u_1 + 2 u_2`` (two units all-gathered in bf16, one with its bf16 gradient and
      fp32 reduce-scatter copy).

    Args:
        num_params_trainable: ``T``.
        num_params_frozen: ``F``.
        num_params_teacher: ``Θ``.
        strategy: ``single`` (one GPU, no wrapper), ``ddp`` or ``fsdp``.
        world_size: GPUs ``W`` (``fsdp`` divides by it; ``ddp`` adds its buckets from 2 on).
        trainable_tensors: ``n_T``, for AdamW's step counters.
        buffer_bytes: ``B``, held whole on every GPU.
        units: parameters of the FSDP2 units (any order); used by ``fsdp`` only.
        padding: ``(p_T, p_F, p_Θ)``, the extra elements of FSDP2's row-wise shards on GPU 0
            (:func:`shard_padding`); ``fsdp`` only.

    Returns:
        ``{"weights", "gradients", "optimizer", "teacher", "buffers", "ddp_buckets", "fsdp_working_set",
        "total"}`` in bytes.

    Raises:
        ValueError: an unknown strategy, ``world_size < 1``, or ``single`` with ``world_size > 1``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if world_size < 1 or (strategy == "single" and world_size != 1):
        raise ValueError(f"world_size {world_size} does not fit strategy {strategy!r}")
    sharded = strategy == "fsdp"

    def share(n: int, pad: int) -> int:
        return math.ceil(n / world_size) + pad if sharded else n

    trainable = share(num_params_trainable, padding[0])
    largest = sorted(units, reverse=True)[:2] + [0, 0]
    parts = {
        "weights": FP32 * (trainable + share(num_params_frozen, padding[1])),
        "gradients": FP32 * trainable,
        "optimizer": ADAM_MOMENTS * FP32 * trainable + ADAM_STEP_BYTES * trainable_tensors,
        "teacher": FP32 * share(num_params_teacher, padding[2]),
        "buffers": buffer_bytes,
        "ddp_buckets": FP32 * num_params_trainable if strategy == "ddp" and world_size > 1 else 0,
        "fsdp_working_set": (BF16 + BF16 + FP32) * largest[0] + BF16 * largest[1] if sharded else 0,
    }
    parts["total"] = sum(parts.values())
    return parts


def plan_bytes(model: PaKAModel, strategy: str, world_size: int = 1) -> dict[str, int]:
    """:func:`weight_side_bytes` for a built training module (counts and shard padding taken from it).

    Args:
        model: the training module (``meta`` is enough).
        strategy: ``single``, ``ddp`` or ``fsdp``.
        world_size: the number of GPUs.

    Returns:
        The parts in bytes, as :func:`weight_side_bytes`.
    """
    counts = count_model(model)
    return weight_side_bytes(
        counts.trainable,
        counts.frozen,
        counts.teacher,
        strategy=strategy,
        world_size=world_size,
        trainable_tensors=counts.trainable_tensors,
        buffer_bytes=counts.buffer_bytes,
        units=counts.units,
        padding=shard_padding(model, world_size) if strategy == "fsdp" else (0, 0, 0),
    )


#: The table's columns: (key, heading, LoRA, strategy, world size). DDP's per-GPU bytes do not depend on W ≥ 2.
COLUMNS = (
    ("full_1gpu", "full, 1 GPU", False, "single", 1),
    ("full_ddp", "full, DDP", False, "ddp", 2),
    ("full_fsdp8", "FSDP2 ×8", False, "fsdp", 8),
    ("full_fsdp16", "FSDP2 ×16", False, "fsdp", 16),
    ("lora_1gpu", "LoRA, 1 GPU", True, "single", 1),
)


def plan(
    names: Iterable[str] | None = None,
    *,
    head: tuple[int, int] | None = DEFAULT_HEAD,
    lora: LoRASettings = DEFAULT_LORA,
) -> dict[str, dict]:
    """Counts and bytes per GPU of every backbone and column of the table.

    Args:
        names: keys of :data:`BACKBONES`; None for all.
        head: the projection head's ``(hidden_dim, out_dim)``, or None for none.
        lora: the LoRA plan. What changes memory: the rank (alpha does not), the variant (``dora`` adds a trained
            magnitude per output row of each wrapped layer; ``rslora`` holds the same tensors as ``lora``), the
            targets (None: each backbone's default, every attention and MLP projection), the last
            ``unfrozen_blocks`` trained fully (with AdamW state and an EMA copy) and ``train_norms``.

    Returns:
        ``{backbone key: {"label", "counts": {"full", "lora"}, "bytes": {column key: parts}}}``.
    """
    result = {}
    for name in names or BACKBONES:
        entry = BACKBONES[name]
        models = {
            False: build_model(entry.config(), head=head),
            True: build_model(
                entry.config(),
                head=head,
                lora=replace(lora, target_modules=lora.target_modules or entry.lora_targets),
            ),
        }
        result[name] = {
            "label": entry.label,
            "counts": {"full": asdict(count_model(models[False])), "lora": asdict(count_model(models[True]))},
            "bytes": {
                key: plan_bytes(models[is_lora], strategy, world_size)
                for key, _, is_lora, strategy, world_size in COLUMNS
            },
        }
    return result


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------


def _millions(n: int) -> str:
    return f"{n / 1e6:,.1f} M"


def _lora_words(lora: LoRASettings) -> str:
    """The footnote's words for the LoRA plan: variant, rank, wrapped layers and what trains beside the adapters."""
    name = {"lora": "LoRA", "dora": "DoRA", "rslora": "rsLoRA"}[lora.variant]
    groups = {"attention": "the attention projections", "mlp": "the MLP projections"}  # LORA_TARGET_GROUPS
    where = (
        ", ".join(groups.get(target, target) for target in lora.target_modules)
        if lora.target_modules
        else "every attention and MLP projection"
    )
    extras = [f"the last {lora.unfrozen_blocks} block(s) trained fully"] if lora.unfrozen_blocks else []
    extras += ["the adapted blocks' norms and layer scales"] if lora.train_norms else []
    return f"{name} rank {lora.rank} on {where}" + ((", plus " + " and ".join(extras)) if extras else "")


def format_table(
    result: dict[str, dict],
    head: tuple[int, int] | None,
    lora: LoRASettings = DEFAULT_LORA,
) -> str:
    """The Markdown table (GiB per GPU) with its parameter counts and footnotes.

    Args:
        result: what :func:`plan` returns.
        head: the head used, for the footnote.
        lora: the LoRA plan used, for the footnote.

    Returns:
        The table as text.
    """
    headings = [heading for _, heading, *_ in COLUMNS]
    lines = [
        "| backbone | parameters | head | LoRA trainable | " + " | ".join(headings) + " | LoRA ÷ full (1 GPU) |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in headings) + " | ---: |",
    ]
    for entry in result.values():
        gib = [f"{entry['bytes'][key]['total'] / GIB:.2f}" for key, *_ in COLUMNS]
        full, adapted = entry["counts"]["full"], entry["counts"]["lora"]
        numbers = [full["backbone"], full["head"], adapted["trainable"] - adapted["head"]]
        ratio = entry["bytes"]["lora_1gpu"]["total"] / entry["bytes"]["full_1gpu"]["total"]
        share = (adapted["trainable"] - adapted["head"]) / full["backbone"]
        cells = [*map(_millions, numbers[:2]), f"{_millions(numbers[2])} ({share:.1%})", *gib, f"{ratio:.2f}"]
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    head_text = f"ProjectionHead(D, {head[0]}, {head[1]}) and its EMA copy" if head else "no projection head"
    lines += [
        "",
        f"GiB per GPU of the weight side only: fp32 weights, gradients, AdamW (2 moments), EMA teacher; {head_text}; "
        f"{_lora_words(lora)} "
        "(LoRA trainable: everything but the head, and its share of the backbone's parameters). Frozen mask "
        "token: no gradient, no AdamW state. DDP adds its gradient buckets (W >= 2); FSDP2 (GPU 0, bf16 mixed "
        "precision) divides weights, gradients, AdamW and teacher by W, row-wise, and adds the all-gathered working "
        "set of two units. Activations are NOT included: they come on top and depend on batch, view sizes and activation "
        "checkpointing; so do the CUDA context (~0.5-1 GiB) and autocast's bf16 weight copies without FSDP.",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=None, help="default: all")
    parser.add_argument("--head_hidden_dim", type=int, default=DEFAULT_HEAD[0])
    parser.add_argument("--head_out_dim", type=int, default=DEFAULT_HEAD[1])
    parser.add_argument("--no_head", action="store_true", help="train without the projection head")
    parser.add_argument("--lora_rank", type=int, default=DEFAULT_LORA_RANK)
    parser.add_argument(
        "--lora_variant",
        choices=LORA_VARIANTS,
        default="lora",
        help="LoRA: the adapter variant (lora_variant); dora adds a trained magnitude per output row",
    )
    parser.add_argument(
        "--lora_target_modules",
        nargs="+",
        default=None,
        help="LoRA: short names of the wrapped layers (lora_target_modules); default: each family's own",
    )
    parser.add_argument(
        "--lora_unfrozen_blocks",
        type=int,
        default=0,
        help="LoRA: the last N blocks train fully (lora_unfrozen_blocks)",
    )
    parser.add_argument(
        "--lora_train_norms", action="store_true", help="LoRA: the adapted blocks' norms train too (lora_train_norms)"
    )
    parser.add_argument("--json", action="store_true", help="print every count and byte as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    head = None if args.no_head else (args.head_hidden_dim, args.head_out_dim)
    lora = LoRASettings(
        rank=args.lora_rank,
        variant=args.lora_variant,
        target_modules=tuple(args.lora_target_modules) if args.lora_target_modules else None,
        unfrozen_blocks=args.lora_unfrozen_blocks,
        train_norms=args.lora_train_norms,
    )
    result = plan(args.backbones, head=head, lora=lora)
    if args.json:
        columns = {key: dict(heading=h, lora=is_lora, strategy=s, world_size=w) for key, h, is_lora, s, w in COLUMNS}
        # the plan's LoRA settings as the training config names them (alpha and dropout do not change memory)
        fields = ("rank", "variant", "target_modules", "unfrozen_blocks", "train_norms")
        header = {"columns": columns, "head": head, **{f"lora_{name}": getattr(lora, name) for name in fields}}
        print(json.dumps({**header, "backbones": result}, indent=1))
    else:
        print(format_table(result, head, lora))
    return result


if __name__ == "__main__":
    main()
