"""scripts/evaluate.py (paka_hf.commands.evaluate) end to end on a tiny random-init model: the protocols it runs,
the results JSON it writes and the data problems it reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from evaluation_helpers import write_segmentation_folder
from PIL import Image

from paka_hf.commands import evaluate as evaluate_command
from paka_hf.evaluation.results import RESULT_KEYS


def test_script_end_to_end_on_tiny_model(tmp_path, tiny_config):
    from transformers import Dinov2Model

    model_dir = tmp_path / "tiny-model"
    Dinov2Model(tiny_config()).save_pretrained(model_dir)
    data_dir = tmp_path / "data"
    write_segmentation_folder(data_dir, seed=0)
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
    write_segmentation_folder(data_dir, seed=1)
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
    write_segmentation_folder(data_dir, seed=2)
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
    write_segmentation_folder(data_dir, seed=3)
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
    write_segmentation_folder(data_dir, seed=2)
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


# --- the correspondence and depth protocols, and several models ------------------------------------------------

IDENTITY_WARP = ["--crop_fraction", "1,1", "--flip_p", "0", "--max_rotation", "0", "--perspective", "0"]
IDENTITY_WARP += ["--brightness", "0", "--contrast", "0", "--saturation", "0", "--hue", "0"]
QUICK = ["--no_progress", "--device", "cpu", "--batch_size", "4", "--warp_input_size", "56,84"]
QUICK += ["--spair_input_size", "28", "--depth_input_size", "28,42", "--depth_epochs", "2", "--num_bins", "8"]
QUICK += ["--depth_crop", "none", "--depth_batch_size", "2"]


def test_script_runs_warp_spair_and_depth_and_writes_their_results(tmp_path, capsys):
    from evaluation_helpers import write_depth_folder, write_spair_archive

    from paka_hf.apps.demo import save_random_model
    from paka_hf.evaluation import EvaluationReport
    from paka_hf.hub.results import load_eval_results
    from paka_hf.testing import tiny_dinov2_config, write_random_images

    model = save_random_model(tmp_path / "model", tiny_dinov2_config())
    images = write_random_images(tmp_path / "photos", 3, side_range=(40, 80), seed=1)
    write_spair_archive(tmp_path / "spair")
    rooms = write_depth_folder(tmp_path / "rooms")
    out = tmp_path / "r.json"
    argv = ["--model_name_or_path", str(model), "--protocol", "warp,spair,depth", "--warp_images", str(images)]
    argv += ["--spair_dir", str(tmp_path / "spair"), "--depth_dir", str(rooms), "--output_file", str(out)]
    result = evaluate_command.main([*argv, *QUICK, *IDENTITY_WARP, "--warp_thresholds", "1,2"])
    saved = json.loads(out.read_text())
    assert saved == result and saved["model"] == str(model)
    names = [entry["metric_name"] for entry in saved["results"]]
    assert names == [
        "PCK@1 patch (warp)",
        "PCK@2 patches (warp)",
        "PCK@0.1 bbox (spair)",
        "RMSE (depth)",
        "δ1 (depth)",
        "AbsRel (depth)",
    ]
    warp1, warp2, spair, rmse, delta1, abs_rel = saved["results"]
    # an identity warp: every patch's nearest neighbour is itself, whatever the features
    assert warp1["value"] == warp2["value"] == 100.0 and warp1["settings"]["num_images"] == 3
    assert warp1["settings"]["crop_fraction"] == [1.0, 1.0] and warp1["settings"]["input_size"] == [56, 84]
    assert 0.0 <= spair["value"] <= 100.0 and spair["settings"]["num_pairs"] == 4
    assert spair["settings"]["spair_dir"] == str(tmp_path / "spair")
    assert rmse["value"] > 0 and 0.0 <= delta1["value"] <= 100.0 and abs_rel["value"] > 0
    assert rmse["settings"]["epochs"] == 2 and rmse["settings"]["num_bins"] == 8 and rmse["settings"]["crop"] == "none"
    assert [e["metric_type"] for e in saved["results"]] == ["pck", "pck", "pck", "rmse", "delta1", "abs_rel"]
    assert EvaluationReport.load(out).to_dict() == saved
    assert len(load_eval_results([out])[0]["results"]) == 6
    printed = capsys.readouterr().out
    assert (
        "photos all PCK@1 patch (warp): 100.00" in printed
        and f"rooms test RMSE (depth): {rmse['value']:.3f}" in printed
    )
    assert '"warp"' in printed and '"spair"' in printed and '"depth"' in printed  # the wall seconds of each


def test_script_reads_nyuv2s_labelled_mat(tmp_path):
    pytest.importorskip("h5py")
    from evaluation_helpers import write_nyu_mat

    from paka_hf.apps.demo import save_random_model
    from paka_hf.testing import tiny_dinov2_config

    model = save_random_model(tmp_path / "model", tiny_dinov2_config())
    mat, splits = write_nyu_mat(tmp_path)
    out = tmp_path / "r.json"
    argv = ["--model_name_or_path", str(model), "--protocol", "depth", "--depth_dir", str(mat)]
    evaluate_command.main([*argv, "--depth_splits_file", str(splits), "--output_file", str(out), *QUICK])
    rmse = json.loads(out.read_text())["results"][0]
    assert (rmse["dataset_name"], rmse["dataset_type"], rmse["split"]) == ("NYUv2", "nyuv2", "test")
    settings = rmse["settings"]
    assert settings["depth_key"] == "rawDepths" and settings["depth_splits_file"] == str(splits)
    assert (settings["train_images"], settings["test_images"], settings["train_split"]) == (3, 2, "train")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--protocol", "spair"], "error: the spair protocol needs SPair-71k: pass --spair_dir DIR"),
        (["--protocol", "depth"], "error: the depth protocol needs images with depth: pass --depth_dir"),
        (["--protocol", "warp"], "error: the warp protocol needs images: pass --warp_images DIR"),
        (["--protocol", "all"], "error: protocol linear, overcluster, hummingbird needs a labelled"),
        (["--protocol", "spair", "--spair_dir", "no_such_dir"], "error: "),
        (["--protocol", "depth", "--depth_dir", "nyu.mat"], "error: "),
    ],
)
def test_a_protocol_without_its_data_exits_2_with_one_line(tmp_path, capsys, monkeypatch, argv, message):
    from paka_hf.commands.cli import USER_ERROR_STATUS, run_script

    monkeypatch.chdir(tmp_path)
    status = run_script(evaluate_command.main, ["--model_name_or_path", "facebook/dinov2-small", *argv])
    assert status == USER_ERROR_STATUS == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    flag = argv[argv.index("--protocol") + 2] if len(argv) > 2 else None
    if flag:  # a path that does not exist is named with its flag
        assert flag in lines[0] and argv[-1] in lines[0]
    assert not list(tmp_path.iterdir())  # nothing written


def test_two_models_write_a_file_each_and_the_comparison(tmp_path, monkeypatch, capsys):
    from evaluation_helpers import write_depth_folder

    from paka_hf.apps.demo import save_random_model
    from paka_hf.evaluation import EvaluationReport
    from paka_hf.testing import tiny_dinov2_config, write_random_images

    monkeypatch.chdir(tmp_path)
    for seed, name in enumerate(("base", "paka")):
        save_random_model(tmp_path / "models" / name, tiny_dinov2_config(), seed=seed)
    write_random_images(tmp_path / "photos", 3, side_range=(40, 80), seed=1)
    write_depth_folder(tmp_path / "rooms")
    argv = ["--model_name_or_path", "models/base", "models/paka", "--protocol", "warp,depth"]
    argv += ["--warp_images", "photos", "--depth_dir", "rooms", "--output_file", "out/results.json"]
    returned = evaluate_command.main([*argv, *QUICK])
    files = ["out/results.models_base.json", "out/results.models_paka.json"]
    assert returned["files"] == files and returned["comparison_file"] == "out/results.comparison.md"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "results.comparison.md",
        "results.models_base.json",
        "results.models_paka.json",
    ]
    base, paka = (EvaluationReport.load(tmp_path / f) for f in files)
    assert (base.model, paka.model) == ("models/base", "models/paka")
    assert [r.to_dict() for r in base.results] != [r.to_dict() for r in paka.results]  # two different models
    table = returned["comparison"]
    assert table in (tmp_path / "out/results.comparison.md").read_text() and table in capsys.readouterr().out
    header, _, *body = table.splitlines()
    assert header.endswith("| models/base | models/paka | models/paka − models/base |")
    rows = {[c.strip() for c in line.strip("|").split("|")][3]: line for line in body}
    assert list(rows) == [r.metric_name for r in base.results]
    words = {}
    for first, other in zip(base.results, paka.results):
        cells = [c.strip() for c in rows[first.metric_name].strip("|").split("|")]
        lower_is_better = first.metric_type in ("rmse", "abs_rel")
        decimals = 3 if lower_is_better else 2
        difference = round(other.value, 4) - round(first.value, 4)
        assert cells[4:6] == [f"{first.value:.{decimals}f}", f"{other.value:.{decimals}f}"]
        if abs(difference) < 0.5 * 10**-decimals:
            assert cells[6] == f"±{0:.{decimals}f} same"
        else:
            word = "better" if (difference < 0) == lower_is_better else "worse"
            assert cells[6] == f"{difference:+.{decimals}f} {word}"
        words[first.metric_type] = cells[6]
    assert {"pck", "rmse", "delta1", "abs_rel"} <= set(words)  # the RMSE row, where lower is better, included


def test_per_model_file_names_never_collide():
    files, comparison = evaluate_command.per_model_files("out/r.json", ["a/b", "a_b", "./c/", "facebook/dinov2-small"])
    assert files == ["out/r.a_b-1.json", "out/r.a_b-2.json", "out/r.c.json", "out/r.facebook_dinov2-small.json"]
    assert comparison == "out/r.comparison.md"
    files, comparison = evaluate_command.per_model_files("results", ["m", "m"])
    assert files == ["results.m-1.json", "results.m-2.json"] and comparison == "results.comparison.md"
    assert evaluate_command.model_slug("../..") == "model" and evaluate_command.model_slug("x" * 300) == "x" * 100


def test_protocol_all_means_the_segmentation_protocols():
    args, _ = evaluate_command.parse_args(["--model_name_or_path", "m", "--protocol", "all,warp"])
    assert evaluate_command._protocols(args.protocol) == ["linear", "overcluster", "hummingbird", "warp"]
    assert args.model_name_or_path == ["m"] and args.dataset_name is None
    help_text = " ".join(evaluate_command.build_parser().format_help().split())
    assert "'all' is the segmentation protocols linear,overcluster,hummingbird" in help_text
    _, settings = evaluate_command.parse_args(
        ["--model_name_or_path", "m", "--seed", "3", "--batch_size", "5", "--warp_thresholds", "0.5,1"]
        + [
            "--spair_categories",
            "cat,dog",
            "--depth_epochs",
            "4",
            "--depth_betas",
            "0.8,0.9",
            "--feature_cache_dir",
            "c",
        ]
    )
    assert (settings.warp.seed, settings.depth.seed, settings.warp.batch_size, settings.spair.batch_size) == (
        3,
        3,
        5,
        5,
    )
    assert settings.warp.thresholds == (0.5, 1.0) and settings.spair.categories == ("cat", "dog")
    assert settings.depth.epochs == 4 and settings.depth.betas == (0.8, 0.9) and settings.feature_cache_dir == "c"
    assert settings.depth.device is None  # the run's --device, filled in by run_evaluation
