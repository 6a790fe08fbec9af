"""paka_hf: PaKA (Patch-level Kernel Alignment, arXiv 2509.05606) post-training of vision transformers' dense patch
features on the Hugging Face stack.

The package is layered, top to bottom: ``commands``, ``apps``, ``training``, ``hub``, ``evaluation``,
``modeling``, ``losses`` and ``views`` (siblings), ``utils``; a module imports only from its own layer or the
layers below it (``make quality`` checks the rule). ``paka_hf.testing`` is the test kit, above every layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public classes are imported on first access (PEP 562), so that ``import paka_hf`` and the layers below
# ``training`` (``paka_hf.modeling``, ``paka_hf.losses``, ``paka_hf.views``, ``paka_hf.utils``) import without
# pulling in ``transformers.Trainer``, the data stream or the Hub code: for example on a benchmark machine that
# has no ``datasets``.
_LAZY = {
    "PaKAConfig": "paka_hf.training.config",
    "PaKATrainer": "paka_hf.training.trainer",
    "PatchBackbone": "paka_hf.modeling.backbones",
}

if TYPE_CHECKING:  # pragma: no cover
    from paka_hf.modeling.backbones import PatchBackbone
    from paka_hf.training.config import PaKAConfig
    from paka_hf.training.trainer import PaKATrainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# The public classes: the configuration, the trainer, and the backbone wrapper that gives any supported ViT's
# patch grid (what the trainer and the evaluation run on). The evaluation API is ``paka_hf.evaluation``, the
# Hub API ``paka_hf.hub``, the command-line programs ``paka_hf.commands``.
__all__ = ["PaKAConfig", "PaKATrainer", "PatchBackbone", "__version__"]
