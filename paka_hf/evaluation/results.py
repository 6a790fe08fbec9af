"""The results JSON shared with the Hub / model-card code.

Schema (keys fixed; ``value``, ``per_class_iou`` and ``pixel_accuracy`` in percent; ``std`` and
``seeds`` only for multi-seed protocols, ``null`` otherwise)::

    {"paka_hf_version": "0.1.0", "date": "2026-01-01T00:00:00+00:00", "model": "<id or path>",
     "results": [{"protocol": "linear", "task_type": "semantic-segmentation",
                  "dataset_name": "CamVid", "dataset_type": "camvid", "dataset_config": null, "split": "val",
                  "metric_type": "mean_iou", "metric_name": "mIoU (linear)", "value": 42.1,
                  "settings": {...}, "per_class_iou": {"Sky": 90.1, ...}, "pixel_accuracy": 80.0,
                  "std": null, "seeds": null}]}

Each entry maps onto one Hub ``model-index`` result: ``task_type`` → ``task.type``,
``dataset_*`` → ``dataset.{name,type,config,split}``, ``metric_*``/``value`` → ``metrics[0]``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from paka_hf import __version__

RESULT_KEYS = (
    "protocol", "task_type", "dataset_name", "dataset_type", "dataset_config", "split", "metric_type",
    "metric_name", "value", "settings", "per_class_iou", "pixel_accuracy", "std", "seeds",
)  # fmt: skip
TOP_KEYS = ("paka_hf_version", "date", "model", "results")


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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"] = None if self.value is None else round(float(self.value), 4)
        for key in ("pixel_accuracy", "std"):
            if data[key] is not None:
                data[key] = round(float(data[key]), 4)
        return _clean({key: data[key] for key in RESULT_KEYS})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetricResult":
        missing = [k for k in RESULT_KEYS if k not in data]
        if missing:
            raise ValueError(f"result entry lacks keys {missing}; expected {list(RESULT_KEYS)}")
        return cls(**{k: data[k] for k in RESULT_KEYS})


@dataclass
class EvaluationReport:
    """A run's results: model, package version, UTC date and a list of :class:`MetricResult`."""

    model: str
    results: list[MetricResult] = field(default_factory=list)
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    paka_hf_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "paka_hf_version": self.paka_hf_version,
            "date": self.date,
            "model": str(self.model),
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike) -> None:
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationReport":
        missing = [k for k in TOP_KEYS if k not in data]
        if missing:
            raise ValueError(f"results JSON lacks keys {missing}; expected {list(TOP_KEYS)}")
        return cls(
            model=data["model"],
            results=[MetricResult.from_dict(r) for r in data["results"]],
            date=data["date"],
            paka_hf_version=data["paka_hf_version"],
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvaluationReport":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))
