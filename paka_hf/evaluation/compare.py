"""Several models' evaluation reports side by side: one Markdown table, with each model's change from the first.

:func:`comparison_table` is what ``paka-evaluate --model_name_or_path BASE ADAPTED ...`` prints and writes to
``<output>.comparison.md``. One row per metric, one column per model, then one column per model after the first
with its difference to the first model::

    | Protocol | Dataset | Split | Metric | base | adapted | adapted − base |
    | --- | --- | --- | --- | ---: | ---: | ---: |
    | linear | CamVid | val | mIoU (linear) | 60.12 | 62.40 | +2.28 better |
    | depth | NYUv2 | test | RMSE (depth) | 0.512 | 0.498 | -0.014 better |

A metric is a ``(protocol, dataset, config, split, metric type, metric name)``, the same key a model card uses to
match results; rows keep the order in which the reports list them (the first report's first). The difference is
``value(model) − value(first model)``, its sign kept; the word after it reads
:attr:`~.results.MetricResult.higher_is_better` (``mean_iou``, ``pck``, ``delta1`` up; ``rmse``, ``abs_rel``
down): ``better``, ``worse``, or ``same`` (``±0.00``) when the difference rounds to zero at the table's precision. A metric a
model lacks (or whose value is undefined) shows ``–``, and so does its difference. Differences are taken between
the values as a results file stores them (4 decimals), so a table made from the saved files is the printed one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from paka_hf.evaluation.results import EvaluationReport, MetricResult

#: Decimals shown per metric type: the percentages (mIoU, PCK, δ1...) at 2; RMSE (metres) and AbsRel (a ratio)
#: at 3, where their differences between models lie. Types not listed: :data:`DEFAULT_DECIMALS`.
DECIMALS = {"rmse": 3, "abs_rel": 3}
DEFAULT_DECIMALS = 2
#: What a missing value or difference shows.
MISSING = "–"


def metric_key(result: MetricResult) -> tuple:
    """What one result measures: ``(protocol, dataset, config, split, metric type, metric name)``.

    Args:
        result: a reported number.

    Returns:
        The 6-tuple the rows of :func:`comparison_table` are keyed by.
    """
    return (
        result.protocol,
        result.dataset_name,
        result.dataset_config,
        result.split,
        result.metric_type,
        result.metric_name,
    )


def _defined(result: MetricResult | None) -> bool:
    return result is not None and result.value is not None and math.isfinite(float(result.value))


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a ``|`` would end the cell)."""
    return str(text).replace("|", "\\|")


def _column_names(reports: Sequence[EvaluationReport]) -> list[str]:
    """Each report's model, numbered ``(2)``, ``(3)``... when the same model appears again."""
    names, seen = [], {}
    for report in reports:
        name = str(report.model)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return names


def difference_text(first: MetricResult | None, other: MetricResult | None) -> str:
    """``other``'s value minus ``first``'s, signed, with ``better``, ``worse`` or ``same``.

    Args:
        first: the reference model's result.
        other: the compared model's result (the same metric).

    Returns:
        e.g. ``"+2.28 better"`` or ``"-0.014 better"`` (an RMSE that dropped); :data:`MISSING` when either
        value is missing or undefined.
    """
    if not (_defined(first) and _defined(other)):
        return MISSING
    decimals = DECIMALS.get(other.metric_type, DEFAULT_DECIMALS)
    # at the results file's precision (MetricResult.to_dict), so the table of the saved files is the printed one
    difference = round(float(other.value), 4) - round(float(first.value), 4)
    if abs(difference) < 0.5 * 10**-decimals:
        return f"±{0.0:.{decimals}f} same"
    improved = (difference > 0) == other.higher_is_better
    return f"{difference:+.{decimals}f} {'better' if improved else 'worse'}"


def value_text(result: MetricResult | None) -> str:
    """A result's value at its metric's precision, with ``± std`` for a multi-seed result.

    Args:
        result: the result, or None.

    Returns:
        The text; :data:`MISSING` for no result or an undefined value.
    """
    if not _defined(result):
        return MISSING
    decimals = DECIMALS.get(result.metric_type, DEFAULT_DECIMALS)
    text = f"{float(result.value):.{decimals}f}"
    if result.std is not None and math.isfinite(float(result.std)):
        text += f" ± {float(result.std):.{decimals}f}"
    return text


def comparison_table(reports: Sequence[EvaluationReport]) -> str:
    """A Markdown table of several models' results with each model's difference to the first (module docstring).

    Args:
        reports: the models' reports; the first is the reference of the differences.

    Returns:
        The table: a header, a separator and one row per metric, without a trailing newline; with one report,
        its values and no difference column.

    Raises:
        ValueError: no report, or no result in any report.

    Example::

        from paka_hf.evaluation import EvaluationReport, comparison_table
        print(comparison_table([EvaluationReport.load("base.json"), EvaluationReport.load("paka.json")]))
    """
    if not reports:
        raise ValueError("comparison_table needs at least one report")
    rows: dict[tuple, list[MetricResult | None]] = {}
    for column, report in enumerate(reports):
        for result in report.results:
            rows.setdefault(metric_key(result), [None] * len(reports))[column] = result
    if not rows:
        raise ValueError("the reports hold no result to compare")
    names = _column_names(reports)
    differences = [f"{name} − {names[0]}" for name in names[1:]]
    header = ["Protocol", "Dataset", "Split", "Metric", *names, *differences]
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "| " + " | ".join(["---"] * 4 + ["---:"] * (len(names) + len(differences))) + " |",
    ]
    for (protocol, dataset, config, split, metric_type, metric_name), results in rows.items():
        dataset_text = f"{dataset} ({config})" if config else str(dataset)
        cells = [protocol, dataset_text, split or MISSING, metric_name or metric_type]
        cells += [value_text(result) for result in results]
        cells += [difference_text(results[0], other) for other in results[1:]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)
