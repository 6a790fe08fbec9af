"""Evaluation results for the model card: read the JSON files of ``scripts/evaluate.py`` and sort them
into the base model's and the adapted model's results."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

def load_eval_results(sources: Iterable[str | os.PathLike | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Read evaluation-results JSON files (or already-loaded dicts) written by ``scripts/evaluate.py``.

    Each has ``model`` and ``results`` (a list of entries with ``protocol``, ``task_type``,
    ``dataset_name``, ``dataset_type``, ``split``, ``metric_type``, ``metric_name``, ``value`` in percent...).
    Raises ``ValueError`` naming the file when the shape is wrong.
    """
    loaded = []
    for source in sources:
        if isinstance(source, Mapping):
            data, name = dict(source), "<dict>"
        else:
            name = os.fspath(source)
            try:
                data = json.loads(Path(name).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise FileNotFoundError(f"evaluation results file {name} does not exist") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"evaluation results file {name} is not valid JSON: {err}") from None
        results = data.get("results")
        if not isinstance(results, list):
            raise ValueError(
                f"{name} has no 'results' list; expected the JSON written by scripts/evaluate.py "
                '({"model": ..., "results": [{"protocol": ..., "value": ...}, ...]})'
            )
        for i, entry in enumerate(results):
            missing = [k for k in ("task_type", "dataset_name", "metric_type", "value") if entry.get(k) is None]
            if missing:
                raise ValueError(f"{name}: results[{i}] lacks {', '.join(missing)}")
        data.setdefault("model", None)
        data["_source"] = name
        loaded.append(data)
    return loaded


def _same_model(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def split_eval_results(
    files: Sequence[Mapping[str, Any]], base_model: str | None, adapted_model: str | None = None
) -> tuple[list[dict], list[dict]]:
    """Split evaluation files into (base, adapted) result entries.

    A file whose ``model`` is ``base_model`` (same string or same local folder) holds base results; every
    other file is taken as the adapted model's (a file naming ``adapted_model`` never counts as base, in
    case both names point at one folder). When several entries measure the same thing (same protocol,
    dataset, split and metric), the one from the later file wins, so re-running an evaluation and passing
    both files does not list a result twice.
    """
    base: dict[tuple, dict] = {}
    adapted: dict[tuple, dict] = {}
    for data in files:
        model = data.get("model")
        is_base = _same_model(model, base_model) and not _same_model(model, adapted_model)
        target = base if is_base else adapted
        for entry in data["results"]:
            key = _result_key(entry)
            target.pop(key, None)  # keep the order of the latest occurrence
            target[key] = dict(entry)
    return list(base.values()), list(adapted.values())


def _result_key(entry: Mapping[str, Any]) -> tuple:
    return (
        entry.get("protocol"), entry.get("dataset_name"), entry.get("dataset_config"), entry.get("split"),
        entry.get("metric_type"), entry.get("metric_name"),
    )

