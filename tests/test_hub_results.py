"""Which task and direction each metric type has on the card, and results files whose task contradicts them."""

from __future__ import annotations

import json

import pytest

from paka_hf.evaluation.results import HIGHER_IS_BETTER, EvaluationReport, MetricResult
from paka_hf.hub.results import (
    TASK_OF_METRIC,
    EvalResultsError,
    higher_is_better,
    load_eval_results,
    task_name,
)


def test_every_metric_type_of_the_evaluation_has_a_task_and_a_direction():
    assert set(TASK_OF_METRIC) == set(HIGHER_IS_BETTER)
    assert {m for m, task in TASK_OF_METRIC.items() if task == "depth-estimation"} == {"rmse", "abs_rel", "delta1"}
    assert TASK_OF_METRIC["pck"] == "keypoint-matching" and TASK_OF_METRIC["mean_iou"] == "semantic-segmentation"
    assert [m for m in TASK_OF_METRIC if not higher_is_better(m)] == ["rmse", "abs_rel"]
    assert higher_is_better("some_metric_of_ones_own")  # as MetricResult.higher_is_better
    assert task_name("depth-estimation") == "Depth Estimation"
    assert task_name("keypoint-matching") == "Keypoint Matching"
    assert task_name("my_own-task") == "My Own Task"


def test_an_entry_whose_task_is_not_its_metrics_is_refused_naming_the_file(tmp_path):
    """A PCK left with MetricResult's default task (semantic-segmentation) would land in the segmentation entry of
    the model-index: the file is refused with what to set."""
    pck = MetricResult(
        protocol="spair",
        dataset_name="SPair-71k",
        dataset_type="spair-71k",
        split="test",
        metric_name="PCK@0.1 bbox",
        value=30.0,
        metric_type="pck",
    )
    path = tmp_path / "spair.json"
    EvaluationReport(model="m", results=[pck]).save(path)
    with pytest.raises(EvalResultsError, match=r"spair\.json: results\[0\] \(spair, PCK@0\.1 bbox\) is a pck metric "):
        load_eval_results([path])
    with pytest.raises(EvalResultsError, match="set its task_type to 'keypoint-matching'"):
        load_eval_results([path])

    fixed = json.loads(path.read_text())
    fixed["results"][0]["task_type"] = "keypoint-matching"
    (loaded,) = load_eval_results([fixed])
    assert loaded["results"][0]["metric_type"] == "pck" and loaded["_source"] == "<results #0>"
    # a metric type of one's own keeps the task it records
    custom = {**fixed["results"][0], "metric_type": "f_score", "task_type": "edge-detection"}
    assert load_eval_results([{**fixed, "results": [custom]}])[0]["results"][0]["task_type"] == "edge-detection"
