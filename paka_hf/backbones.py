"""Backbones: DINOv2 and DINOv2-with-registers as dense patch-feature extractors.

PaKA works on the *last-layer patch grid* of a ViT (SPEC §1): the ``last_hidden_state`` of a
Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (already passed through the final
layer norm), with the CLS token and any register tokens dropped, reshaped to ``(B, D, h, w)``
where ``h = H / patch_size`` and ``w = W / patch_size``.

Example::

    >>> from paka_hf.backbones import PatchBackbone
    >>> backbone = PatchBackbone.from_pretrained("facebook/dinov2-with-registers-small")
    >>> grid = backbone(torch.randn(2, 3, 224, 308))   # (2, 384, 16, 22)

The wrapped model stays a plain ``transformers`` model (``backbone.model``), so what is saved
with ``backbone.model.save_pretrained`` loads back with ``AutoModel.from_pretrained`` and no
custom code.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

SUPPORTED_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


def _check_model_type(config: PretrainedConfig, source: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source!r} is a {model_type!r} model; paka_hf supports {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(DINOv2 and DINOv2 with registers). Pass a checkpoint such as 'facebook/dinov2-small' "
            "or 'facebook/dinov2-with-registers-small', or a local directory saved from one."
        )


def load_backbone(
    name_or_path: str | os.PathLike,
    *,
    drop_path_rate: float | None = None,
    attn_implementation: str | None = "sdpa",
    revision: str | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a ``Dinov2Model`` or ``Dinov2WithRegistersModel`` from a Hub id or a local directory.

    Uses ``AutoModel`` (``AutoBackbone`` cannot load a local directory offline, SPEC §3).
    ``drop_path_rate`` overrides the checkpoint's stochastic depth (0.1 for the PaKA student).
    Extra keyword arguments go to ``from_pretrained`` (``dtype``, ``token``, ``cache_dir``...).
    """
    source = os.fspath(name_or_path)
    config = AutoConfig.from_pretrained(source, revision=revision, token=kwargs.get("token"))
    _check_model_type(config, source)
    if drop_path_rate is not None:
        config.drop_path_rate = float(drop_path_rate)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModel.from_pretrained(source, config=config, revision=revision, **kwargs)


class PatchBackbone(nn.Module):
    """A DINOv2(-with-registers) model that returns its last-layer patch grid.

    Input ``pixel_values``: ``(B, 3, H, W)``, normalized, ``H`` and ``W`` multiples of the patch
    size (non-square is fine: DINOv2 interpolates its position embeddings).
    Output: ``(B, D, H / p, W / p)``, the patch tokens of ``last_hidden_state`` with the
    ``1 + num_register_tokens`` prefix tokens removed.
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        _check_model_type(model.config, type(model).__name__)
        self.model = model
        config = model.config
        self.patch_size = int(config.patch_size)
        self.hidden_size = int(config.hidden_size)
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> "PatchBackbone":
        """Load from a Hub id or local directory; keyword arguments as :func:`load_backbone`."""
        return cls(load_backbone(name_or_path, **kwargs))

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> "PatchBackbone":
        """Random-init backbone from a ``Dinov2Config`` / ``Dinov2WithRegistersConfig``."""
        _check_model_type(config, type(config).__name__)
        kwargs.setdefault("attn_implementation", "sdpa")
        return cls(AutoModel.from_config(config, **kwargs))

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch-grid size ``(h, w)`` for an input of ``height`` × ``width`` pixels."""
        return height // self.patch_size, width // self.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got shape {tuple(pixel_values.shape)}")
        batch, _, height, width = pixel_values.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the patch size {p}; "
                f"resize views to multiples of {p} (for example {max(p, height // p * p)}x{max(p, width // p * p)})"
            )
        hidden = self.model(pixel_values=pixel_values).last_hidden_state  # (B, prefix + h*w, D)
        patches = hidden[:, self.num_prefix_tokens :]
        h, w = height // p, width // p
        return patches.transpose(1, 2).reshape(batch, hidden.shape[-1], h, w)


class ProjectionHead(nn.Module):
    """Token-wise MLP ``D → hidden → hidden → out`` with GELU (SPEC §1; default 2048/2048/256).

    Acts on the last dimension, so it takes ``(..., D)`` tokens and returns ``(..., out_dim)``.
    Used during training only; the exported model is always the bare backbone.
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
        if tokens.shape[-1] != self.in_dim:
            raise ValueError(f"ProjectionHead expects tokens (..., {self.in_dim}), got shape {tuple(tokens.shape)}")
        return self.mlp(tokens)
