"""Export: the backbone as a plain ``transformers`` model folder that ``AutoModel.from_pretrained`` loads.

:func:`save_backbone` writes ``config.json``, ``model.safetensors`` (never a pickle) and
``preprocessor_config.json``; :func:`weights_sha256` is the identity of those weights that evaluation results
record and the Hub push checks. The names of the files of an output folder live in :mod:`paka_hf.utils.files`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from paka_hf.modeling.backbones import VISION_MODEL_TYPES, PatchBackbone, default_image_processor
from paka_hf.utils.files import PICKLE_WEIGHTS_FILES, WEIGHTS_FILE


def save_backbone(model: Any, output_dir: str | os.PathLike, image_processor: Any = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` to ``output_dir``.

    ``model`` is a vision model of a supported backbone family or a
    :class:`paka_hf.modeling.backbones.PatchBackbone` (its ``.model`` is saved). The weights go to safetensors
    only; a stale ``pytorch_model.bin`` left in the folder by an earlier run is removed so the folder never
    offers a pickle. The saved config has ``drop_path_rate = 0.0`` (stochastic depth is a training setting
    of the student, not part of the published model); the in-memory model is left unchanged.
    ``image_processor`` defaults to the backbone's own (a :class:`~paka_hf.modeling.backbones.PatchBackbone` carries its
    checkpoint's), else the family's reference one. Returns the folder.

    Args:
        model: a supported vision model or a :class:`~paka_hf.modeling.backbones.PatchBackbone`.
        output_dir: the folder to write (created when missing).
        image_processor: the processor to save; None for the model's own or the family's reference one.

    Returns:
        ``output_dir`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``model`` is not a vision model of a supported family (e.g. the training module).
        RuntimeError: ``save_pretrained`` did not write a single ``model.safetensors``.
    """
    # A PatchBackbone's transformers model; never a bare model's own `.model` (DINOv3ViTModel.model is its encoder).
    backbone = model.model if isinstance(model, PatchBackbone) else model
    config = getattr(backbone, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in VISION_MODEL_TYPES:
        raise TypeError(
            f"save_backbone expects a vision model of a supported family ({', '.join(VISION_MODEL_TYPES)}) "
            f"or a PatchBackbone around one, got {type(model).__name__} with model_type={model_type!r}. Pass the student backbone, not the "
            "PaKA training module or the projection head."
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved_drop_path = getattr(config, "drop_path_rate", None)
    try:
        if saved_drop_path:
            config.drop_path_rate = 0.0
        backbone.save_pretrained(out)
    finally:
        if saved_drop_path:
            config.drop_path_rate = saved_drop_path
    for pickle_name in PICKLE_WEIGHTS_FILES:
        (out / pickle_name).unlink(missing_ok=True)
    if not (out / WEIGHTS_FILE).is_file():
        raise RuntimeError(
            f"save_pretrained did not write {out / WEIGHTS_FILE} (sharded or non-safetensors output?); "
            "paka_hf publishes a single safetensors file."
        )
    if image_processor is None:
        image_processor = getattr(model, "image_processor", None) or default_image_processor(model_type)
    image_processor.save_pretrained(out)
    return out


def weights_sha256(path: str | os.PathLike) -> str | None:
    """sha256 (hex) of ``path``, or of ``path/model.safetensors`` for a folder; ``None`` when there is no such file.

    This is the identity of a model's weights that evaluation results record and the push checks: the same
    digest the Hub shows as the LFS ``sha256`` of ``model.safetensors``.

    Args:
        path: a weights file or a model folder.

    Returns:
        The hex digest, or None when the file does not exist.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
