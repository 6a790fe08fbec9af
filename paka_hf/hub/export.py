"""Export: the backbone as a plain ``transformers`` model folder that ``AutoModel.from_pretrained`` loads.

:func:`save_backbone` writes ``config.json``, ``model.safetensors`` (never a pickle) and
``preprocessor_config.json``; the names of every file the Hub code reads from or writes to an output
folder, and the form of a repository id, are defined here.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from ..backbones import FAMILIES, family_for
from ..backbones import default_image_processor as _family_image_processor

#: The weights file; its sha256 identifies the model an evaluation measured (see :func:`weights_sha256`).
WEIGHTS_FILE = "model.safetensors"
#: Files of the export folder that make the model loadable with ``AutoModel`` / ``AutoImageProcessor``.
EXPORT_FILES = ("config.json", WEIGHTS_FILE, "preprocessor_config.json")
#: The training configuration written by the trainer, pushed next to the model (token-like keys redacted).
TRAINING_CONFIG_FILE = "training_config.yaml"
TRAINING_SUMMARY_FILE = "training_summary.json"
#: The model card in the repository (rendered at each push, never written into the output folder).
CARD_FILE = "README.md"
#: Sub-folder of the output folder (and of the repository) that holds the card's pictures.
PICTURES_DIR = "pictures"
#: Sub-folder of a LoRA run's output folder (and of its repository) that holds the adapter alone (peft's format),
#: beside the merged model: ``PeftModel.from_pretrained(base, folder, subfolder=ADAPTER_DIR)``.
ADAPTER_DIR = "adapter"
#: The files of that sub-folder.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

#: A Hub repository id, ``namespace/name``.
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: ``model_type`` of the vision models an export folder may hold (one per backbone family).
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def default_image_processor(model_type: str = "dinov2"):
    """The reference image processor of a backbone family (:func:`paka_hf.backbones.default_image_processor`),
    for a checkpoint saved without one."""
    return _family_image_processor(family_for(model_type))


def save_backbone(model: Any, output_dir: str | os.PathLike, image_processor: Any = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` to ``output_dir``.

    ``model`` is a vision model of a supported backbone family or a
    :class:`paka_hf.backbones.PatchBackbone` (its ``.model`` is saved). The weights go to safetensors
    only; a stale ``pytorch_model.bin`` left in the folder by an earlier run is removed so the folder never
    offers a pickle. The saved config has ``drop_path_rate = 0.0`` (stochastic depth is a training setting
    of the student, not part of the published model); the in-memory model is left unchanged.
    ``image_processor`` defaults to the backbone's own (a :class:`~paka_hf.backbones.PatchBackbone` carries its
    checkpoint's), else the family's reference one. Returns the folder.
    """
    backbone = getattr(model, "model", model)  # PatchBackbone -> the transformers model inside
    config = getattr(backbone, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TypeError(
            f"save_backbone expects a vision model of a supported family ({', '.join(SUPPORTED_MODEL_TYPES)}) "
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
    for pickle_name in ("pytorch_model.bin", "pytorch_model.bin.index.json"):
        (out / pickle_name).unlink(missing_ok=True)
    if not (out / "model.safetensors").is_file():
        raise RuntimeError(
            f"save_pretrained did not write {out / 'model.safetensors'} (sharded or non-safetensors output?); "
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


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, with every symlink followed, lies inside ``folder`` (also resolved)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
