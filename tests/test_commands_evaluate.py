"""scripts/evaluate.py (paka_hf.commands.evaluate) end to end on a tiny random-init model: the protocols it runs,
the results JSON it writes and the data problems it reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paka_hf.commands import evaluate as evaluate_command
from paka_hf.evaluation.results import RESULT_KEYS


def _tiny_dataset(root: Path, rng: np.random.Generator):
    for split, n in (("train", 4), ("val", 3)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((40, 50), np.uint8)
            mask[:, 20:] = 1
            mask[25:, :] = 2
            mask[:3, :3] = 255
            image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
            image[mask == 1] //= 4  # the classes look different
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")


def test_script_end_to_end_on_tiny_model(tmp_path, tiny_config):
    from transformers import Dinov2Model

    model_dir = tmp_path / "tiny-model"
    Dinov2Model(tiny_config()).save_pretrained(model_dir)
    data_dir = tmp_path / "data"
    _tiny_dataset(data_dir, np.random.default_rng(0))
    out = tmp_path / "results.json"
    script = evaluate_command
    result = script.main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--dataset_name",
            "folder",
            "--data_dir",
            str(data_dir),
            "--class_names",
            "sky,road,car",
            "--ignore_index",
            "255",
            "--protocol",
            "all",
            "--input_size",
            "28,42",
            "--epochs",
            "2",
            "--num_clusters",
            "3,5",
            "--seeds",
            "0,1",
            "--batch_size",
            "2",
            "--output_file",
            str(out),
            "--no_progress",
            "--device",
            "cpu",
        ]
    )
    saved = json.loads(out.read_text())
    assert saved == result
    assert saved["model"] == str(model_dir)
    names = [r["metric_name"] for r in saved["results"]]
    assert names == ["mIoU (linear)", "mIoU (overclustering, K=3)", "mIoU (overclustering, K=5)", "mIoU (hummingbird)"]
    for entry in saved["results"]:
        assert tuple(entry) == RESULT_KEYS
        assert 0.0 <= entry["value"] <= 100.0 and math.isfinite(entry["value"])
        assert entry["dataset_name"] == "data" and entry["split"] == "val"
        assert set(entry["per_class_iou"]) == {"sky", "road", "car"}
        assert entry["settings"]["input_size"] == [28, 42]
    linear, k3, _, hbird = saved["results"]
    assert linear["settings"]["train_images"] == 4 and linear["settings"]["val_images"] == 3
    assert k3["seeds"] == [0, 1] and k3["std"] is not None and k3["settings"]["matching"] == "hungarian"
    assert hbird["settings"]["memory_bank_size"] == 4 * 2 * 2 * 3  # 4 images x 2 passes x (2 x 3) patches
    assert linear["std"] is None and linear["seeds"] is None


def test_script_published_conventions_changes_hummingbird_std(tmp_path, tiny_config):
    from transformers import Dinov2Model

    model_dir = tmp_path / "tiny-model"
    Dinov2Model(tiny_config()).save_pretrained(model_dir)
    data_dir = tmp_path / "data"
    _tiny_dataset(data_dir, np.random.default_rng(1))
    out = tmp_path / "r.json"
    evaluate_command.main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--dataset_name",
            "folder",
            "--data_dir",
            str(data_dir),
            "--class_names",
            "sky,road,car",
            "--protocol",
            "hummingbird",
            "--input_size",
            "28",
            "--published_conventions",
            "--output_file",
            str(out),
            "--no_progress",
            "--device",
            "cpu",
        ]
    )
    (entry,) = json.loads(out.read_text())["results"]
    assert entry["settings"]["normalize_std"] == [0.229, 0.224, 0.255]
    assert entry["settings"]["published_conventions"] is True


def test_script_reports_broken_data(tmp_path, tiny_config):
    from transformers import Dinov2Model

    from paka_hf.evaluation import DatasetError

    model_dir = tmp_path / "tiny-model"
    Dinov2Model(tiny_config()).save_pretrained(model_dir)
    data_dir = tmp_path / "data"
    _tiny_dataset(data_dir, np.random.default_rng(2))
    Image.fromarray(np.full((40, 50), 9, np.uint8)).save(data_dir / "val" / "masks" / "0.png")
    args = [
        "--model_name_or_path",
        str(model_dir),
        "--dataset_name",
        "folder",
        "--data_dir",
        str(data_dir),
        "--class_names",
        "sky,road,car",
        "--protocol",
        "overcluster",
        "--num_clusters",
        "3",
        "--seeds",
        "0",
        "--input_size",
        "28",
        "--output_file",
        str(tmp_path / "r.json"),
        "--no_progress",
        "--device",
        "cpu",
    ]
    with pytest.raises(DatasetError, match=r"label values \[9\]"):
        evaluate_command.main(args)
    evaluate_command.main(args + ["--on_unknown_label", "ignore"])
    (entry,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert entry["settings"]["data_issues"]["val"]["unknown_label_9_pixels"] == 2000  # one image, counted once


def test_overclustering_needs_no_train_split(tmp_path, tiny_config):
    from transformers import Dinov2Model

    model_dir = tmp_path / "tiny-model"
    Dinov2Model(tiny_config()).save_pretrained(model_dir)
    data_dir = tmp_path / "data"
    _tiny_dataset(data_dir, np.random.default_rng(3))
    import shutil

    shutil.rmtree(data_dir / "train")
    out = tmp_path / "r.json"
    evaluate_command.main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--dataset_name",
            "folder",
            "--data_dir",
            str(data_dir),
            "--class_names",
            "sky,road,car",
            "--protocol",
            "overcluster",
            "--num_clusters",
            "3",
            "--seeds",
            "0",
            "--input_size",
            "28",
            "--output_file",
            str(out),
            "--no_progress",
            "--device",
            "cpu",
        ]
    )
    (entry,) = json.loads(out.read_text())["results"]
    assert entry["settings"]["train_split"] is None and entry["settings"]["train_images"] == 0


@pytest.mark.parametrize("backend", ["torch", "faiss_ivf"])
def test_script_records_the_memory_bank_and_the_knn_search(tmp_path, tiny_config, backend):
    """--memory_size, --memory_sampling and --knn_backend (with the IVF settings) reach the results JSON, with the
    backend that ran and, for the approximate index, its recall@k against exact search."""
    from transformers import Dinov2Model

    from paka_hf.evaluation import EvaluationReport

    if backend.startswith("faiss"):
        pytest.importorskip("faiss", reason="faiss is not installed (pip install 'paka_hf[faiss]')")
    model_dir = tmp_path / "tiny-model"
    Dinov2Model(tiny_config()).save_pretrained(model_dir)
    data_dir = tmp_path / "data"
    _tiny_dataset(data_dir, np.random.default_rng(2))
    out = tmp_path / "r.json"
    argv = ["--model_name_or_path", str(model_dir), "--dataset_name", "folder", "--data_dir", str(data_dir)]
    argv += ["--class_names", "sky,road,car", "--protocol", "hummingbird", "--input_size", "56,84"]
    argv += ["--memory_size", "160", "--memory_sampling", "uniform", "--knn_backend", backend]
    argv += ["--ivf_nlist", "4", "--ivf_nprobe", "2", "--recall_sample", "50", "--num_neighbors", "5"]
    evaluate_command.main([*argv, "--output_file", str(out), "--no_progress", "--device", "cpu"])
    (entry,) = EvaluationReport.load(out).results
    settings = entry.settings
    assert settings["memory_size"] == 160 and settings["memory_sampling"] == "uniform"
    assert settings["memory_bank_size"] == 4 * 2 * (160 // 8)  # 4 images x 2 passes maps, 160 // 8 patches each
    assert settings["backend"] == backend and settings["knn_backend_used"] == backend
    if backend == "torch":
        assert settings["knn_exact"] is True and settings["knn_recall_at_k"] is None
    else:
        assert settings["knn_exact"] is False
        assert (settings["ivf_nlist_used"], settings["ivf_nprobe_used"]) == (4, 2)
        assert 0.0 < settings["knn_recall_at_k"] <= 1.0 and settings["knn_recall_queries"] == 50


def test_script_refuses_a_bad_ivf_setting(tmp_path):
    from paka_hf.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="ivf_nprobe"):
        evaluate_command.parse_args(["--model_name_or_path", "m", "--dataset_name", "voc", "--ivf_nprobe", "0"])
