r"""FSDP2 sharding of a :class:`~paka_hf.modeling.model.PaKAModel`: student and teacher alike, on one mesh.

PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) replaces every parameter of a module by a ``DTensor``
sharded on dim 0 over a 1-D device mesh of ``W`` processes: process ``r`` holds rows
``[r⌈n/W⌉, (r+1)⌈n/W⌉)`` of an ``(n, …)`` tensor (``torch.chunk``'s split; the last shards may be short or
empty). A sharded module all-gathers its parameters before its forward (in ``param_dtype`` under a mixed
precision policy) and frees them after it; gradients are reduce-scattered (in ``reduce_dtype``) so that each
process keeps the gradient of its own rows, and the optimizer steps on the local rows only. Per process, the
weight side of training then costs ``1/W`` of what DDP holds.

:func:`shard_paka_model` shards, in this order and on the same mesh (as DINOv3's own trainer does):

1. each transformer block of the student (the family's ``block_pattern``), then the student's root
   (embeddings, final norm);
2. the same for the full EMA teacher, so that teacher tensor ``i`` and student tensor ``i`` have the same local
   rows on every process and the EMA step ``θ_t ← m θ_t + (1 − m) θ_s`` is a local operation on the shards, with
   no communication (:func:`paka_hf.modeling.teacher.ema_apply_`); the teacher always frees its gathered
   parameters right after its forward (``reshard_after_forward=True``): it has no backward to keep them for;
3. the projection heads, then the whole module (the root: the loss's buffers, and the one place where FSDP2
   waits for the last gradient reduction of a step).

A LoRA student's teacher (:class:`~paka_hf.modeling.lora.LoRATeacher`) holds only EMA copies of the tensors that
train (adapters, unfrozen blocks, norms) and runs over the student's own base: its tensors become DTensors with the
placements of the student's tensors they copy (:meth:`~paka_hf.modeling.lora.LoRATeacher.shard_like_student`), so its EMA step is shard-local too.

:func:`gather_full_state` is the way back for export: one tensor at a time is all-gathered, and only process
zero keeps it (on the CPU), so process zero holds one full copy of the exported network and the others none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from paka_hf.modeling.backbones import PatchBackbone

#: What :func:`shard_paka_model` and the training summary call this strategy.
FSDP2 = "FSDP2"


@dataclass(frozen=True)
class ShardingSettings:
    """How :func:`shard_paka_model` shards.

    Args:
        param_dtype: the dtype parameters are all-gathered to and computed in (``torch.bfloat16`` for bf16 mixed
            precision); ``None`` keeps the stored dtype (fp32).
        reduce_dtype: the dtype gradients are reduce-scattered in (fp32 by default, as DINOv3's trainer does, so
            that bf16 compute never sums gradients in bf16).
        reshard_after_forward: the student frees its gathered parameters after its forward and gathers them again
            for the backward (less memory, one more all-gather per block); the teacher always reshards.
    """

    param_dtype: torch.dtype | None = None
    reduce_dtype: torch.dtype | None = torch.float32
    reshard_after_forward: bool = True

    def describe(self) -> str:
        """The settings in words, for the start-up log.

        Returns:
            E.g. ``"parameters bf16, gradient reduction fp32, student reshards after forward"``.
        """
        name = {None: "fp32 (as stored)", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
        return (
            f"parameters {name.get(self.param_dtype, str(self.param_dtype))}, gradient reduction "
            f"{name.get(self.reduce_dtype, str(self.reduce_dtype))}, student "
            f"{'reshards' if self.reshard_after_forward else 'keeps its parameters'} after forward"
        )


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (a sharded parameter).

    Args:
        tensor: any tensor.

    Returns:
        True for a DTensor.
    """
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The rows this process holds of a sharded tensor (a view: writing to it writes the shard), or the tensor.

    Args:
        tensor: a DTensor or a plain tensor.

    Returns:
        The local shard, or ``tensor`` itself.
    """
    return tensor._local_tensor if is_dtensor(tensor) else tensor


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DTensor (the module was sharded by :func:`shard_paka_model`).

    Args:
        module: any module.

    Returns:
        True when a parameter is sharded.
    """
    return any(is_dtensor(param) for param in module.parameters())


def transformer_blocks(backbone: PatchBackbone) -> list[nn.Module]:
    """The transformer blocks of a backbone, in depth order: the modules whose name (inside the ``transformers``
    model) matches the family's ``block_pattern``.

    Args:
        backbone: a :class:`PatchBackbone`, with or without LoRA adapters (peft keeps the blocks' names).

    Returns:
        The blocks.

    Raises:
        ValueError: no module matches (a family whose pattern does not fit its model).
    """
    pattern = re.compile(rf"^{backbone.family.block_pattern}$")
    blocks = [module for name, module in backbone.model.named_modules() if pattern.match(name)]
    if not blocks:
        raise ValueError(
            f"no transformer block of the {backbone.family.title} model matches {backbone.family.block_pattern!r}"
        )
    return blocks


def shard_paka_model(model: nn.Module, mesh, settings: ShardingSettings | None = None) -> nn.Module:
    """Shard a :class:`~paka_hf.modeling.model.PaKAModel` in place with FSDP2 (see the module docstring).

    Call it before the optimizer is made (it must see the sharded parameters) and before any checkpoint is
    loaded (sharded checkpoints load into sharded parameters).

    Args:
        model: the ``PaKAModel``: ``student``, ``teacher`` (a copy or a ``LoRATeacher``), optional heads.
        mesh: a 1-D ``DeviceMesh`` over every process (``init_device_mesh("cuda" | "cpu", (W,))``); passed
            explicitly so that a CPU run never moves modules to a visible GPU.
        settings: mixed precision and resharding; the defaults shard in fp32.

    Returns:
        ``model``, now an ``FSDPModule``.

    Raises:
        ValueError: the model is already sharded.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_sharded(model):
        raise ValueError("this model is already sharded")
    settings = settings or ShardingSettings()
    policy = MixedPrecisionPolicy(param_dtype=settings.param_dtype, reduce_dtype=settings.reduce_dtype)

    def shard(module: nn.Module, reshard: bool) -> None:
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)

    lora_teacher = not isinstance(model.teacher, PatchBackbone)
    networks = [(model.student, settings.reshard_after_forward)]
    if not lora_teacher:
        networks.append((model.teacher, True))
    for network, reshard in networks:
        for block in transformer_blocks(network):
            shard(block, reshard)
        shard(network, reshard)
    for head, reshard in ((model.student_head, settings.reshard_after_forward), (model.teacher_head, True)):
        if head is not None:
            shard(head, reshard)
    # The LoRA teacher's adapter copies stay out of the root's FSDP group: FSDP would gather them whole before each
    # forward and hand the teacher plain tensors; they are sharded like the student's adapters instead.
    ignored = set(model.teacher.parameters()) if lora_teacher else None
    fully_shard(
        model,
        mesh=mesh,
        mp_policy=policy,
        reshard_after_forward=settings.reshard_after_forward,
        ignored_params=ignored,
    )
    if lora_teacher:
        model.teacher.shard_like_student()
    model._ema_pairs = None  # the EMA lists must name the sharded parameters
    return model


@torch.no_grad()
def gather_full_tensors(tensors: dict[str, torch.Tensor], *, keep: bool) -> dict[str, torch.Tensor]:
    """Whole CPU copies of (possibly sharded) tensors, gathered one at a time.

    A collective call: every process must make it, with the same names in the same order. Each DTensor is
    all-gathered (``DTensor.full_tensor``), copied to the CPU where ``keep`` and freed, so a process that keeps
    peaks at one whole copy of the tensors on its CPU plus one gathered tensor on its device, and a process that
    does not keep holds nothing.

    Args:
        tensors: ``{name: tensor}``, DTensors or plain tensors.
        keep: whether this process keeps the copies (process zero for an export; every process for a checksum).

    Returns:
        ``{name: whole CPU tensor}`` where ``keep``; an empty dict elsewhere.
    """
    gathered: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        full = tensor.full_tensor() if is_dtensor(tensor) else tensor
        if keep:
            gathered[name] = full.detach().to("cpu", copy=True)
        del full
    return gathered


def gather_full_state(module: nn.Module, *, keep: bool) -> dict[str, torch.Tensor]:
    """:func:`gather_full_tensors` of ``module.state_dict()`` (a collective call).

    Args:
        module: a module whose parameters may be DTensors.
        keep: whether this process keeps the copies.

    Returns:
        ``{name: whole CPU tensor}`` where ``keep``; an empty dict elsewhere.
    """
    return gather_full_tensors(module.state_dict(), keep=keep)


def unsharded_backbone(
    template: PatchBackbone, state: dict[str, torch.Tensor], *, lora_settings=None
) -> PatchBackbone:
    """A plain (unsharded) CPU copy of a backbone with the whole tensors of ``state``, for export.

    Built on the meta device from ``template``'s config (no random initialisation, no second copy of the
    weights), with ``template``'s LoRA adapters when it has them, then given ``state``'s tensors; buffers that are
    not in a state dict (RoPE frequencies) are copied from ``template``, where every process holds them whole.

    Args:
        template: the (sharded) backbone whose architecture, image processor and adapters are copied.
        state: its whole state dict (:func:`gather_full_state`), names as ``template.state_dict()``.
        lora_settings: the :class:`~paka_hf.modeling.lora.LoRASettings` of ``template``'s adapters, or ``None``.

    Returns:
        The copy, on the CPU.

    Raises:
        RuntimeError: ``state`` does not match the architecture (a missing or unexpected tensor).
    """
    import copy as copy_module

    from paka_hf.modeling.lora import ADAPTER_NAME, add_lora, is_lora_backbone, peft_model_of

    config = copy_module.deepcopy(template.model.config)
    with torch.device("meta"):
        backbone = PatchBackbone.from_config(
            config,
            image_processor=template.image_processor,
            attn_implementation=getattr(config, "_attn_implementation", None) or "sdpa",
        )
        if is_lora_backbone(template):
            base = peft_model_of(template).peft_config[ADAPTER_NAME].base_model_name_or_path
            add_lora(backbone, lora_settings, base_model_name_or_path=base)
    backbone.load_state_dict(state, strict=True, assign=True)
    template_buffers = dict(template.named_buffers())
    for name, buffer in list(backbone.named_buffers()):
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            module = backbone.get_submodule(owner) if owner else backbone
            module._buffers[leaf] = template_buffers[name].detach().to("cpu", copy=True)
    return backbone.eval()
