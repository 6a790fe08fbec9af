"""paka_hf: PaKA (Patch-level Kernel Alignment, arXiv 2509.05606) post-training for DINOv2 on the Hugging Face stack."""

__version__ = "0.1.0"

from .config import PaKAConfig  # noqa: E402
from .trainer import PaKATrainer  # noqa: E402

__all__ = ["PaKAConfig", "PaKATrainer", "__version__"]
