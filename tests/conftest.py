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

from transformers import TrainerCallback  # noqa: E402  (after HF_HOME is set, as the libraries read it at import)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SMALL_MODEL = SHARED / "models" / "dinov2-small-imgfocus"
CAMVID = SHARED / "datasets" / "camvid"


#: Command-line flags of a 2-step training run of a tiny model on CPU (scripts' tests add model, data, output).
TINY_RUN = (
    "--max_steps 2 --save_steps 1 --per_device_train_batch_size 2 --global_size 56 --local_size 28 --n_local 2 "
    "--head_hidden_dim 32 --head_out_dim 16 --dataloader_num_workers 0 --shuffle_buffer_size 4 --use_cpu true "
    "--report_to none --disable_tqdm true --logging_steps 1"
).split()


def tiny_run_config(output_dir, model_dir, images, **overrides):
    """A ``PaKAConfig`` for a few CPU steps of a tiny model on a folder of images; ``overrides`` replace fields."""
    from paka_hf import PaKAConfig

    values = dict(
        output_dir=str(output_dir),
        model_name_or_path=str(model_dir),
        dataset_name=str(images),
        max_steps=6,
        per_device_train_batch_size=2,
        global_size=56,
        local_size=28,
        n_local=2,
        head_hidden_dim=32,
        head_out_dim=16,
        learning_rate=1e-3,
        head_learning_rate=1e-2,
        teacher_momentum=0.9,
        drop_path_rate=0.1,
        dataloader_num_workers=0,
        shuffle_buffer_size=8,
        logging_steps=2,
        save_steps=3,
        save_total_limit=3,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return PaKAConfig(**values)


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


class StopAt(TrainerCallback):
    """Stops training after optimizer step ``step``: an interrupted run, to resume."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def write_tiny_run_assets(root: Path, image_hw: tuple[int, int], count: int = 8, registers: int = 2) -> None:
    """``root/model``: a tiny random-init DINOv2(-with-registers) (seed 0); ``root/images``: ``count`` random
    ``image_hw`` JPEGs (seed 0). What a short training run needs."""
    import numpy as np
    from PIL import Image
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(tiny_dinov2_config(registers=registers)).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*image_hw, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")


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
