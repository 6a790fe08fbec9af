"""The side-by-side table of several models' reports: one row per metric, one column per model, and each model's
signed difference to the first with better / worse read from the metric's direction (RMSE and AbsRel down)."""

from __future__ import annotations

import pytest

from paka_hf.evaluation.compare import comparison_table, difference_text, value_text
from paka_hf.evaluation.results import EvaluationReport, MetricResult


def result(protocol: str, metric_type: str, value: float | None, name: str | None = None, **extra) -> MetricResult:
    return MetricResult(
        protocol=protocol,
        dataset_name=extra.pop("dataset_name", "CamVid"),
        dataset_type="camvid",
        split="val",
        metric_name=name or f"{metric_type} ({protocol})",
        value=value,
        metric_type=metric_type,
        **extra,
    )


def rows(table: str) -> dict[str, list[str]]:
    """The body rows keyed by their metric name (4th cell), each as its cells."""
    lines = table.splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {row[3]: row for row in cells}


def test_columns_values_and_differences_with_better_and_worse():
    base = EvaluationReport(
        model="facebook/dinov2-small",
        results=[
            result("linear", "mean_iou", 60.0),
            result("depth", "rmse", 0.5, "RMSE (depth)", dataset_name="NYUv2"),
            result("depth", "abs_rel", 0.1, "AbsRel (depth)", dataset_name="NYUv2"),
            result("warp", "pck", 80.0, "PCK@1 patch (warp)"),
            result("overcluster", "mean_iou", 30.0, std=1.25, seeds=[0, 1]),
        ],
    )
    adapted = EvaluationReport(
        model="out/my_paka",
        results=[
            result("linear", "mean_iou", 62.5),
            result("depth", "rmse", 0.45, "RMSE (depth)", dataset_name="NYUv2"),
            result("depth", "abs_rel", 0.125, "AbsRel (depth)", dataset_name="NYUv2"),
            result("warp", "pck", 79.0, "PCK@1 patch (warp)"),
            result("overcluster", "mean_iou", 30.001, std=0.5, seeds=[0, 1]),
        ],
    )
    table = comparison_table([base, adapted])
    header, separator = table.splitlines()[:2]
    assert header == (
        "| Protocol | Dataset | Split | Metric | facebook/dinov2-small | out/my_paka | out/my_paka − facebook/dinov2-small |"
    )
    assert separator == "| --- | --- | --- | --- | ---: | ---: | ---: |"
    body = rows(table)
    assert list(body) == [
        "mean_iou (linear)",
        "RMSE (depth)",
        "AbsRel (depth)",
        "PCK@1 patch (warp)",
        "mean_iou (overcluster)",
    ]  # the first report's order
    assert body["mean_iou (linear)"][4:] == ["60.00", "62.50", "+2.50 better"]
    # lower is better: a smaller RMSE is an improvement, a larger AbsRel is not
    assert body["RMSE (depth)"][:2] == ["depth", "NYUv2"]
    assert body["RMSE (depth)"][4:] == ["0.500", "0.450", "-0.050 better"]
    assert body["AbsRel (depth)"][4:] == ["0.100", "0.125", "+0.025 worse"]
    assert body["PCK@1 patch (warp)"][4:] == ["80.00", "79.00", "-1.00 worse"]
    # a difference that rounds to zero at the table's precision is neither; a multi-seed value shows its spread
    assert body["mean_iou (overcluster)"][4:] == ["30.00 ± 1.25", "30.00 ± 0.50", "±0.00 same"]


def test_three_models_a_missing_metric_and_a_repeated_model():
    first = EvaluationReport(model="a", results=[result("linear", "mean_iou", 50.0)])
    second = EvaluationReport(
        model="b", results=[result("linear", "mean_iou", 40.0), result("depth", "delta1", 70.0, "δ1 (depth)")]
    )
    third = EvaluationReport(model="a", results=[result("linear", "mean_iou", None)])  # an undefined value
    table = comparison_table([first, second, third])
    assert table.splitlines()[0].endswith("| a | b | a (2) | b − a | a (2) − a |")
    body = rows(table)
    assert body["mean_iou (linear)"][4:] == ["50.00", "40.00", "–", "-10.00 worse", "–"]
    assert body["δ1 (depth)"][4:] == ["–", "70.00", "–", "–", "–"]  # only the second model measured it


def test_one_report_has_no_difference_column_and_an_empty_call_is_refused():
    table = comparison_table([EvaluationReport(model="m|x", results=[result("linear", "mean_iou", 1.0)])])
    assert table.splitlines()[0] == "| Protocol | Dataset | Split | Metric | m\\|x |"  # a pipe cannot end a cell
    with pytest.raises(ValueError, match="at least one report"):
        comparison_table([])
    with pytest.raises(ValueError, match="no result"):
        comparison_table([EvaluationReport(model="m")])


def test_cells_read_the_metric_direction_from_the_result():
    low, high = result("depth", "rmse", 1.0), result("depth", "rmse", 1.2)
    assert not low.higher_is_better
    assert difference_text(low, high) == "+0.200 worse" and difference_text(high, low) == "-0.200 better"
    assert difference_text(None, high) == "–" and value_text(None) == "–"
    assert difference_text(result("x", "unknown_type", 1.0), result("x", "unknown_type", 2.0)) == "+1.00 better"


def test_loaded_reports_compare_as_the_ones_in_memory(tmp_path):
    base = EvaluationReport(model="a", results=[result("depth", "rmse", 0.51234, "RMSE (depth)")])
    other = EvaluationReport(model="b", results=[result("depth", "rmse", 0.49876, "RMSE (depth)")])
    base.save(tmp_path / "a.json")
    other.save(tmp_path / "b.json")
    loaded = [EvaluationReport.load(tmp_path / "a.json"), EvaluationReport.load(tmp_path / "b.json")]
    assert comparison_table(loaded) == comparison_table([base, other])
    assert rows(comparison_table(loaded))["RMSE (depth)"][4:] == [
        "0.512",
        "0.499",
        "-0.013 better",
    ]  # 0.5123 − 0.4988, as stored
