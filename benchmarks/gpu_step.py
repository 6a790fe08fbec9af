"""The PaKA training step on one accelerator at paper crops: throughput, memory, MFU, and its cost over the bare backbones.

For each model (ViT-S/14 and ViT-B/14 with DINOv2-with-registers shapes: hidden 384 / 768, 12 layers,
6 / 12 heads, mlp_ratio 4, patch 14, 4 registers; random init, SDPA attention), B images per step
(default 64), 2 global views of 518 for the teacher and 4 local views of 98 for the student, the
projection head 2048/2048/256, bf16 autocast for the networks (the loss is computed in fp32 by
``paka_hf.losses`` whatever the autocast dtype). Three steps are timed on the same views, in
alternating blocks so that clock and thermal drift hit them alike:

    full:        teacher fwd (no_grad) → student fwd → RoIAlign → heads → 1 − CKA → backward → clip → AdamW → EMA
    bare:        teacher fwd (no_grad) + student fwd/backward (loss = sum of the student's patch tokens)
    bare+heads:  bare, plus the teacher's head (no_grad) and the student's head (fwd/bwd) on as many tokens
                 as the full step aligns (B · n_local · roi² per side, straight from the grids, no RoIAlign)

and the script prints, per model: ms per step of each, full / bare (the overhead ratio: the cost of
everything that is not the backbones' own arithmetic) and full / (bare+heads) (the cost of what is
not the method's own arithmetic: alignment, loss, clipping, AdamW, EMA), images/s of the full step,
peak memory (``torch.cuda.max_memory_allocated``),
model FLOPs utilisation and the projected wall time of the paper schedule (25 epochs of COCO train2017,
25 × 118,287 = 2,957,175 images; input pipeline not included). Then (``--no_breakdown`` skips it) it times
what the full step adds, each part alone: ``PaKAModel.objective`` (RoIAlign → heads → loss, forward and
backward, from the backbones' outputs), the same without the heads, and clip + AdamW + EMA, and prints
their sum beside full − bare. On CUDA it also runs one full step under
``torch.cuda.set_sync_debug_mode("warn")`` and reports every host–device synchronisation it finds.

Model FLOPs (recomputation under gradient checkpointing is not counted, as usual for MFU). For a view of
S × S pixels, patch p, n = (S/p)² patches, N = n + 1 + registers tokens, L layers, width D:

    F_view(S) = 2 · P_tok · N  +  2 · P_emb · n  +  4 · L · N² · D

where P_tok = weights of the encoder's linear layers (12 · L · D² at mlp_ratio 4: qkv, output, MLP) and
P_emb = weights of the patch-embedding convolution (3 · p² · D); 4 · L · N² · D is QKᵀ and AV. The heads
run on the T = B · n_local · roi² aligned tokens: F_head = 2 · P_head · T. One step:

    F_step = 3 · (B · n_local · F_view(98) + F_head)      student fwd + bwd (bwd ≈ 2 × fwd)
           + 1 · (B · n_global · F_view(518) + F_head)    teacher fwd
    MFU    = F_step / t_step / peak                       (peak: --peak_tflops, 989 = H100 SXM bf16 dense)

The bare step counts F_step without the heads. RoIAlign, the loss, AdamW and EMA are not counted.

Timing: ``--warmup`` untimed steps of each kind (compilation happens there), then ``--steps`` of each
kind in ``--rounds`` alternating blocks, each block timed with CUDA events and synchronized only at its
ends; the figures are medians over blocks. ``--compile`` compiles with ``dynamic=False``, by default the
whole ``PaKAModel`` (``--compile_scope model``: backbones, alignment, heads and loss in one graph, what
``torch_compile: true`` in a training config does through ``Trainer``; the bare steps are compiled the
same way, as one function each), or only the two backbones (``--compile_scope backbones``: each
backbone module runs at two input sizes; with automatic dynamic shapes its second compile would trace
symbolic sizes, and AOTAutograd fails on the backward of DINOv2's antialiased bicubic
position-embedding interpolation then). Clipping, AdamW and the EMA run eagerly in both, as in ``Trainer``.
A model is skipped when ``--time_budget`` would likely be exceeded; each model's row is printed and
``--json`` rewritten as soon as it is measured, so a run cut short keeps what it had.

Data are synthetic and made on the device: normalized random views, GLIM boxes from
``paka_hf.views.glim.sample_boxes`` on a 640 × 480 image. Nothing is downloaded. Only the model modules of
``paka_hf`` are imported (no ``datasets``, no ``Trainer``); where torchvision or Pillow do not import,
the script (run as a script, not when imported) puts the stand-ins of ``benchmarks/_stand_ins.py`` in their
place (RoIAlign in plain torch, same numbers) and the header says so. What is timed is the package's own
code: ``PaKAModel`` (its forward, ``objective``, ``update_teacher``, ``activation_checkpointing_enable``) and
the AdamW groups of ``paka_hf.training.optimization.optimizer_groups`` that ``PaKATrainer`` builds, so a change to the
package shows in the figures.

    python benchmarks/gpu_step.py [--models s14 b14] [--batch 64] [--steps 30] [--warmup 3]
                                  [--compile [--compile_scope model|backbones]] [--grad_checkpointing] [--json PATH]
    python benchmarks/gpu_step.py --view_rendering cpu device   # also the full step from uint8 images (below)
    python benchmarks/gpu_step.py --loss cka neco                # PaKA's and NeCo's full steps, one run (below)
    python benchmarks/gpu_step.py --smoke      # tiny shapes, 2 steps, a few seconds on CPU (test suite)

``--loss cka neco`` measures each model a second time with NeCo's sorting loss in the full step instead of
1 − CKA (``loss: neco`` with NeCo's published settings: steepness 100, a queue of 16,384 teacher tokens fed
20 per image; rows "ViT-S/14 NeCo"), so that one run times NeCo's step beside PaKA's on the same views:
the bare steps are the same for both, and full / bare then says what each loss costs on top of the
backbones. The FLOP count and MFU leave the loss out for both (NeCo's relaxed sort is ~21 layers of
O(49²) element-wise work per aligned token, not matmul FLOPs). NeCo's step reads the number of valid
tokens back to the host once (its reference draw), which the sync check reports.

``--view_rendering device`` adds a third step, timed in the same alternating blocks:

    full+render:  B uint8 640 × 480 images + draws → PaKAModel renders the views on the device
                  (``paka_hf.views.glim.render_views``: Pillow-exact bicubic crop-resize as batched matmuls,
                  per-view colour jitter / grayscale / blur) → the full step as above

so its ratio to the bare step *includes* the rendering, and the rendering alone is timed too (fp32
flag off, and with ``torch.backends.cuda.matmul.allow_tf32`` on, which ``--tf32`` of Trainer sets; the
resampling's products are float32-accurate pairs of TF32 products either way, see ``paka_hf.views.resample``). This is what training costs on the
device when the data workers only decode JPEGs (``view_rendering: device``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers
import yaml
from torch import nn
from transformers import (
    CLIPVisionConfig,
    Dinov2WithRegistersConfig,
    DINOv3ViTConfig,
    Siglip2VisionConfig,
    SiglipVisionConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


if __name__ == "__main__":  # run as a script: where torchvision or Pillow do not import, stand-ins take their place
    from _stand_ins import install_stand_ins

    STAND_INS = install_stand_ins()  # before paka_hf imports them
else:  # imported (tests, step_ops.py): the importer decides
    STAND_INS = []

from paka_hf.losses import NeCoSettings
from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead
from paka_hf.modeling.lora import LoRASettings, LoRATeacher, add_lora
from paka_hf.modeling.model import PaKAModel
from paka_hf.training.optimization import optimizer_groups
from paka_hf.views.geometry import ViewGeometry
from paka_hf.views.glim import GlimTransform, collate_views, render_views, sample_boxes

PAPER_IMAGES = 25 * 118_287  # 2,957,175: 25 epochs of COCO train2017
IMAGE_HW = (480, 640)  # boxes are sampled on a COCO-sized image
TEACHER_MOMENTUM = 0.9995  # EMA: share of the teacher kept per step (PaKAConfig.teacher_momentum)
_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6)
_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
# name: (label, family config class, architecture) — the released models' shapes, random weights.
MODELS = {
    "s14": ("ViT-S/14", "dinov2r", _S),
    "b14": ("ViT-B/14", "dinov2r", _B),
    "dinov3_s16": ("DINOv3 ViT-S/16", "dinov3", _S),
    "dinov3_splus16": ("DINOv3 ViT-S+/16", "dinov3", dict(_S, intermediate_size=1536, use_gated_mlp=True)),
    "dinov3_b16": ("DINOv3 ViT-B/16", "dinov3", _B),
    "siglip_b16": ("SigLIP(2) B/16", "siglip", _B),
    "siglip2_b16": ("SigLIP2 NaFlex B/16", "siglip2", _B),
    "clip_b16": ("CLIP ViT-B/16", "clip", _B),
    "tiny": ("tiny", "dinov2r", _TINY),  # --smoke, and --smoke with one of the tiny_* below
    "tiny_dinov3": ("tiny DINOv3", "dinov3", dict(_TINY, use_gated_mlp=True)),
    "tiny_siglip": ("tiny SigLIP", "siglip", _TINY),
    "tiny_siglip2": ("tiny SigLIP2", "siglip2", _TINY),
    "tiny_clip": ("tiny CLIP", "clip", _TINY),
}
LABELS = {name: label for name, (label, _, _) in MODELS.items()}
#: The parameter-efficient recipe "cka_lora" times: the repository's default LoRA recipe, whose lora_* fields
#: (rank, alpha, variant, unfrozen blocks, norms...) are read from this file, so a change of default is timed as is.
LORA_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "repro" / "paka_lora.yaml"
# appended to the model's label in the rows; "cka_lora": PaKA's loss on a student adapted as LORA_RECIPE says
# (paka_hf.modeling.lora), whose teacher shares the frozen base
LOSS_LABELS = {"cka": "", "neco": " NeCo", "cka_lora": " LoRA"}


def lora_recipe_settings(path: Path = LORA_RECIPE) -> LoRASettings:
    """The :class:`LoRASettings` of a run config's ``lora_*`` fields (``lora_rank`` → ``rank`` ...); the fields it
    leaves out keep their defaults, which are :class:`~paka_hf.training.config.PaKAConfig`'s."""
    values = yaml.safe_load(path.read_text())
    kwargs = {f.name: values[f"lora_{f.name}"] for f in dataclasses.fields(LoRASettings) if f"lora_{f.name}" in values}
    if kwargs.get("target_modules") is not None:
        kwargs["target_modules"] = tuple(kwargs["target_modules"])
    return LoRASettings(**kwargs)


def lora_label(settings: LoRASettings) -> str:
    """Short words for what a LoRA student trains, e.g. ``LoRA r16 attention +1 block +norms`` (no targets named:
    the family's default, every attention and MLP projection)."""
    words = [f"{'DoRA' if settings.variant == 'dora' else 'LoRA'} r{settings.rank}"]
    if settings.target_modules:
        words.append(" ".join(settings.target_modules))
    if settings.unfrozen_blocks:
        words.append(f"+{settings.unfrozen_blocks} block{'s' if settings.unfrozen_blocks > 1 else ''}")
    if settings.train_norms:
        words.append("+norms")
    return " ".join(words)


def label(name: str, loss: str) -> str:
    if loss == "cka_lora":
        return f"{LABELS[name]} {lora_label(lora_recipe_settings())}"
    return LABELS[name] + LOSS_LABELS[loss]


def log(*parts) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------------------------------------
# model, data and FLOPs
# ---------------------------------------------------------------------------------------------


def backbone_config(name: str, drop_path_rate: float):
    """The config of a ``--models`` entry: the released checkpoints' structure (patch size, registers, MLP)."""
    _, family, arch = MODELS[name]
    arch = dict(arch)
    width = arch["hidden_size"]
    if family == "dinov2r":
        return Dinov2WithRegistersConfig(
            **arch, mlp_ratio=4, patch_size=14, image_size=518, num_register_tokens=4, drop_path_rate=drop_path_rate
        )
    if family == "dinov3":  # DINOv3 ViT-S/B/L: 4 registers, layer scale, RoPE; S+/H+: gated MLP
        arch.setdefault("intermediate_size", 4 * width)
        return DINOv3ViTConfig(
            **arch, patch_size=16, num_register_tokens=4, layerscale_value=1e-5, drop_path_rate=drop_path_rate
        )
    common = dict(arch, intermediate_size=4 * width, patch_size=16)
    if family == "siglip":
        return SiglipVisionConfig(**common, image_size=512)
    if family == "siglip2":
        return Siglip2VisionConfig(**common, num_patches=256)
    return CLIPVisionConfig(**common, image_size=224)


def view_sizes(args, patch_size: int) -> tuple[int, int]:
    """``--global_size`` / ``--local_size`` rounded to the nearest multiples of the model's patch size
    (518/98 for patch 14 → 512/96 for patch 16, as configs/dinov3_vit*16_coco.yaml)."""
    return tuple(
        max(patch_size, round(size / patch_size) * patch_size) for size in (args.global_size, args.local_size)
    )


def enable_checkpointing(model: PaKAModel) -> None:
    """``--grad_checkpointing``: :meth:`PaKAModel.activation_checkpointing_enable` (the student's layers; the
    teacher runs under no_grad), non-reentrant (works under torch.compile), called as ``Trainer`` calls it for
    ``activation_checkpointing: true`` (transformers < 5.20: the older name, ``gradient_checkpointing_*``)."""
    kwargs = {"use_reentrant": False}
    if hasattr(transformers.PreTrainedModel, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_model(name: str, args, loss: str = "cka") -> PaKAModel:
    backbone = PatchBackbone.from_config(backbone_config(name, args.drop_path), attn_implementation="sdpa")
    if not backbone.family.has_drop_path:
        log(f"{LABELS[name]}: {backbone.family.title} has no stochastic depth; --drop_path does not apply")
    head = ProjectionHead(backbone.hidden_size, args.head_hidden, args.head_out)
    if loss == "cka_lora":
        add_lora(backbone, lora_recipe_settings())
        loss = "cka"
    # roi 7, linear kernel: the defaults of the trainer; NeCo with its published settings (steepness 100,
    # a 16384-token queue fed 20 tokens per image: NeCo's at its batch of 64)
    model = PaKAModel(backbone, head, loss=loss, neco=NeCoSettings() if loss == "neco" else None)
    if args.grad_checkpointing:  # the student only: the teacher runs in eval mode under no_grad
        enable_checkpointing(model)
    return model.to(args.device).train()


def make_optimizer(model: PaKAModel, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over PaKATrainer's groups (:func:`paka_hf.training.optimization.optimizer_groups`, PaKAConfig's defaults:
    backbone lr 1e-5, head lr 1e-4, weight decay 0.04; no decay on biases and 1-D parameters)."""
    groups = optimizer_groups(model, learning_rate=1e-5, head_learning_rate=1e-4, weight_decay=0.04)
    # PaKAConfig's optim is Trainer's default, adamw_torch_fused.
    return torch.optim.AdamW(groups, fused=device.type in ("cuda", "cpu"))


def synthetic_batch(
    batch: int,
    global_size: int,
    local_size: int,
    n_local: int,
    device: torch.device,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.25, 0.25, 0.25),
) -> dict:
    """Random views normalized with ``mean``/``std`` (the backbone's) and GLIM boxes (640 × 480 image), on ``device``."""
    generator = torch.Generator().manual_seed(0)
    boxes = [sample_boxes(*IMAGE_HW, n_local, generator=generator) for _ in range(batch)]
    mean = torch.tensor(mean, device=device)[:, None, None]
    std = torch.tensor(std, device=device)[:, None, None]
    n_global = boxes[0].global_boxes.shape[0]

    def views(count: int, size: int) -> torch.Tensor:
        return (torch.rand(batch, count, 3, size, size, device=device) - mean) / std

    return {
        "global_views": views(n_global, global_size),
        "local_views": views(n_local, local_size),
        "global_boxes": torch.stack([b.global_boxes for b in boxes]).to(device),
        "local_boxes": torch.stack([b.local_boxes for b in boxes]).to(device),
        "pair_index": torch.stack([b.pair_index for b in boxes]).to(device),
        "global_flips": torch.zeros(batch, n_global, dtype=torch.bool, device=device),
        "local_flips": torch.zeros(batch, n_local, dtype=torch.bool, device=device),
    }


def synthetic_render_batch(batch: int, global_size: int, local_size: int, n_local: int, device: torch.device) -> dict:
    """What the data workers ship with ``view_rendering: device``, on ``device``: B random 640 × 480
    uint8 images (noise: no cheap all-equal case) and the draws of :meth:`GlimTransform.sample`
    (boxes, random flips, photometric parameters of the local views)."""
    transform = GlimTransform(global_size, local_size, n_local, flip=True, rendering="device")
    generator = torch.Generator().manual_seed(1)
    height, width = IMAGE_HW
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator).numpy()
    samples = [transform(image, generator) for image in images]
    out = collate_views(samples)
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in out.items()}


def view_flops(backbone: PatchBackbone, size: int) -> float:
    """F_view(S) = 2 · P_tok · N + 2 · P_emb · n + 4 · L · N² · D (see the module docstring)."""
    hf = backbone.model
    blocks = re.compile(rf"^{backbone.family.block_pattern}\.")  # the transformer blocks, per family
    p_tok = sum(m.weight.numel() for n, m in hf.named_modules() if isinstance(m, nn.Linear) and blocks.match(n))
    p_emb = next(
        m.weight.numel()
        for n, m in hf.named_modules()
        if n.startswith("embeddings.patch_embedding") and hasattr(m, "weight")
    )
    n = (size // backbone.patch_size) ** 2
    tokens = n + backbone.num_prefix_tokens
    layers, width = hf.config.num_hidden_layers, hf.config.hidden_size
    return 2.0 * p_tok * tokens + 2.0 * p_emb * n + 4.0 * layers * tokens**2 * width


def step_flops(model: PaKAModel, batch: dict) -> tuple[float, float]:
    """Model FLOPs of the (full, bare) step."""
    b, n_global = batch["global_boxes"].shape[:2]
    n_local = batch["local_boxes"].shape[1]
    student = b * n_local * view_flops(model.student, batch["local_views"].shape[-1])
    # a LoRA teacher (paka_hf.modeling.lora.LoRATeacher) runs the student's own modules with its EMA adapters
    teacher_net = model.student if isinstance(model.teacher, LoRATeacher) else model.teacher
    teacher = b * n_global * view_flops(teacher_net, batch["global_views"].shape[-1])
    head_params = sum(m.weight.numel() for m in model.student_head.modules() if isinstance(m, nn.Linear))
    head = 2.0 * head_params * b * n_local * model.roi_size**2
    return 3 * (student + head) + teacher + head, 3 * student + teacher


# ---------------------------------------------------------------------------------------------
# the two steps and their timing
# ---------------------------------------------------------------------------------------------


def bare_loss(
    model: PaKAModel, global_views: torch.Tensor, local_views: torch.Tensor, teacher_index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bare step's forward: (loss to backpropagate, teacher output). With ``teacher_index`` (P,), both heads
    run on P · roi² tokens per side taken straight from the grids. The teacher's output is returned so that a
    compiled version cannot drop the teacher's forward as dead code."""
    with torch.no_grad():
        teacher_out = model.teacher(global_views.flatten(0, 1))
    student_out = model.student(local_views.flatten(0, 1))
    if teacher_index is not None:
        tokens = model.roi_size**2
        with torch.no_grad():
            teacher_out = model.teacher_head(teacher_out.flatten(2).transpose(1, 2)[teacher_index, :tokens])
        student_out = model.student_head(student_out.flatten(2).transpose(1, 2)[:, :tokens])
    return student_out.float().sum(), teacher_out


def objective(model: PaKAModel, teacher_grids: torch.Tensor, student_grids: torch.Tensor, batch: dict) -> torch.Tensor:
    """PaKAModel.forward after the backbones (``PaKAModel.objective``: RoIAlign, heads, loss)."""
    loss, _ = model.objective(teacher_grids, student_grids, ViewGeometry.from_batch(batch))
    return loss


class Steps:
    """``full()`` and ``bare()`` on one model and batch; neither reads a value back to the host."""

    def __init__(self, model: PaKAModel, batch: dict, args, render_batch: dict | None = None):
        self.model, self.batch, self.args = model, batch, args
        self.render_batch = render_batch  # images + draws: the full step with views rendered on the device
        self.optimizer = make_optimizer(model, args.device)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.autocast = torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
        self.last_loss = None
        # the teacher view each aligned pair reads (image-major), for the heads of the bare+heads step
        n_global = batch["global_boxes"].shape[1]
        image = torch.arange(batch["pair_index"].shape[0], device=args.device)[:, None]
        self.teacher_index = (image * n_global + batch["pair_index"]).flatten()
        self.bare_loss = self.compiled(bare_loss)

    def compiled(self, function):
        """``function`` compiled as one graph when the whole model is (``--compile_scope model``), else as is."""
        args = self.args
        return (
            torch.compile(function, **args.compile_kwargs)
            if args.compile and args.compile_scope == "model"
            else function
        )

    def full(self, batch: dict | None = None) -> None:
        model = self.model
        with self.autocast:
            loss = model(**(batch or self.batch)).loss
        loss.backward()
        if self.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.args.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        model.update_teacher(TEACHER_MOMENTUM)
        self.last_loss = loss.detach()

    # --- the parts of the full step that the bare step lacks, each alone (--breakdown) ---------------

    def prepare_parts(self) -> None:
        """Backbone outputs to start the objective from (teacher grids, student grids as a leaf that takes
        gradients), and gradients on every parameter for the optimizer tail."""
        batch = self.batch
        with self.autocast, torch.no_grad():
            self.teacher_grids = self.model.teacher(batch["global_views"].flatten(0, 1))
            self.student_grids = self.model.student(batch["local_views"].flatten(0, 1))
        self.student_grids.requires_grad_(True)
        self.objective_fn = self.compiled(objective)
        with self.autocast:
            loss = self.model(**batch).loss
        loss.backward()  # gradients for tail(); the optimizer never zeroes them there

    def objective(self) -> None:
        """RoIAlign → heads → 1 − CKA, forward and backward, from the backbones' outputs."""
        with self.autocast:
            loss = self.objective_fn(self.model, self.teacher_grids, self.student_grids, self.batch)
        loss.backward()
        self.student_grids.grad = None
        if self.model.student_head is not None:
            for param in self.model.student_head.parameters():
                param.grad = None

    def objective_without_heads(self) -> None:
        """The same with the heads taken out of the model for the call (the loss compares the aligned tokens)."""
        model = self.model
        heads = model.student_head, model.teacher_head
        model.student_head = model.teacher_head = None
        try:
            self.objective()
        finally:
            model.student_head, model.teacher_head = heads

    def tail(self) -> None:
        """What follows the backward in the full step: clipping, AdamW, EMA."""
        if self.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.args.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.model.update_teacher(TEACHER_MOMENTUM)

    def full_render(self) -> None:
        """The full step from images: PaKAModel renders the views (crop, resize, colour) on the device first."""
        self.full(self.render_batch)

    def render(self) -> None:
        """The rendering alone (what ``full_render`` adds to ``full``)."""
        b = self.render_batch
        render_views(
            b["images"],
            b["image_sizes"],
            ViewGeometry.from_batch(b),
            b["view_spec"],
            b.get("global_color"),
            b.get("local_color"),
        )

    def bare(self, with_heads: bool = False) -> None:
        batch = self.batch
        with self.autocast:
            loss, _ = self.bare_loss(
                self.model, batch["global_views"], batch["local_views"], self.teacher_index if with_heads else None
            )
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)

    def bare_heads(self) -> None:
        self.bare(with_heads=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(step, count: int, device: torch.device) -> float:
    """Seconds per step over ``count`` back-to-back steps; the device is synchronized only at the ends."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(count):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / count
    t0 = time.perf_counter()
    for _ in range(count):
        step()
    return (time.perf_counter() - t0) / count


def find_syncs(step, device: torch.device) -> list[str] | None:
    """Run ``step`` once under ``torch.cuda.set_sync_debug_mode("warn")``; the Python lines that synchronized."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize(device)
    sites = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]
    return sorted(set(sites))


def profile_full_step(steps, device: torch.device, label: str, repeats: int = 3) -> None:
    """Print where a full step's time goes: torch.profiler over ``repeats`` full steps, the ops with the
    most device time and those with the most host time (launch-bound work shows up in the second)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            steps.full()
        synchronize(device)
    averages = prof.key_averages()
    device_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"--- {label}: profile of {repeats} full steps, by device time", flush=True)
    print(averages.table(sort_by=device_key, row_limit=25), flush=True)
    print(f"--- {label}: by host time", flush=True)
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15), flush=True)


def profile_render(steps, device: torch.device, label: str, repeats: int = 3) -> None:
    """Where the rendering's device time goes: torch.profiler over ``repeats`` renderings."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            steps.render()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"--- {label}: profile of {repeats} renderings of {steps.args.batch} images, by device time", flush=True)
    print(prof.key_averages().table(sort_by=key, row_limit=22), flush=True)


def run_model(name: str, args, loss: str = "cka") -> dict:
    device = args.device
    torch.manual_seed(0)
    t_build = time.perf_counter()
    model = build_model(name, args, loss)
    global_size, local_size = view_sizes(args, model.student.patch_size)
    batch = synthetic_batch(
        args.batch, global_size, local_size, args.n_local, device, model.student.image_mean, model.student.image_std
    )
    rendering = "device" in args.view_rendering
    render_batch = (
        synthetic_render_batch(args.batch, global_size, local_size, args.n_local, device) if rendering else None
    )
    if args.compile and args.compile_scope == "model":
        model.compile(**args.compile_kwargs)
    elif args.compile:
        model.student.compile(**args.compile_kwargs)
        model.teacher.compile(**args.compile_kwargs)
    steps = Steps(model, batch, args, render_batch)
    full_flops, bare_flops = step_flops(model, batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    build_s = time.perf_counter() - t_build

    t_warm = time.perf_counter()
    for _ in range(args.warmup):  # the first steps compile (with --compile) and fill the allocator's cache
        steps.full()
        steps.bare()
        steps.bare_heads()
        if rendering:
            steps.full_render()
    synchronize(device)
    warmup_s = time.perf_counter() - t_warm

    blocks = max(1, min(args.rounds, args.steps))
    per_block = [args.steps // blocks + (i < args.steps % blocks) for i in range(blocks)]
    kinds = {
        "full": steps.full,
        "bare": steps.bare,
        "bare_heads": steps.bare_heads,
        **({"full_render": steps.full_render} if rendering else {}),
    }
    times = {kind: [] for kind in kinds}
    peaks = {kind: 0 for kind in kinds}
    for count in per_block:
        for kind, step in kinds.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[kind].append(time_block(step, count, device))
            if device.type == "cuda":
                peaks[kind] = max(peaks[kind], torch.cuda.max_memory_allocated(device))
    full_times, bare_times, peak_full, peak_bare = times["full"], times["bare"], peaks["full"], peaks["bare"]
    t_full, t_bare = statistics.median(full_times), statistics.median(bare_times)
    render: dict = {}
    if rendering:  # the rendering alone, in fp32 and (CUDA) with TF32 matmuls, which Trainer's --tf32 turns on
        render["render_ms"] = 1e3 * time_block(steps.render, args.steps, device)
        if device.type == "cuda":
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                steps.render()
                render["render_ms_tf32"] = 1e3 * time_block(steps.render, args.steps, device)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous
        t_render = statistics.median(times["full_render"])
        render.update(
            full_render_ms=1e3 * t_render,
            full_render_ms_blocks=[1e3 * t for t in times["full_render"]],
            ratio_full_render_over_bare=t_render / t_bare,
            images_per_s_full_render=args.batch / t_render,
            peak_memory_full_render_gib=peaks["full_render"] / 2**30 if device.type == "cuda" else None,
            paper_schedule_hours_full_render=PAPER_IMAGES / (args.batch / t_render) / 3600,
        )
    breakdown: dict = {}
    if args.breakdown:  # the full step's extra parts alone, after the alternating blocks (they change nothing)
        steps.prepare_parts()
        parts = {
            "objective_ms": steps.objective,
            "objective_without_heads_ms": steps.objective_without_heads,
            "tail_ms": steps.tail,
        }
        if loss == "neco":  # its queue holds head outputs: the loss cannot run on the aligned tokens without heads
            del parts["objective_without_heads_ms"]
        for key, step in parts.items():
            step()  # compiles (with --compile), fills the allocator's cache
            breakdown[key] = 1e3 * time_block(step, args.steps, device)
        without_heads = breakdown.get("objective_without_heads_ms")
        breakdown["heads_ms"] = None if without_heads is None else breakdown["objective_ms"] - without_heads
        breakdown["parts_sum_ms"] = breakdown["objective_ms"] + breakdown["tail_ms"]
        breakdown["full_minus_bare_ms"] = 1e3 * (t_full - t_bare)
        del steps.teacher_grids, steps.student_grids
    syncs = find_syncs(steps.full, device) if args.sync_check else None
    if rendering and args.sync_check:
        render["host_device_syncs_in_full_render_step"] = find_syncs(steps.full_render, device)
    if args.profile:
        profile_full_step(steps, device, label(name, loss))
    if args.profile_render and rendering:
        profile_render(steps, device, label(name, loss))
    last_loss = float(steps.last_loss)  # read back after the timed region

    t_bare_heads = statistics.median(times["bare_heads"])
    images_per_s = args.batch / t_full
    peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else None
    result = {
        "model": label(name, loss),
        "loss": loss,
        "view_sizes": [global_size, local_size],
        "params_student": sum(p.numel() for p in model.student.parameters()),
        "params_head": sum(p.numel() for p in model.student_head.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "batch": args.batch,
        "full_ms": 1e3 * t_full,
        "bare_ms": 1e3 * t_bare,
        "ratio_full_over_bare": t_full / t_bare,
        "bare_heads_ms": 1e3 * t_bare_heads,
        "ratio_full_over_bare_heads": t_full / t_bare_heads,
        "full_ms_blocks": [1e3 * t for t in full_times],
        "bare_ms_blocks": [1e3 * t for t in bare_times],
        "bare_heads_ms_blocks": [1e3 * t for t in times["bare_heads"]],
        "images_per_s": images_per_s,
        "peak_memory_gib": peak_full / 2**30 if device.type == "cuda" else None,
        "peak_memory_bare_gib": peak_bare / 2**30 if device.type == "cuda" else None,
        "tflop_per_step": full_flops / 1e12,
        "tflop_per_bare_step": bare_flops / 1e12,
        "achieved_tflops": full_flops / t_full / 1e12,
        "mfu": full_flops / t_full / peak_flops if peak_flops else None,
        "mfu_bare": bare_flops / t_bare / peak_flops if peak_flops else None,
        "paper_schedule_hours": PAPER_IMAGES / images_per_s / 3600,
        "host_device_syncs_in_full_step": syncs,
        "breakdown": breakdown or None,
        "last_loss": last_loss,
        "loss_finite": math.isfinite(last_loss),
        "build_s": build_s,
        "warmup_s": warmup_s,
        **render,
    }
    del steps, model, batch, render_batch
    if args.compile:
        torch._dynamo.reset()  # the next model starts with empty compile caches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["s14", "b14"],
        choices=[m for m in MODELS if m != "tiny"],
        help="DINOv2R s14/b14, DINOv3 dinov3_s16/_splus16/_b16, siglip_b16, siglip2_b16, clip_b16 "
        "(random weights, released shapes; patch-16 models take the views rounded to multiples "
        "of 16, e.g. 512/96), tiny_* for --smoke",
    )
    parser.add_argument(
        "--loss",
        nargs="+",
        default=["cka"],
        choices=list(LOSS_LABELS),
        help="the full step's loss: 'cka' (PaKA), 'neco' (NeCo's sorting loss, its published "
        "settings), 'cka_lora' (PaKA on a student adapted as configs/repro/paka_lora.yaml says: LoRA, whose "
        "teacher shares the base); "
        "each model is measured once per choice, in this order",
    )
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each kind (full, bare, bare+heads)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed blocks the steps are split into")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps of each kind first (compile happens here)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the step (see --compile_scope)")
    parser.add_argument(
        "--compile_scope",
        choices=["model", "backbones"],
        default="model",
        help="with --compile: the whole PaKAModel and each bare step as one function (as Trainer's "
        "torch_compile), or only the student and teacher backbones",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print a torch.profiler table of the full step per model"
    )
    parser.add_argument(
        "--profile_render",
        action="store_true",
        help="with --view_rendering device: a torch.profiler table of the rendering alone",
    )
    parser.add_argument("--compile_backend", default="inductor")
    parser.add_argument("--compile_mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--grad_checkpointing", action="store_true", help="activation checkpointing in the student")
    parser.add_argument(
        "--view_rendering",
        nargs="+",
        choices=["cpu", "device"],
        default=["cpu"],
        help="'device' also times the full step from 640x480 uint8 images, the model rendering the "
        "views (crop, resize, colour) on the device, and the rendering alone",
    )
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="autocast dtype of the networks")
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="peak dense bf16 TFLOP/s for MFU (default 989, H100 SXM, on CUDA; none on CPU)",
    )
    parser.add_argument("--global_size", type=int, default=518)
    parser.add_argument("--local_size", type=int, default=98)
    parser.add_argument("--n_local", type=int, default=4)
    parser.add_argument("--head_hidden", type=int, default=2048)
    parser.add_argument("--head_out", type=int, default=256)
    parser.add_argument("--drop_path", type=float, default=0.1, help="stochastic depth of the student (paper: 0.1)")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping as in Trainer (0: off)")
    parser.add_argument(
        "--no_breakdown",
        dest="breakdown",
        action="store_false",
        help="skip timing the full step's extra parts alone (alignment + heads + loss, clip + AdamW + EMA)",
    )
    parser.add_argument(
        "--no_sync_check",
        dest="sync_check",
        action="store_false",
        help="skip the extra step under torch.cuda.set_sync_debug_mode",
    )
    parser.add_argument(
        "--time_budget",
        type=float,
        default=420.0,
        help="seconds; a model is skipped when the run would likely exceed this",
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps: a few seconds on CPU")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models = [m for m in args.models if m.startswith("tiny_")] or ["tiny"]
        args.batch, args.steps, args.rounds, args.warmup = 2, 2, 2, 1
        args.global_size, args.local_size = 56, 28
        args.head_hidden, args.head_out = 64, 32
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.peak_tflops is None and args.device.type == "cuda":
        args.peak_tflops = 989.0
    # dynamic=False: with --compile_scope backbones, teacher and student run the same compiled code at two
    # input sizes; with automatic dynamic shapes the second compile traces symbolic sizes, and the backward
    # of the antialiased bicubic position-embedding interpolation fails under AOTAutograd then (torch 2.14).
    # The shapes never change within a run, so it costs the whole-model scope nothing.
    args.compile_kwargs = {"backend": args.compile_backend, "dynamic": False}
    if args.compile_mode:
        args.compile_kwargs["mode"] = args.compile_mode
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


HEADER = (
    f"{'model':14s}{'full ms':>9s}{'bare ms':>9s}{'ratio':>7s}{'b+h ms':>9s}{'ratio b+h':>10s}"
    f"{'img/s':>9s}{'peak GiB':>9s}"
    f"{'TFLOP/st':>9s}{'TFLOP/s':>9s}{'MFU':>7s}{'MFU bare':>9s}{'paper h':>9s}"
)


def table_row(r: dict) -> str:
    def cell(value, width: int, spec: str, scale: float = 1.0, suffix: str = "") -> str:
        return f"{'n/a' if value is None else format(value * scale, spec) + suffix:>{width}s}"

    if "error" in r:
        return f"{r['model']:14s}failed: {r['error'][:100]}"
    return (
        f"{r['model']:14s}{r['full_ms']:9.2f}{r['bare_ms']:9.2f}{r['ratio_full_over_bare']:7.3f}"
        f"{r['bare_heads_ms']:9.2f}{r['ratio_full_over_bare_heads']:10.3f}{r['images_per_s']:9.1f}{cell(r['peak_memory_gib'], 9, '.2f')}{r['tflop_per_step']:9.3f}"
        f"{r['achieved_tflops']:9.1f}{cell(r['mfu'], 7, '.1f', 100, '%')}{cell(r['mfu_bare'], 9, '.1f', 100, '%')}"
        f"{r['paper_schedule_hours']:9.2f}"
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    log(
        f"PaKA step on {device_name(args.device)} | torch {torch.__version__} | transformers {transformers.__version__}"
    )
    if STAND_INS:
        log(
            f"not importable here, replaced by stand-ins: {', '.join(STAND_INS)} (RoIAlign in plain torch: "
            "same numbers, its own speed)"
        )
    log(
        f"batch {args.batch}: 2 global views {args.global_size}px (teacher) + {args.n_local} local views "
        f"{args.local_size}px (student), head {args.head_hidden}/{args.head_hidden}/{args.head_out}, "
        f"{'bf16 autocast' if args.precision == 'bf16' else 'fp32 (no autocast)'}, sdpa, compile "
        f"{f'on ({args.compile_backend}, {args.compile_scope})' if args.compile else 'off'}, "
        f"grad checkpointing {'on' if args.grad_checkpointing else 'off'}, drop_path {args.drop_path}, "
        f"{args.steps} timed steps of each kind in {args.rounds} alternating blocks after {args.warmup} warm-up"
    )
    report = {
        "device": device_name(args.device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "settings": {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()},
        "stand_ins": STAND_INS,
        "paper_images": PAPER_IMAGES,
        "flops_formula": "3*(B*n_local*F_view(local) + F_head) + B*n_global*F_view(global) + F_head; "
        "F_view(S) = 2*P_tok*N + 2*P_emb*n + 4*L*N^2*D; F_head = 2*P_head*B*n_local*roi^2",
        "results": [],
        "skipped": [],
        "complete": False,
    }

    def save() -> None:  # after every model, so that a run cut short keeps what it measured
        report["total_s"] = time.perf_counter() - started
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")

    results, expected = report["results"], 0.0
    for name, loss in [(name, loss) for name in args.models for loss in args.loss]:
        elapsed = time.perf_counter() - started
        if results and elapsed + expected > args.time_budget:
            log(
                f"{label(name, loss)}: skipped, {elapsed:.0f} s spent and about {expected:.0f} s more expected "
                f"(--time_budget {args.time_budget:.0f} s)"
            )
            report["skipped"].append(label(name, loss))
            continue
        t0 = time.perf_counter()
        try:
            result = run_model(name, args, loss)
        except Exception as error:  # report and go on: one model's failure should not cost the other's figures
            if args.smoke:
                raise
            result = {"model": label(name, loss), "error": f"{type(error).__name__}: {error}"}
            gc.collect()
            if args.device.type == "cuda":
                torch.cuda.empty_cache()
        result["model_s"] = time.perf_counter() - t0
        results.append(result)
        if "error" not in result:
            log(
                f"{label(name, loss)}: done in {result['model_s']:.0f} s (build {result['build_s']:.0f} s, warm-up "
                f"{result['warmup_s']:.0f} s), last loss {result['last_loss']:.4f} | {table_row(result)}"
            )
            # The next model: compile and set-up about as long, timed steps up to 3.5x (b14 after s14).
            fixed = result["build_s"] + result["warmup_s"]
            expected = 1.3 * fixed + 3.5 * (result["model_s"] - fixed)
        else:
            log(table_row(result))
            expected = 1.3 * result["model_s"]
        save()

    log("")
    log(HEADER)
    for r in results:
        log(table_row(r))
    log(
        "ratio = full PaKA step / bare (teacher fwd + student fwd/bwd) on the same views; b+h = bare + both heads "
        "on the aligned token count; ratio b+h = full / (b+h); paper h = "
        f"{PAPER_IMAGES:,} images / img/s (input pipeline not included); MFU against {args.peak_tflops or 'n/a'} TFLOP/s"
    )
    rendered = [r for r in results if "full_render_ms" in r]
    if rendered:
        log("")
        log(
            f"{'model':14s}{'full+render ms':>15s}{'bare ms':>9s}{'ratio':>7s}{'img/s':>9s}{'peak GiB':>9s}"
            f"{'render ms':>10s}{'render tf32':>12s}{'paper h':>9s}"
        )
        for r in rendered:
            tf32 = r.get("render_ms_tf32")
            peak = r["peak_memory_full_render_gib"]
            log(
                f"{r['model']:14s}{r['full_render_ms']:15.2f}{r['bare_ms']:9.2f}{r['ratio_full_render_over_bare']:7.3f}"
                f"{r['images_per_s_full_render']:9.1f}{'n/a' if peak is None else format(peak, '.2f'):>9s}"
                f"{r['render_ms']:10.2f}{'n/a' if tf32 is None else format(tf32, '.2f'):>12s}"
                f"{r['paper_schedule_hours_full_render']:9.2f}"
            )
        log(
            "full+render = the full step from uint8 images, views rendered by the model on the device; ratio = "
            "full+render / bare (bare: teacher fwd + student fwd/bwd on views already rendered); render ms = the rendering "
            "alone (on CUDA its products are float32-accurate pairs of TF32 products whatever the TF32 flag; 'render tf32' "
            "= with torch.backends.cuda.matmul.allow_tf32 on, for comparison)"
        )
    for r in results:
        b = r.get("breakdown")
        if b:
            log(
                f"{r['model']}: what the full step adds, each part alone (ms): alignment + heads + loss fwd/bwd "
                f"{b['objective_ms']:.2f} (heads {'n/a' if b['heads_ms'] is None else format(b['heads_ms'], '.2f')}), "
                f"clip + AdamW + EMA {b['tail_ms']:.2f}; "
                f"sum {b['parts_sum_ms']:.2f} against full − bare {b['full_minus_bare_ms']:.2f}"
            )
    for r in results:
        for key, step in (
            ("host_device_syncs_in_full_step", "full"),
            ("host_device_syncs_in_full_render_step", "full+render"),
        ):
            if r.get(key) is not None:
                sites = r[key]
                log(f"{r['model']}: host-device syncs in one {step} step: {', '.join(sites) if sites else 'none'}")
    report["complete"] = True
    save()
    log(f"total {report['total_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()
