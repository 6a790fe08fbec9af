"""Which evaluation results belong on a model card: the pushed model's, its base's, and nothing else.

``scripts/evaluate.py`` writes one JSON per (model, run) with the model it measured (``model``: Hub id or
path) and the sha256 of that model's ``model.safetensors`` (``model_sha256``, see
:mod:`paka_hf.evaluation.results`). :func:`attribute_eval_results` sorts files into the *PaKA* and *Base*
columns of the card by that record:

- a file counts for the pushed model when it recorded the same weights (sha256 of the export's
  ``model.safetensors``), or, for a file that recorded no hash, the same path or Hub id;
- a file counts for the base model when its ``model`` is the base (same Hub id, or same folder);
- anything else stops the push with :class:`MislabelledResultsError` naming the files: a file of another
  model, a file naming the pushed model but recording other weights (an evaluation of an earlier run in
  the same folder or of the previous push), and two files that measure the same metric (protocol,
  dataset, split, metric) for the same model, since the card could show only one of them.

Each entry's ``metric_type`` decides its task (:data:`~paka_hf.utils.metric_types.TASK_OF_METRIC`: segmentation, keypoint matching, depth
estimation) and whether a smaller number is better (:func:`higher_is_better`); an entry whose ``task_type``
contradicts its metric type is refused when the file is read, so a number never lands in another task's
``model-index`` entry. A metric type not in :data:`TASK_OF_METRIC` (a protocol of one's own) keeps the
``task_type`` its file records and counts as higher-is-better.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from paka_hf.utils.errors import PaKAUserError
from paka_hf.utils.metric_types import HIGHER_IS_BETTER, TASK_OF_METRIC

#: What every result entry needs (not null) to become a ``model-index`` result on the card.
CARD_RESULT_KEYS = ("task_type", "dataset_name", "metric_type", "value")

#: The ``model-index`` ``task.name`` of each task (the Hub's names of these pipeline tags); another task type is
#: named by its words, title-cased.
TASK_NAMES = {
    "semantic-segmentation": "Semantic Segmentation",
    "keypoint-matching": "Keypoint Matching",
    "depth-estimation": "Depth Estimation",
}


def task_name(task_type: str) -> str:
    """The display name of a ``model-index`` task type (:data:`TASK_NAMES`).

    Args:
        task_type: e.g. ``"depth-estimation"``.

    Returns:
        e.g. ``"Depth Estimation"``; an unknown type title-cased (``"my-task"`` → ``"My Task"``).
    """
    return TASK_NAMES.get(task_type) or task_type.replace("-", " ").replace("_", " ").title()


def higher_is_better(metric_type: str) -> bool:
    """Whether a larger value of ``metric_type`` is better (the evaluation's
    :data:`~paka_hf.utils.metric_types.HIGHER_IS_BETTER`; an unknown type counts as higher-is-better, as
    :attr:`~paka_hf.evaluation.results.MetricResult.higher_is_better` does).

    Args:
        metric_type: an entry's ``metric_type``, e.g. ``"rmse"``.

    Returns:
        False for ``rmse`` and ``abs_rel``, True otherwise.
    """
    return HIGHER_IS_BETTER.get(metric_type, True)


class EvalResultsError(PaKAUserError, ValueError):
    """An evaluation-results file is not valid JSON or not in the schema of ``scripts/evaluate.py``."""


class MislabelledResultsError(PaKAUserError, ValueError):
    """Evaluation results that do not belong to the pushed model or its base, or that contradict each other."""


def load_eval_results(sources: Iterable[str | os.PathLike | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Read evaluation-results JSON files (or already-loaded dicts) written by ``scripts/evaluate.py``.

    Each has ``model``, ``model_sha256`` (``None`` in files of paka_hf 0.1) and ``results`` (a list of
    entries with ``protocol``, ``task_type``, ``dataset_name``, ``dataset_type``, ``split``, ``metric_type``,
    ``metric_name``, ``value`` in percent...), read by :func:`paka_hf.evaluation.results.read_results_json`.
    The file name is kept as ``_source`` for messages.

    Args:
        sources: paths of results files, or results already loaded as dicts.

    Returns:
        One dict per source: its JSON object with ``model`` and ``model_sha256`` defaulted to ``None`` and
        ``_source`` added.

    Raises:
        MissingPathError: naming a file that does not exist.
        EvalResultsError: naming the file when its shape is wrong, an entry lacks what the card shows
            (:data:`CARD_RESULT_KEYS`), or an entry's ``task_type`` is not its metric type's
            (:data:`TASK_OF_METRIC`).
    """
    # Imported here: the evaluation package's __init__ brings datasets and scikit-learn, which a push or a
    # training run (both import paka_hf.hub) needs only when it reads results.
    from paka_hf.evaluation.results import ResultsFileError, read_results_json

    loaded = []
    for number, source in enumerate(sources):
        name = f"<results #{number}>" if isinstance(source, Mapping) else os.fspath(source)
        try:
            data = read_results_json(source, name)
        except ResultsFileError as err:
            raise EvalResultsError(str(err)) from None
        for i, entry in enumerate(data["results"]):
            missing = [k for k in CARD_RESULT_KEYS if entry.get(k) is None]
            if missing:
                raise EvalResultsError(f"{name}: results[{i}] lacks {', '.join(missing)}")
            expected = TASK_OF_METRIC.get(entry["metric_type"])
            if expected is not None and entry["task_type"] != expected:
                raise EvalResultsError(
                    f"{name}: results[{i}] ({entry.get('protocol')}, {entry.get('metric_name')}) is a "
                    f"{entry['metric_type']} metric of task {expected!r} but records task_type "
                    f"{entry['task_type']!r}; set its task_type to {expected!r} (or evaluate again)"
                )
        data.setdefault("model", None)
        data.setdefault("model_sha256", None)
        data["_source"] = name
        loaded.append(data)
    return loaded


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two model references name the same model: equal strings, or paths of one existing folder.

    Args:
        a: a Hub id or a path, or None.
        b: likewise.

    Returns:
        False when either is empty.
    """
    if not a or not b:
        return False
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def result_key(entry: Mapping[str, Any]) -> tuple:
    """What one result measures: (protocol, dataset, config, split, metric type, metric name).

    Args:
        entry: one entry of a results file's ``results``.

    Returns:
        The 6-tuple (None for a missing field).
    """
    return (
        entry.get("protocol"),
        entry.get("dataset_name"),
        entry.get("dataset_config"),
        entry.get("split"),
        entry.get("metric_type"),
        entry.get("metric_name"),
    )


def attribute_eval_results(
    files: Sequence[Mapping[str, Any]],
    *,
    adapted_refs: Sequence[str],
    adapted_sha256: str | None,
    base_model: str | None,
    base_files: Sequence[Mapping[str, Any]] = (),
) -> tuple[list[dict], list[dict]]:
    """Split loaded evaluation files (:func:`load_eval_results`) into (base, adapted) result entries.

    ``adapted_refs``: the names the pushed model goes by (its output folder, its Hub id);
    ``adapted_sha256``: the sha256 of its ``model.safetensors``; ``base_model``: the base model's Hub id or
    path. ``base_files`` are taken as the base's on the caller's word (their ``model`` is not checked).
    Raises :class:`MislabelledResultsError` naming every file that belongs to neither model, and every pair
    of files that measure the same thing for the same model; see the module docstring for the rule.

    Args:
        files: the loaded results files, each with its ``_source``.
        adapted_refs: the pushed model's names.
        adapted_sha256: the pushed weights' sha256, or None when unknown.
        base_model: the base model's Hub id or path, or None.
        base_files: results files of the base model.

    Returns:
        ``(base_entries, adapted_entries)``, one entry per measured key.

    Raises:
        MislabelledResultsError: a file belongs to neither model, measured other weights of the pushed model, or
            measures what another file already does for the same model.
    """
    columns: dict[str, dict[tuple, tuple[str, dict]]] = {"base": {}, "adapted": {}}
    problems: list[str] = []
    pushed = f"the pushed model ({', '.join(map(str, adapted_refs))}" + (
        f", sha256 {adapted_sha256[:12]}…)" if adapted_sha256 else ")"
    )

    def add(column: str, data: Mapping[str, Any]) -> None:
        for entry in data["results"]:
            key = result_key(entry)
            earlier = columns[column].get(key)
            if earlier is not None and earlier[0] != data["_source"]:
                what = "/".join(str(part) for part in key if part is not None)
                problems.append(
                    f"{earlier[0]} and {data['_source']} both measure {what} for the "
                    f"{'base' if column == 'base' else 'pushed'} model"
                )
                continue
            columns[column][key] = (data["_source"], dict(entry))

    for data in base_files:
        add("base", data)
    for data in files:
        model, sha = data.get("model"), data.get("model_sha256")
        source = data["_source"]
        names_adapted = any(same_model(model, ref) for ref in adapted_refs)
        if sha is not None and adapted_sha256 is not None and sha == adapted_sha256:
            add("adapted", data)
        elif names_adapted and sha is not None and sha != adapted_sha256:
            problems.append(
                f"{source} measured {model} with other weights (sha256 {sha[:12]}…) than {pushed}: an evaluation "
                "of an earlier run or an earlier push; evaluate the model again"
            )
        elif names_adapted:
            add("adapted", data)
        elif same_model(model, base_model):
            add("base", data)
        else:
            problems.append(f"{source} measured {model!r}, which is neither {pushed} nor the base {base_model!r}")
    if problems:
        raise MislabelledResultsError(
            "evaluation results that the card cannot show, nothing was pushed: "
            + "; ".join(dict.fromkeys(problems))
            + ". Pass only this model's and its base's results files (--eval_results)."
        )
    return [entry for _, entry in columns["base"].values()], [entry for _, entry in columns["adapted"].values()]
