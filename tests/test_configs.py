"""The shipped configs run without warnings a user must act on, and the final loss is logged."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paka_hf.testing import tiny_dinov2_config
from paka_hf.training.data import PaKAViewStream, load_image_source
from paka_hf.views.glim import GlimTransform

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_images(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg")
    return sorted(folder.iterdir())


def stream_warnings(source, caplog, rank=0):
    """Warnings of process ``rank`` of two (one data stream each) while it reads four samples."""
    stream = PaKAViewStream(source, GlimTransform(28, 14, n_local=2, patch_size=14), rank=rank, world_size=2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="paka_hf.training.data"):
        for count, _ in enumerate(stream, 1):
            if count == 4:
                break
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_local_image_folder_split_between_streams_warns_nothing(tmp_path, caplog):
    """A folder of images is one shard: every stream reads the file names of all rows, which costs
    nothing, so the shard-count warning (meant for rows that carry image bytes) must stay silent, as on every
    multi-worker run of ``make demo``."""
    write_images(tmp_path / "imgs", 8)
    assert stream_warnings(load_image_source(str(tmp_path / "imgs")), caplog) == []


def test_a_single_shard_of_image_bytes_split_between_streams_warns_once_from_the_first_stream(tmp_path, caplog):
    import datasets

    paths = write_images(tmp_path / "imgs", 8)
    rows = [{"bytes": p.read_bytes(), "path": None} for p in paths]
    datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()})).to_parquet(
        str(tmp_path / "one.parquet")
    )  # one shard whose rows hold the image bytes
    source = load_image_source(str(tmp_path / "one.parquet"))
    messages = stream_warnings(source, caplog)
    assert len(messages) == 1 and "1 shards, not a multiple of 2 streams" in messages[0]
    assert stream_warnings(source, caplog, rank=1) == []  # said once per run, not once per stream


def test_the_final_loss_is_logged_when_logging_steps_exceeds_max_steps(tmp_path):
    from transformers import AutoModel

    from paka_hf import PaKAConfig, PaKATrainer

    torch.manual_seed(0)
    AutoModel.from_config(tiny_dinov2_config()).save_pretrained(tmp_path / "model")
    write_images(tmp_path / "imgs", 4)
    args = PaKAConfig(
        output_dir=str(tmp_path / "out"),
        model_name_or_path=str(tmp_path / "model"),
        dataset_name=str(tmp_path / "imgs"),
        max_steps=3,
        logging_steps=10,
        save_strategy="no",
        per_device_train_batch_size=2,
        global_size=28,
        local_size=14,
        n_local=2,
        head_hidden_dim=16,
        head_out_dim=8,
        dataloader_num_workers=0,
        shuffle_buffer_size=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = PaKATrainer(args=args)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [3]
    assert np.isfinite(logged[0]["loss"]) and "cka" in logged[0]


@pytest.mark.slow
def test_the_demo_config_trains_without_a_warning(tmp_path):
    """``make demo``'s training command (one process, two workers) on the demo assets: no warning on stderr,
    and the loss of the last step is logged although ``logging_steps`` (5) exceeds ``max_steps`` here."""
    from paka_hf.apps.demo import make_demo_assets

    assets = make_demo_assets(tmp_path / ".demo", num_images=16)
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "train.py"),
        "--config",
        str(REPO_ROOT / "configs" / "demo.yaml"),
        "--model_name_or_path",
        str(assets["model"]),
        "--dataset_name",
        str(assets["images"]),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    noise = [line for line in result.stderr.splitlines() if "warn" in line.lower()]
    assert noise == [], noise
    assert "'loss'" in result.stdout + result.stderr


# The CPU recipe for your own images is the measured CamVid recipe with the model from the Hub: every setting
# but where the model, the data and the outputs live (and how often checkpoints are kept) is the recipe's.
CPU_RECIPE_OWN_FIELDS = {
    "model_name_or_path",
    "dataset_name",
    "output_dir",
    "shuffle_buffer_size",
    "save_strategy",
    "save_steps",
    "save_total_limit",
}


def _shipped_yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_the_cpu_config_is_the_measured_camvid_recipe():
    cpu = _shipped_yaml(REPO_ROOT / "configs" / "cpu_vits14.yaml")
    recipe = _shipped_yaml(REPO_ROOT / "configs" / "repro" / "paka.yaml")
    shared = set(cpu) - CPU_RECIPE_OWN_FIELDS
    assert shared == set(recipe) - CPU_RECIPE_OWN_FIELDS
    assert {key: cpu[key] for key in shared} == {key: recipe[key] for key in shared}
    demo = _shipped_yaml(REPO_ROOT / "configs" / "demo.yaml")
    # the demo's settings are for a random-init model only: a pretrained one needs a smaller step, a slower teacher
    assert cpu["learning_rate"] < demo["learning_rate"] and cpu["teacher_momentum"] > demo["teacher_momentum"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_parses_into_a_valid_config(name, tmp_path):
    """Each top-level config of ``configs/`` builds a :class:`PaKAConfig` as shipped (on this CPU: bf16 off),
    keeps the values its file sets, and its views fit its family's patch size."""
    from paka_hf.commands import train

    path = REPO_ROOT / "configs" / f"{name}.yaml"
    config = train.parse_config(["--config", str(path), "--output_dir", str(tmp_path), "--bf16", "false"])
    for key, value in _shipped_yaml(path).items():
        if key not in ("output_dir", "bf16", "max_steps") or (key == "max_steps" and value > 0):
            assert getattr(config, key) == value, key
    patch = 16 if any(family in name for family in ("dinov3", "siglip")) else 14
    config.check_patch_size(patch)


def test_the_cpu_config_trains_a_pretrained_shape_without_a_warning(tmp_path, caplog):
    """configs/cpu_vits14.yaml as shipped (224/98 views, batch 8, no head) for two steps on a tiny random-init
    DINOv2 and ten generated images: no warning from paka_hf, finite losses, the exported backbone written."""
    from paka_hf import PaKATrainer
    from paka_hf.apps.demo import save_random_model
    from paka_hf.commands import train

    save_random_model(tmp_path / "model", tiny_dinov2_config())
    write_images(tmp_path / "my_images", 10)
    config = train.parse_config(
        [
            "--config",
            str(REPO_ROOT / "configs" / "cpu_vits14.yaml"),
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--dataset_name",
            str(tmp_path / "my_images"),
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--dataloader_num_workers",
            "0",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
    )
    assert (config.global_size, config.local_size, config.per_device_train_batch_size) == (224, 98, 8)
    caplog.clear()  # writing the tiny model warns that it has no image processor yet
    with caplog.at_level(logging.WARNING, logger="paka_hf"):
        trainer = PaKATrainer(args=config)
        trainer.train()
        trainer.export_backbone(config.output_dir)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (tmp_path / "out" / "model.safetensors").is_file()
