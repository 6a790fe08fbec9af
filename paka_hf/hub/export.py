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

#: A Hub repository id, ``namespace/name``.
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_SUPPORTED_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


def default_image_processor(crop_size: int = 224):
    """The DINOv2 preprocessing of the ``facebook/dinov2-*`` checkpoints as a ``BitImageProcessor``.

    Resize the shortest edge to ``crop_size * 8 / 7`` (256 for 224), center-crop ``crop_size``, scale to
    [0, 1], normalize with ImageNet mean and std.
    """
    from transformers import BitImageProcessor

    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": round(crop_size * 8 / 7)},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": crop_size, "width": crop_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )


def save_backbone(model: Any, output_dir: str | os.PathLike, image_processor: Any = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` to ``output_dir``.

    ``model`` is a ``Dinov2Model`` / ``Dinov2WithRegistersModel`` or a
    :class:`paka_hf.backbones.PatchBackbone` (its ``.model`` is saved). The weights go to safetensors
    only; a stale ``pytorch_model.bin`` left in the folder by an earlier run is removed so the folder never
    offers a pickle. The saved config has ``drop_path_rate = 0.0`` (stochastic depth is a training setting
    of the student, not part of the published model); the in-memory model is left unchanged.
    ``image_processor`` defaults to :func:`default_image_processor`. Returns the folder.
    """
    backbone = getattr(model, "model", model)  # PatchBackbone -> the transformers model inside
    config = getattr(backbone, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise TypeError(
            f"save_backbone expects a Dinov2Model / Dinov2WithRegistersModel (or a PatchBackbone around one), "
            f"got {type(model).__name__} with model_type={model_type!r}. Pass the student backbone, not the "
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
    (image_processor if image_processor is not None else default_image_processor()).save_pretrained(out)
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
