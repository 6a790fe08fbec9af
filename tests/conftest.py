"""Shared fixtures: tiny random-init DINOv2 backbones and the ../shared assets (skipped when absent)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# Hermetic: every Hugging Face cache (hub, datasets, evaluate modules) lives in a folder of this test
# session, removed at exit; set before any test module imports those libraries (they read it at import).
_HF_HOME = tempfile.mkdtemp(prefix="paka_tests_hf_home_")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
for _variable in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_EVALUATE_CACHE", "HF_MODULES_CACHE", "TRANSFORMERS_CACHE"):
    os.environ.pop(_variable, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SMALL_MODEL = SHARED / "models" / "dinov2-small-imgfocus"
CAMVID = SHARED / "datasets" / "camvid"


def tiny_dinov2_config(registers: int = 0, patch_size: int = 14, hidden_size: int = 32, layers: int = 2):
    """A DINOv2 (or DINOv2-with-registers) config small enough for millisecond forwards on CPU."""
    common = dict(
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=patch_size * 4,
    )
    if registers:
        from transformers import Dinov2WithRegistersConfig

        return Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
    from transformers import Dinov2Config

    return Dinov2Config(**common)


@pytest.fixture
def tiny_config():
    return tiny_dinov2_config


@pytest.fixture(scope="session")
def small_model_path() -> Path:
    if not (SMALL_MODEL / "model.safetensors").exists():
        pytest.skip(f"pretrained ViT-S/14 asset not found at {SMALL_MODEL}")
    return SMALL_MODEL


@pytest.fixture(scope="session")
def camvid_path() -> Path:
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid asset not found at {CAMVID}")
    return CAMVID


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
