"""The results JSON shared with the Hub / model-card code.

Schema (keys fixed; ``value``, ``per_class_iou`` and ``pixel_accuracy`` in percent; ``std`` and
``seeds`` only for multi-seed protocols, ``null`` otherwise)::

    {"format_version": 1, "paka_hf_version": "0.1.0", "date": "2026-01-01T00:00:00+00:00", "model": "<id or path>",
     "model_sha256": "<sha256 of the model's model.safetensors, or null>",
     "results": [{"protocol": "linear", "task_type": "semantic-segmentation",
                  "dataset_name": "CamVid", "dataset_type": "camvid", "dataset_config": null, "split": "val",
                  "metric_type": "mean_iou", "metric_name": "mIoU (linear)", "value": 42.1,
                  "settings": {...}, "per_class_iou": {"Sky": 90.1, ...}, "pixel_accuracy": 80.0,
                  "std": null, "seeds": null}]}

``settings`` holds what the number depends on: the protocol's config fields and what the run resolved. A Hummingbird
entry records its memory bank and k-NN search (docs/EVALUATION.md): ``memory_size``, ``memory_sampling``,
``memory_bank_size``, the requested ``backend`` and the ``knn_backend_used``, ``knn_exact``, ``knn_index``, and
``knn_recall_at_k`` (recall@k against exact search in ``[0, 1]``, ``null`` for an exact search) over
``knn_recall_queries`` queries; an IVF search adds ``ivf_nlist_used``, ``ivf_nprobe_used`` and
``knn_exact_fallback_queries``. Older files hold only ``memory_size``, ``memory_bank_size`` and ``backend`` (their
bounded banks were drawn uniformly); new keys in ``settings`` never change the format version.

``model`` and ``model_sha256`` say which model was measured: the push to the Hub puts a file's numbers on a
model card only for the model it records (:mod:`paka_hf.hub.results`), so an evaluation of an earlier run
in the same folder, or of the previous push of a repository, is never shown for new weights.
``model_sha256`` is ``null`` when the weights are not one local ``model.safetensors`` (a sharded model, a
Hub id not in the local cache); files written before it existed load with ``null`` too.

``format_version`` is :data:`RESULTS_FORMAT_VERSION` when written; a reader refuses a file of a newer format
(written by a newer paka_hf) and reads a file without the key as format 1.

Each entry maps onto one Hub ``model-index`` result: ``task_type`` → ``task.type``,
``dataset_*`` → ``dataset.{name,type,config,split}``, ``metric_*``/``value`` → ``metrics[0]``.

Every reader of these files starts from :func:`read_results_json`: :meth:`EvaluationReport.load` (which then
checks every key above) and the model card's :func:`paka_hf.hub.results.load_eval_results`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from paka_hf import __version__
from paka_hf.modeling.export import weights_sha256
from paka_hf.utils.errors import MissingPathError, PaKAUserError
from paka_hf.utils.files import WEIGHTS_FILE
from paka_hf.utils.metric_types import HIGHER_IS_BETTER, TASK_OF_METRIC  # noqa: F401 (re-exported)

#: The version of the schema above that this package writes and the newest it reads; a change to the schema that
#: an older reader would misread raises it (and CHANGELOG.md's "File formats" records it).
RESULTS_FORMAT_VERSION = 1

RESULT_KEYS = (
    "protocol",
    "task_type",
    "dataset_name",
    "dataset_type",
    "dataset_config",
    "split",
    "metric_type",
    "metric_name",
    "value",
    "settings",
    "per_class_iou",
    "pixel_accuracy",
    "std",
    "seeds",
)
TOP_KEYS = ("format_version", "paka_hf_version", "date", "model", "model_sha256", "results")


class ResultsFileError(PaKAUserError, ValueError):
    """An evaluation-results file that is not valid JSON, has no ``results`` list or is of a newer format."""


def read_results_json(source: str | os.PathLike | Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The top-level object of one evaluation-results JSON: read, parsed and checked to hold a ``results`` list.

    The one reader of the format (see the module docstring for the keys); callers check what they need
    beyond the list and the format version. A file without ``format_version`` (written before the key existed)
    is format 1.

    Args:
        source: the path of a JSON file written by ``scripts/evaluate.py``, or such a JSON already loaded.
        name: what messages call the source; defaults to the path (or ``<results>`` for a loaded dict).

    Returns:
        The object as a new dict (a loaded ``source`` is copied, not changed).

    Raises:
        MissingPathError: if the file does not exist.
        ResultsFileError: if it is not valid JSON, has no ``results`` list, or its ``format_version`` is not a
            positive integer or is newer than :data:`RESULTS_FORMAT_VERSION`.
    """
    if isinstance(source, Mapping):
        data: Any = dict(source)
        name = name or "<results>"
    else:
        name = name or os.fspath(source)
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MissingPathError(f"evaluation results file {name} does not exist") from None
        except json.JSONDecodeError as err:
            raise ResultsFileError(f"evaluation results file {name} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ResultsFileError(
            f"{name} has no 'results' list; expected the JSON written by scripts/evaluate.py "
            '({"model": ..., "results": [{"protocol": ..., "value": ...}, ...]})'
        )
    version = data.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ResultsFileError(f"{name}: format_version must be a positive integer, got {version!r}")
    if version > RESULTS_FORMAT_VERSION:
        raise ResultsFileError(
            f"{name} is an evaluation results file of format {version}, newer than this paka_hf {__version__} "
            f"reads (format {RESULTS_FORMAT_VERSION}): upgrade paka_hf to read it"
        )
    return data


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, NaN/inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class MetricResult:
    """One reported number (one ``model-index`` result)."""

    protocol: str
    dataset_name: str
    dataset_type: str
    split: str
    metric_name: str
    value: float
    settings: dict[str, Any] = field(default_factory=dict)
    per_class_iou: dict[str, float | None] | None = None
    pixel_accuracy: float | None = None
    std: float | None = None
    seeds: list[int] | None = None
    dataset_config: str | None = None
    task_type: str = "semantic-segmentation"
    metric_type: str = "mean_iou"

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger ``value`` is better (:data:`HIGHER_IS_BETTER`; an unknown metric type counts as
        higher-is-better, as every metric of format 1 before depth was)."""
        return HIGHER_IS_BETTER.get(self.metric_type, True)

    def to_dict(self) -> dict[str, Any]:
        """This result as its JSON entry (:data:`RESULT_KEYS`; floats rounded to 4 decimals).

        Returns:
            The entry, JSON-ready.
        """
        data = asdict(self)
        data["value"] = None if self.value is None else round(float(self.value), 4)
        for key in ("pixel_accuracy", "std"):
            if data[key] is not None:
                data[key] = round(float(data[key]), 4)
        return _clean({key: data[key] for key in RESULT_KEYS})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricResult:
        """The result of one JSON entry (:meth:`to_dict`).

        Args:
            data: an entry of a results file's ``results`` list.

        Returns:
            The result.

        Raises:
            ValueError: the entry lacks one of :data:`RESULT_KEYS`.
        """
        missing = [k for k in RESULT_KEYS if k not in data]
        if missing:
            raise ValueError(f"result entry lacks keys {missing}; expected {list(RESULT_KEYS)}")
        return cls(**{k: data[k] for k in RESULT_KEYS})


def model_weights_sha256(model_name_or_path: str | os.PathLike, revision: str | None = None) -> str | None:
    """sha256 of the ``model.safetensors`` that ``from_pretrained(model_name_or_path)`` loads, if it is one file.

    A local folder: its own file. A Hub id: the file in the local Hugging Face cache (where ``from_pretrained``
    has just put it; the network is never used). ``None`` otherwise (sharded weights, nothing cached).

    Args:
        model_name_or_path: a local folder or a Hub id.
        revision: the Hub revision the weights were loaded at.

    Returns:
        The hex digest, or ``None``.
    """
    local = weights_sha256(model_name_or_path)
    if local is not None or os.path.isdir(os.path.expanduser(os.fspath(model_name_or_path))):
        return local
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(os.fspath(model_name_or_path), WEIGHTS_FILE, revision=revision)
    except Exception:  # noqa: BLE001 - not a valid repo id: nothing to record
        return None
    return weights_sha256(cached) if isinstance(cached, str) else None


@dataclass
class EvaluationReport:
    """A run's results: the model measured (id or path, and the sha256 of its weights), package version, UTC
    date and a list of :class:`MetricResult`. Build it with :meth:`for_model` to record the weights' hash.

    Example::

        from paka_hf.evaluation import EvaluationReport
        report = EvaluationReport.load("results.json")
        print([(r.metric_name, r.value) for r in report.results])
    """

    model: str
    results: list[MetricResult] = field(default_factory=list)
    model_sha256: str | None = None
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    paka_hf_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        """The report as the results file's JSON object (:data:`TOP_KEYS`, format :data:`RESULTS_FORMAT_VERSION`).

        Returns:
            The object, JSON-ready.
        """
        return {
            "format_version": RESULTS_FORMAT_VERSION,
            "paka_hf_version": self.paka_hf_version,
            "date": self.date,
            "model": str(self.model),
            "model_sha256": self.model_sha256,
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self, indent: int = 2) -> str:
        """The report as JSON text (no NaN or infinity).

        Args:
            indent: JSON indentation.

        Returns:
            The text.
        """
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the report to ``path`` (its folder is created).

        Args:
            path: the results file to write.
        """
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json() + "\n")

    @classmethod
    def for_model(cls, model_name_or_path: str | os.PathLike, revision: str | None = None) -> EvaluationReport:
        """An empty report for ``model_name_or_path`` that records the sha256 of its weights.

        Args:
            model_name_or_path: the model evaluated, a local folder or a Hub id.
            revision: its Hub revision.

        Returns:
            The report, with no results yet.
        """
        return cls(model=str(model_name_or_path), model_sha256=model_weights_sha256(model_name_or_path, revision))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationReport:
        """The report of a results file's JSON object (:meth:`to_dict`).

        Args:
            data: the object.

        Returns:
            The report.

        Raises:
            ValueError: a key of :data:`TOP_KEYS` is missing (the hash and format version may be).
        """
        # files of 0.1 have no hash and no format version (read as format 1)
        missing = [k for k in TOP_KEYS if k not in data and k not in ("model_sha256", "format_version")]
        if missing:
            raise ValueError(f"results JSON lacks keys {missing}; expected {list(TOP_KEYS)}")
        return cls(
            model=data["model"],
            model_sha256=data.get("model_sha256"),
            results=[MetricResult.from_dict(r) for r in data["results"]],
            date=data["date"],
            paka_hf_version=data["paka_hf_version"],
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationReport:
        """The report saved at ``path`` (:meth:`save`).

        Args:
            path: a results JSON file.

        Returns:
            The :class:`EvaluationReport` it holds.

        Raises:
            MissingPathError: if the file does not exist.
            ResultsFileError: if it is not valid JSON, has no ``results`` list or is of a newer format
                (:func:`read_results_json`).
            ValueError: if a key of the schema is missing.
        """
        return cls.from_dict(read_results_json(path))
