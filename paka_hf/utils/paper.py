"""The paper this package implements, written once: title, arXiv id and URL, BibTeX, and the Hub tags of its models.

Yeo, Jang, Kim, "PaKA: Patch-level Kernel Alignment", arXiv 2509.05606. The model card
(:mod:`paka_hf.hub.card`) and the trainer's Hub metadata (:class:`paka_hf.training.trainer.PaKATrainer`) read them here.
"""

from __future__ import annotations

PAPER_TITLE = "PaKA: Patch-level Kernel Alignment"
PAPER_ID = "2509.05606"
PAPER_URL = f"https://arxiv.org/abs/{PAPER_ID}"
# Title, authors and arXiv id as given on the arXiv listing (surnames only).
CITATION = f"""@misc{{yeo2025paka,
  title         = {{{PAPER_TITLE}}},
  author        = {{Yeo and Jang and Kim}},
  year          = {{2025}},
  eprint        = {{{PAPER_ID}}},
  archivePrefix = {{arXiv}},
  url           = {{{PAPER_URL}}}
}}"""
#: Tags of every PaKA model on the Hub; the backbone family adds its own (``dinov2``, ``dinov3``, ``siglip``, ``clip``).
TAGS = ("paka", "vision", "self-supervised-learning", "dense-features", f"arxiv:{PAPER_ID}")
