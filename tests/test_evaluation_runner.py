"""run_evaluation and evaluate_models with the correspondence and depth protocols: what they need, the results
they report (the library functions' numbers, with their metric types and settings), data loaded once for several
models, and results files the model card's reader takes."""

from __future__ import annotations

import pytest
import torch
from evaluation_helpers import write_depth_folder, write_segmentation_folder, write_spair_archive

from paka_hf.evaluation import runner
from paka_hf.evaluation.correspondence import CorrespondenceConfig, warp_correspondence
from paka_hf.evaluation.depth import DepthProbeConfig, load_depth_dataset, run_depth_probe
from paka_hf.evaluation.results import EvaluationReport
from paka_hf.evaluation.runner import EvaluationSettings, check_protocols, evaluate_models, run_evaluation
from paka_hf.evaluation.spair import SPairConfig, spair_keypoint_transfer
from paka_hf.modeling.backbones import PatchBackbone
from paka_hf.testing import save_random_model, tiny_dinov2_config, write_random_images
from paka_hf.utils.errors import ConfigError

WARP = CorrespondenceConfig(input_size=(56, 84), thresholds=(1.0, 2.0))
DEPTH = DepthProbeConfig(input_size=(28, 42), epochs=2, num_bins=8, crop="none", batch_size=2)


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return PatchBackbone.from_config(tiny_dinov2_config())


def quiet(**fields) -> EvaluationSettings:
    return EvaluationSettings(progress=False, batch_size=4, **fields)


@pytest.mark.parametrize(
    "protocols, data, message",
    [
        (["spair"], {}, "the spair protocol needs SPair-71k: pass --spair_dir DIR"),
        (["depth"], {}, "the depth protocol needs images with depth: pass --depth_dir"),
        (["depth"], {"depth_dir": "nyu_depth_v2_labeled.mat"}, "needs its official split: pass --depth_splits_file"),
        (["warp"], {}, "the warp protocol needs images: pass --warp_images DIR .* or --dataset_name"),
        (["linear", "hummingbird"], {}, "protocol linear, hummingbird needs a labelled .* --dataset_name"),
        (["warp", "nope"], {}, r"unknown protocol\(s\) \['nope'\]"),
        ([], {}, "unknown protocol"),
    ],
)
def test_a_protocol_without_its_data_is_one_clear_error(protocols, data, message):
    with pytest.raises(ConfigError, match=message) as caught:
        check_protocols(protocols, **data)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=message):  # before any model or dataset is loaded
        run_evaluation("no/such-model", None, protocols, **data)


def test_the_splits_a_run_reads(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(runner, "load_segmentation_dataset", lambda name, split, *a, **k: loaded.append(split))
    runner.load_segmentation_splits(["warp"], "folder", tmp_path, warp_images=tmp_path)
    runner.load_segmentation_splits(["spair", "depth"], "folder", tmp_path)
    assert loaded == []  # no segmentation protocol, and the warp has its own images
    runner.load_segmentation_splits(["warp"], "folder", tmp_path)
    runner.load_segmentation_splits(["overcluster"], "folder", tmp_path)
    assert loaded == ["val", "val"]
    runner.load_segmentation_splits(["hummingbird"], "folder", tmp_path)
    assert loaded[-2:] == ["val", "train"]


def test_warp_reports_one_pck_per_threshold_as_the_library_measures_it(tmp_path, backbone):
    images = write_random_images(tmp_path / "photos", 4, side_range=(30, 60), seed=2)
    timings = {}
    report = run_evaluation(
        "tiny", protocols=["warp"], warp_images=images, backbone=backbone, settings=quiet(warp=WARP), timings=timings
    )
    expected = warp_correspondence(backbone, images, WARP, progress=False)
    assert [r.value for r in report.results] == expected.pck
    assert [r.metric_name for r in report.results] == ["PCK@1 patch (warp)", "PCK@2 patches (warp)"]
    for i, entry in enumerate(report.results):
        assert (entry.protocol, entry.metric_type, entry.task_type) == ("warp", "pck", "keypoint-matching")
        assert entry.higher_is_better and (entry.dataset_name, entry.split) == ("photos", "all")
        settings = entry.settings
        assert settings["threshold_patches"] == WARP.thresholds[i] and settings["threshold_pixels"] == 14 * (i + 1)
        assert settings["images"] == str(images) and settings["num_images_total"] == 4
        # a 2 x 3 grid: some warps leave no patch half a patch inside the view; those images are counted apart
        assert settings["num_images"] + settings["num_images_without_matches"] == 4
        assert settings["num_images"] == expected.num_images > 0
        assert settings["seed"] == 0 and settings["input_size"] == [56, 84] and settings["thresholds"] == [1.0, 2.0]
        assert settings["chance_pck"] == pytest.approx(expected.chance_pck[i], abs=1e-4)
    assert set(timings) == {"warp"}
    # the run's --max_images limits the warp's images unless the warp has its own limit
    limited = run_evaluation(
        "tiny", None, ["warp"], warp_images=images, backbone=backbone, settings=quiet(warp=WARP, max_images=2)
    )
    assert limited.results[0].settings["max_images"] == 2
    assert limited.results[0].settings["num_images"] + limited.results[0].settings["num_images_without_matches"] == 2


def test_warp_without_a_folder_reads_the_evaluation_split(tmp_path, backbone):
    data = write_segmentation_folder(tmp_path / "data")
    report = run_evaluation(
        "tiny",
        "folder",
        ["warp"],
        data_dir=data,
        class_names=["sky", "road", "car"],
        backbone=backbone,
        settings=quiet(warp=WARP),
    )
    entry = report.results[0]
    assert (entry.dataset_name, entry.dataset_type, entry.split) == ("data", "data", "val")
    assert entry.settings["images"] == "data val" and entry.settings["num_images"] == 3
    assert entry.settings["data_dir"] == str(data)


def test_spair_reports_the_mean_over_categories_and_each_category(tmp_path, backbone):
    write_spair_archive(tmp_path, categories=("cat", "dog"))
    config = SPairConfig(input_size=28, alphas=(0.1, 0.2))
    timings = {}
    report = run_evaluation(
        "tiny", None, ["spair"], spair_dir=tmp_path, backbone=backbone, settings=quiet(spair=config), timings=timings
    )
    expected = spair_keypoint_transfer(backbone, tmp_path, config, progress=False)
    (entry,) = report.results
    assert entry.value == expected.pck and entry.metric_name == "PCK@0.1 bbox (spair)"
    assert (entry.metric_type, entry.task_type, entry.dataset_name, entry.split) == (
        "pck",
        "keypoint-matching",
        "SPair-71k",
        "test",
    )
    settings = entry.settings
    assert settings["spair_dir"] == str(tmp_path) and settings["alpha"] == 0.1 and settings["input_size"] == [28, 28]
    assert set(settings["per_category_pck"]) == {"cat", "dog"} and settings["per_category_pairs"] == {
        "cat": 2,
        "dog": 2,
    }
    assert settings["per_category_pck"]["cat"] == pytest.approx(expected.per_category["cat"]["pck_keypoints"][0])
    assert list(settings["pck_by_alpha"]) == ["0.1", "0.2"] and set(settings["pck_viewpoint"]) == {"0", "1"}
    assert (settings["num_pairs"], settings["num_keypoints"], settings["num_categories"]) == (4, 16, 2)
    assert set(timings) == {"spair"}


def test_depth_reports_rmse_delta1_and_abs_rel_with_their_directions(tmp_path, backbone):
    root = write_depth_folder(tmp_path / "rooms")
    timings = {}
    report = run_evaluation(
        "tiny", None, ["depth"], depth_dir=root, backbone=backbone, settings=quiet(depth=DEPTH), timings=timings
    )
    train, test = (load_depth_dataset(root, split) for split in ("train", "test"))
    expected = run_depth_probe(backbone, train, test, DEPTH, batch_size=4, progress=False).scores
    assert [(r.metric_type, r.metric_name) for r in report.results] == [
        ("rmse", "RMSE (depth)"),
        ("delta1", "δ1 (depth)"),
        ("abs_rel", "AbsRel (depth)"),
    ]
    assert [r.value for r in report.results] == pytest.approx([expected.rmse, expected.delta1, expected.abs_rel])
    assert [r.higher_is_better for r in report.results] == [False, True, False]
    entry = report.results[0]
    assert (entry.task_type, entry.dataset_name, entry.dataset_type, entry.split) == (
        "depth-estimation",
        "rooms",
        "rooms",
        "test",
    )
    settings = entry.settings
    assert settings["depth_dir"] == str(root) and settings["depth_key"] is None and settings["device"] == "cpu"
    assert (settings["train_images"], settings["test_images"], settings["scored_images"]) == (4, 2, 2)
    assert settings["epochs"] == 2 and settings["seed"] == 0 and settings["input_size"] == [28, 42]
    assert settings["scores"]["delta2"] >= settings["scores"]["delta1"]
    assert set(timings) == {"features/depth/28x42", "depth"}


def test_several_models_share_the_data_and_keep_their_own_features(tmp_path, monkeypatch):
    models = [save_random_model(tmp_path / name, tiny_dinov2_config(), seed=i) for i, name in enumerate("ab")]
    data = write_segmentation_folder(tmp_path / "data")
    depth = write_depth_folder(tmp_path / "rooms")
    segmentation_loads, depth_loads, caches = [], [], []
    load_segmentation = runner.load_segmentation_dataset
    load_depth = runner.load_depth_dataset

    def count_segmentation(name, split, *args, **kwargs):
        segmentation_loads.append(split)
        return load_segmentation(name, split, *args, **kwargs)

    def count_depth(source, split, **kwargs):
        depth_loads.append(split)
        return load_depth(source, split, **kwargs)

    class Recorded(runner.FeatureCache):
        def __init__(self, backbone, **kwargs):
            super().__init__(backbone, **kwargs)
            caches.append(self)

    monkeypatch.setattr(runner, "load_segmentation_dataset", count_segmentation)
    monkeypatch.setattr(runner, "load_depth_dataset", count_depth)
    monkeypatch.setattr(runner, "FeatureCache", Recorded)
    settings = quiet(input_size=28, depth=DEPTH, feature_cache_dir=str(tmp_path / "features"))
    settings.overcluster.num_clusters, settings.overcluster.seeds = [3], [0]
    timings, finished = [], []
    reports = evaluate_models(
        [str(m) for m in models],
        "folder",
        ["overcluster", "depth"],
        data_dir=data,
        class_names=["sky", "road", "car"],
        depth_dir=depth,
        settings=settings,
        timings=timings,
        on_report=lambda report: finished.append((report.model, len(timings))),
    )
    assert segmentation_loads == ["val"] and depth_loads == ["train", "test"]  # once for both models
    assert [r.model for r in reports] == [str(m) for m in models]
    assert finished == [(str(models[0]), 1), (str(models[1]), 2)]  # each report handed over with its timings
    assert all({"overcluster", "depth"} <= set(t) for t in timings)
    assert len(caches) == 2 and caches[0].backbone is not caches[1].backbone
    assert {str(c.cache_dir) for c in caches} == {str(tmp_path / "features")}
    assert [[r.metric_type for r in report.results] for report in reports] == [
        ["mean_iou", "rmse", "delta1", "abs_rel"]
    ] * 2
    with pytest.raises(ConfigError, match="no model"):
        evaluate_models([], "folder", ["overcluster"])


def test_new_protocols_results_load_in_the_report_and_the_card_readers(tmp_path, backbone):
    from paka_hf.hub.results import load_eval_results, result_key

    images = write_random_images(tmp_path / "photos", 2, image_hw=(30, 40))
    root = write_depth_folder(tmp_path / "rooms")
    write_spair_archive(tmp_path, categories=("cat",), pairs_per_category=1)
    report = run_evaluation(
        "tiny",
        None,
        ["warp", "spair", "depth"],
        warp_images=images,
        spair_dir=tmp_path,
        depth_dir=root,
        backbone=backbone,
        settings=quiet(warp=WARP, spair=SPairConfig(input_size=28), depth=DEPTH),
    )
    path = tmp_path / "results.json"
    report.save(path)
    assert EvaluationReport.load(path).to_dict() == report.to_dict()
    (loaded,) = load_eval_results([path])
    keys = [result_key(entry) for entry in loaded["results"]]
    assert len(keys) == len(set(keys)) == 2 + 1 + 3  # every number its own model-index entry
    assert {entry["task_type"] for entry in loaded["results"]} == {"keypoint-matching", "depth-estimation"}
