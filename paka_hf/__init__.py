"""paka_hf: PaKA (Patch-level Kernel Alignment, arXiv 2509.05606) post-training for DINOv2 on the Hugging Face stack."""

__version__ = "0.1.0"
