"""The evaluation-results JSON (paka_hf.evaluation.results): the keys it writes, the round trip, its format
version, and read_results_json, the one reader the report and the model card share."""

from __future__ import annotations

import json

import numpy as np
import pytest

from paka_hf import __version__
from paka_hf.evaluation.results import (
    RESULT_KEYS,
    RESULTS_FORMAT_VERSION,
    TOP_KEYS,
    EvaluationReport,
    MetricResult,
    ResultsFileError,
    read_results_json,
)
from paka_hf.utils.errors import MissingPathError


def test_results_json_round_trip(tmp_path):
    report = EvaluationReport(model="org/model")
    report.results.append(
        MetricResult(
            protocol="overcluster",
            dataset_name="CamVid",
            dataset_type="camvid",
            split="val",
            metric_name="mIoU (overclustering, K=100)",
            value=np.float64(41.23456),
            settings={"num_clusters": 100, "seeds": (0, 1)},
            per_class_iou={"Sky": 90.0, "Pole": float("nan")},
            pixel_accuracy=80.0,
            std=1.5,
            seeds=[0, 1],
        )
    )
    path = tmp_path / "sub" / "results.json"
    report.save(path)
    raw = json.loads(path.read_text())
    assert tuple(raw) == TOP_KEYS and tuple(raw["results"][0]) == RESULT_KEYS
    assert raw["paka_hf_version"] == __version__
    entry = raw["results"][0]
    assert entry["value"] == 41.2346 and entry["per_class_iou"]["Pole"] is None and entry["std"] == 1.5
    assert entry["task_type"] == "semantic-segmentation" and entry["metric_type"] == "mean_iou"
    assert entry["dataset_config"] is None
    loaded = EvaluationReport.load(path)
    assert loaded.to_dict() == raw
    with pytest.raises(ValueError, match="lacks keys"):
        EvaluationReport.from_dict({"model": "m"})


def test_one_reader_for_the_report_and_the_card(tmp_path):
    """read_results_json is what EvaluationReport.load and the card's load_eval_results read files with."""
    from paka_hf import hub

    report = EvaluationReport(model="org/model", results=[MetricResult("linear", "CamVid", "camvid", "val", "m", 1.0)])
    path = tmp_path / "eval.json"
    report.save(path)
    assert read_results_json(path) == report.to_dict()
    given = report.to_dict()
    copy = read_results_json(given)
    assert copy == given and copy is not given
    bad, broken = tmp_path / "bad.json", tmp_path / "broken.json"
    bad.write_text(json.dumps([1, 2]))
    broken.write_text("{")
    readers = (
        (read_results_json, ResultsFileError),
        (EvaluationReport.load, ResultsFileError),
        (lambda p: hub.load_eval_results([p]), hub.EvalResultsError),
    )
    for reader, error in readers:
        with pytest.raises(error, match="bad.json has no 'results' list"):
            reader(bad)
        with pytest.raises(error, match="broken.json is not valid JSON"):
            reader(broken)
        with pytest.raises(MissingPathError, match="missing.json does not exist"):
            reader(tmp_path / "missing.json")
    with pytest.raises(ResultsFileError, match="<mine> has no 'results' list"):
        read_results_json({"model": "m"}, "<mine>")
    with pytest.raises(hub.EvalResultsError, match=r"<results #0>: results\[0\] lacks value"):
        hub.load_eval_results([{"results": [{"task_type": "t", "dataset_name": "d", "metric_type": "m"}]}])


def test_every_file_records_its_format_version_and_a_newer_one_is_refused(tmp_path):
    """Written with RESULTS_FORMAT_VERSION; a file without the key (written before it existed) is format 1 and
    loads; a newer format stops every reader with one line asking for an upgrade; a malformed version is refused."""
    from paka_hf import hub

    report = EvaluationReport(model="org/model", results=[MetricResult("linear", "CamVid", "camvid", "val", "m", 1.0)])
    path = tmp_path / "eval.json"
    report.save(path)
    assert RESULTS_FORMAT_VERSION == 1
    assert json.loads(path.read_text())["format_version"] == RESULTS_FORMAT_VERSION

    old = report.to_dict()
    del old["format_version"], old["model_sha256"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = EvaluationReport.load(tmp_path / "old.json")
    assert loaded.model == "org/model" and loaded.results[0].value == 1.0
    assert loaded.to_dict()["format_version"] == RESULTS_FORMAT_VERSION
    assert hub.load_eval_results([tmp_path / "old.json"])[0]["model"] == "org/model"

    newer = dict(report.to_dict(), format_version=RESULTS_FORMAT_VERSION + 1)
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    readers = (
        (read_results_json, ResultsFileError),
        (EvaluationReport.load, ResultsFileError),
        (lambda p: hub.load_eval_results([p]), hub.EvalResultsError),
    )
    for reader, error in readers:
        with pytest.raises(error, match=r"newer.json is an evaluation results file of format 2, newer than") as info:
            reader(tmp_path / "newer.json")
        assert "upgrade paka_hf" in str(info.value) and "\n" not in str(info.value)
    for bad in ("1", 0, 1.0, True, None):
        with pytest.raises(ResultsFileError, match="format_version must be a positive integer"):
            read_results_json(dict(report.to_dict(), format_version=bad), "<bad>")
