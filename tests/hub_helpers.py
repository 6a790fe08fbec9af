"""Builders shared by the hub tests: a tiny export folder and evaluation-results JSON like the real ones."""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

SECRET = "hf_do_not_leak_0123456789abcdef"
TOKEN = "hf_standin_write_token"  # the write token the stand-in Hub accepts (tests/hub_server.py)

TRAINING_CONFIG = f"""\
model_name_or_path: facebook/dinov2-with-registers-small
dataset_name: detection-datasets/coco
max_steps: 12
per_device_train_batch_size: 4
learning_rate: 1.0e-05
global_size: 224
local_size: 98
n_local: 4
min_intersection: 0.9
loss: cka
kernel: linear
teacher_momentum: 0.9995
export: true
push_to_hub: true
hub_model_id: paka-org/dinov2-paka-tiny
hub_token: {SECRET}
"""

TRAINING_SUMMARY = {
    "train_runtime_s": 5400.0,
    "images_seen": 768,
    "images_skipped": 2,
    "device": "cpu",
    "num_processes": 1,
}


def eval_file(model: str, linear: float, retrieval: float) -> dict:
    """An evaluation-results dict in the schema written by scripts/evaluate.py."""
    common = dict(
        task_type="semantic-segmentation",
        dataset_name="CamVid",
        dataset_type="camvid",
        dataset_config=None,
        split="val",
        metric_type="mean_iou",
        std=None,
        seeds=None,
    )
    return {
        "paka_hf_version": "0.1.0",
        "date": "2026-11-26T12:00:00+00:00",
        "model": model,
        "results": [
            dict(
                common,
                protocol="linear",
                metric_name="mIoU (linear)",
                value=linear,
                settings={"input_size": 448, "epochs": 25},
                per_class_iou={"Sky": 90.0},
                pixel_accuracy=80.0,
            ),
            dict(
                common,
                protocol="hummingbird",
                metric_name="mIoU (hummingbird, 1-NN)",
                value=retrieval,
                settings={"k": 30, "memory_size": 10240},
                per_class_iou={"Sky": 88.0},
                pixel_accuracy=75.0,
            ),
        ],
    }


def make_export_folder(path: Path, config, *, seed: int = 0, summary: bool = True) -> torch.nn.Module:
    """Write a complete output folder (export files, training config, summary) from a tiny random model."""
    from transformers import AutoModel

    from paka_hf.hub import save_backbone

    torch.manual_seed(seed)
    model = AutoModel.from_config(config).eval()
    save_backbone(model, path)
    (path / "training_config.yaml").write_text(TRAINING_CONFIG)
    if summary:
        (path / "training_summary.json").write_text(json.dumps(TRAINING_SUMMARY))
    return model


def go_online(monkeypatch, url: str | None = None, home: Path | None = None) -> None:
    """Let huggingface_hub talk HTTP in this test and, with ``url``, point every Hub call at it.

    tests/conftest.py sets ``HF_HUB_OFFLINE=1`` for the suite. ``HF_ENDPOINT`` is read by paka_hf.hub at
    call time; the import-time constants are patched for code that uses them directly (the download path
    of ``transformers`` and ``ModelCard.load``). ``transformers`` also keeps one ``HfApi`` for the whole
    process (``transformers.utils.hub.hf_api()``, used by ``from_pretrained`` to resolve ``main`` to a commit
    first), and an ``HfApi`` fixes its endpoint when it is built: it is reset here, or ``from_pretrained``
    would ask the stand-in of whichever test built it first.

    Everything huggingface_hub writes or reads under ``HF_HOME`` (download cache, stored tokens, Xet cache,
    assets) goes to ``home`` (a fresh temporary folder when not given), never to ``~/.cache/huggingface``;
    those paths are import-time constants too, so setting the environment alone would not do.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if url is not None:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        # huggingface_hub's module-level HfApi (behind file_exists, list_repo_files ...: peft's loading uses them)
        from huggingface_hub import hf_api

        monkeypatch.setattr(hf_api.api, "endpoint", url)
    try:
        import transformers.utils.hub as transformers_hub
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    else:
        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # rebuilt on first use, with the endpoint above

    if home is None:
        home = Path(tempfile.mkdtemp(prefix="paka-hf-home-"))
        weakref.finalize(monkeypatch, shutil.rmtree, home, ignore_errors=True)
    home = Path(home)
    monkeypatch.setenv("HF_HOME", str(home))
    paths = {
        "HF_HOME": home,
        "HF_HUB_CACHE": home / "hub",
        "HF_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
        "HF_STORED_TOKENS_PATH": home / "stored_tokens",
    }
    for name, path in paths.items():
        monkeypatch.setattr(constants, name, str(path))
