"""Fixtures and hooks of the suite: a hermetic Hugging Face cache, the ``slow`` marker, the ../shared assets
(skipped when absent). The helpers the tests share with the benchmarks live in :mod:`paka_hf.testing`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
SMALL_MODEL = SHARED / "models" / "dinov2-small-imgfocus"
CAMVID = SHARED / "datasets" / "camvid"
_HF_CACHE_VARIABLES = (
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_EVALUATE_CACHE",
    "HF_MODULES_CACHE",
    "TRANSFORMERS_CACHE",
)


def pytest_configure(config):
    """Register the ``slow`` marker, and make every Hugging Face cache (hub, datasets, evaluate modules) a folder
    of this session, offline. This runs before any test module is collected, so before any test imports those
    libraries (they read the variables at import)."""
    config.addinivalue_line(
        "markers",
        "slow: a subprocess, several processes, a browser or a long end-to-end run; `make test-fast` deselects them",
    )
    config._paka_hf_home = tempfile.mkdtemp(prefix="paka_tests_hf_home_")
    os.environ["HF_HOME"] = config._paka_hf_home
    for variable in _HF_CACHE_VARIABLES:
        os.environ.pop(variable, None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_unconfigure(config):
    home = getattr(config, "_paka_hf_home", None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def tiny_config():
    """:func:`paka_hf.testing.tiny_dinov2_config`, for tests that take their helpers as fixtures."""
    from paka_hf.testing import tiny_dinov2_config

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
