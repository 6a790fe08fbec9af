"""Export: write a trained backbone as a plain ``transformers`` model folder.

The folder holds ``config.json``, ``model.safetensors`` (safetensors only, never pickles) and
``preprocessor_config.json``, so ``AutoModel.from_pretrained(folder)`` and
``pipeline("image-feature-extraction", model=folder)`` load it with no custom code.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import PreTrainedModel


def save_backbone(model: PreTrainedModel, output_dir: str | os.PathLike, image_processor=None) -> Path:
    """Save ``model`` (a ``Dinov2Model`` / ``Dinov2WithRegistersModel``) and its image processor."""
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"save_backbone takes the transformers model itself (for example PatchBackbone.model), got {type(model).__name__}"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    if image_processor is not None:
        image_processor.save_pretrained(output_dir)
    return output_dir
