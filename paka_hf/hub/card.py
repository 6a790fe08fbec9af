"""The model card: ``paka_hf/hub/templates/paka_model_card.md`` rendered with ``huggingface_hub.ModelCard``.

Hub metadata, a ``model-index`` with every evaluation result of the adapted model, base-vs-PaKA results
tables (one per task: segmentation, keypoint matching, depth estimation; :func:`results_table`), a usage snippet
that runs as written, the training configuration (secrets redacted) and compute, pictures from
:mod:`paka_hf.apps.pictures` and the paper's citation.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from paka_hf.hub.results import (
    TASK_OF_METRIC,
    attribute_eval_results,
    higher_is_better,
    load_eval_results,
    result_key,
    task_name,
)
from paka_hf.modeling.backbones import FAMILIES, family_for
from paka_hf.modeling.export import weights_sha256
from paka_hf.utils.errors import ConfigError
from paka_hf.utils.files import (
    ADAPTER_DIR,
    ADAPTER_FILES,
    EVAL_RESULTS_GLOB,
    FEATURE_HEALTH_KEY,
    MODEL_CONFIG_FILE,
    PICTURES_DIR,
    PREPROCESSOR_FILE,
    TRAINING_CONFIG_FILE,
    TRAINING_SUMMARY_FILE,
    WEIGHTS_FILE,
)
from paka_hf.utils.paper import CITATION, PAPER_URL, TAGS  # noqa: F401  (CITATION, PAPER_URL: part of paka_hf.hub)
from paka_hf.utils.paths import REPO_ID_PATTERN, is_inside

logger = logging.getLogger(__name__)

#: The card's Jinja template: package data of ``paka_hf.hub`` (declared in setup.py), so a wheel install has it
#: too; an ``importlib.resources`` Traversable (a ``pathlib.Path`` for an unpacked install), read with
#: :func:`read_template`.
TEMPLATE_PATH = importlib.resources.files("paka_hf.hub") / "templates" / "paka_model_card.md"

#: Tags of every PaKA card; the backbone family adds its own (``dinov2``, ``dinov3``, ``siglip``, ``clip``).
DEFAULT_TAGS = TAGS

_SECRET_KEY = re.compile(r"(token|secret|password|api_key)", re.IGNORECASE)
_REDACTED = "<redacted>"

# Settings of training_config.yaml shown in the card's table, in this order (the full file is linked).
_CARD_CONFIG_KEYS = (
    "model_name_or_path",
    "dataset_name",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "head_learning_rate",
    "weight_decay",
    "global_size",
    "local_size",
    "n_local",
    "min_intersection",
    "loss",
    "kernel",
    "kernel_scope",
    "roi_size",
    "teacher_momentum",
    "use_head",
    "drop_path_rate",
    "bf16",
    "fp16",
    "seed",
    "export",
)


@dataclass
class Picture:
    """A PNG under ``pictures/`` with its title and caption, as embedded in the card."""

    path: str  # relative to the repository root, e.g. "pictures/pca.png"
    title: str
    caption: str


_PICTURE_TEXT = {
    "pca": (
        "PCA of patch features",
        "Image, base model and PaKA model. The first three principal components of each model's last-layer "
        "patch tokens are shown as RGB (PCA fitted per model over the images shown): regions that look alike "
        "to the model get similar colours.",
    ),
    "clusters": (
        "Overclustering",
        "k-means on the L2-normalised patch tokens of each model (one clustering over all images shown), "
        "overlaid on the images. Segments that follow object boundaries indicate semantically grouped features.",
    ),
    "retrieval": (
        "Nearest-patch retrieval",
        "A query patch (white box) and the cosine similarity of every patch to it, for the base and PaKA "
        "models; black boxes mark the most similar patches in the other images.",
    ),
}


def find_pictures(output_dir: str | os.PathLike) -> list[Picture]:
    """The PNG files under ``output_dir/pictures`` (PCA, clusters, retrieval first), titled by name prefix.

    A picture that resolves outside ``output_dir`` (a symlink, or a ``pictures`` folder that is one) is skipped
    with a warning, so neither the card nor the upload ever carries content from elsewhere on the disk.

    Args:
        output_dir: the training output (export) folder.

    Returns:
        One :class:`Picture` per PNG (path relative to ``output_dir``, title and caption); empty when there is no
        ``pictures`` folder.
    """
    folder = Path(output_dir) / PICTURES_DIR
    order = {kind: i for i, kind in enumerate(_PICTURE_TEXT)}  # pca, clusters, retrieval, then the rest
    pngs = (
        sorted(folder.glob("*.png"), key=lambda p: (order.get(p.stem.split("_")[0], len(order)), p.name))
        if folder.is_dir()
        else []
    )
    pictures = []
    for png in pngs:
        if not is_inside(png, output_dir):
            logger.warning(
                "Skipping %s: a symlink to %s, outside %s (only the folder's own files are published)",
                png,
                png.resolve(),
                output_dir,
            )
            continue
        kind = png.stem.split("_")[0]
        title, caption = _PICTURE_TEXT.get(kind, (png.stem.replace("_", " ").capitalize(), ""))
        pictures.append(Picture(path=f"{PICTURES_DIR}/{png.name}", title=title, caption=caption))
    return pictures


def _eval_result(entry: Mapping[str, Any]):
    """One evaluation entry as a ``huggingface_hub.EvalResult`` (the card's ``model-index``).

    The task's name is the Hub's (:func:`~paka_hf.hub.results.task_name`); the ``model-index`` has no field for
    a metric's direction, so a lower-is-better metric (RMSE, AbsRel) says so in its name.
    """
    from huggingface_hub import EvalResult

    settings = entry.get("settings")
    metric_name = entry.get("metric_name")
    if not higher_is_better(entry["metric_type"]):
        metric_name = metric_name or entry["metric_type"]
        if LOWER_IS_BETTER_TEXT not in metric_name:
            metric_name = f"{metric_name} ({LOWER_IS_BETTER_TEXT})"
    return EvalResult(
        task_type=entry["task_type"],
        task_name=entry.get("task_name") or task_name(entry["task_type"]),
        dataset_type=entry.get("dataset_type") or entry["dataset_name"],
        dataset_name=entry["dataset_name"],
        dataset_config=entry.get("dataset_config"),
        dataset_split=entry.get("split"),
        metric_type=entry["metric_type"],
        metric_name=metric_name,
        metric_value=round(float(entry["value"]), 4),
        metric_config=entry.get("protocol"),
        metric_args=_json_clean(settings) if isinstance(settings, Mapping) and settings else None,
    )


def _json_clean(value: Any) -> Any:
    """Plain JSON/YAML types only (tuples to lists, numpy scalars to Python)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


#: How a lower-is-better metric is marked: in its ``model-index`` name, and (as ↓) in the card's tables.
LOWER_IS_BETTER_TEXT = "lower is better"

#: How the card writes each metric type: decimals of its values (and of the change) and what the number is,
#: for the sentence above its task's table. Percentages get one decimal; RMSE (metres) and AbsRel (a ratio)
#: three, as depth tables print them. Another metric type: four significant digits, "as recorded".
METRIC_FORMATS = {
    "mean_iou": (1, "mIoU in percent"),
    "pixel_accuracy": (1, "pixel accuracy in percent"),
    "pck": (1, "PCK in percent of the points whose match lands within the threshold"),
    "rmse": (3, "RMSE in metres"),
    "abs_rel": (3, "AbsRel (mean |d − d̂| / d) as a ratio"),
    "delta1": (1, "δ₁ in percent of the pixels with max(d / d̂, d̂ / d) < 1.25"),
}


def _format_number(value: float, metric_type: str, signed: bool = False) -> str:
    """``value`` with its metric type's decimals (:data:`METRIC_FORMATS`), a sign when ``signed``."""
    decimals = METRIC_FORMATS.get(metric_type, (None, ""))[0]
    sign = "+" if signed else ""
    return f"{float(value):{sign}.{decimals}f}" if decimals is not None else f"{float(value):{sign}.4g}"


def _fmt_value(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "–"
    metric_type = entry.get("metric_type")
    text = _format_number(entry["value"], metric_type)
    if entry.get("std") is not None:
        text += f" ± {_format_number(entry['std'], metric_type)}"
    return text


def _task_table(rows: Mapping[tuple, Mapping[str, Any]]) -> str:
    """One task's table: the rows of :func:`results_table` for that task, after a sentence with their units."""
    metric_types = list(dict.fromkeys(key[4] for key in rows))
    units = [METRIC_FORMATS[m][1] if m in METRIC_FORMATS else f"`{m}` as recorded" for m in metric_types]
    note = "; ".join(units) + "."
    lower = [m for m in metric_types if not higher_is_better(m)]
    if lower:
        note += f" ↓: {LOWER_IS_BETTER_TEXT} (a negative Δ is an improvement)."
    lines = [
        note,
        "",
        "| Protocol | Dataset | Split | Metric | Base | PaKA | Δ |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for key, cells in rows.items():
        protocol, dataset, config, split, metric_type, metric_name = key
        b, p = cells.get("base"), cells.get("paka")
        delta = (
            _format_number(float(p["value"]) - float(b["value"]), metric_type, signed=True)
            if b is not None and p is not None
            else "–"
        )
        dataset_text = f"{dataset} ({config})" if config else str(dataset)
        metric_text = f"{metric_name or metric_type}" + ("" if higher_is_better(metric_type) else " ↓")
        lines.append(
            f"| {protocol or '–'} | {dataset_text} | {split or '–'} | {metric_text} | "
            f"{_fmt_value(b)} | {_fmt_value(p)} | {delta} |"
        )
    return "\n".join(lines)


def results_table(base: Sequence[Mapping[str, Any]], adapted: Sequence[Mapping[str, Any]]) -> str:
    """Markdown tables, one per task: one row per (protocol, dataset, split, metric), columns Base, PaKA and Δ.

    Tasks come in the order of :data:`~paka_hf.hub.results.TASK_OF_METRIC` (segmentation, keypoint matching,
    depth estimation), then any other task in the order met; each table has a ``###`` heading with the task's
    name (:func:`~paka_hf.hub.results.task_name`) and a sentence giving its metrics' units. Values keep their
    metric's decimals (one for percentages, three for RMSE in metres and AbsRel); a lower-is-better metric is
    marked ↓ after its name. Δ is PaKA − Base (negative is better for a ↓ metric).

    Args:
        base: the base model's result entries.
        adapted: this model's result entries.

    Returns:
        The tables' Markdown ("–" where a column has no value); ``""`` when there are no entries.
    """
    tasks: dict[str, dict[tuple, dict[str, Any]]] = {task: {} for task in dict.fromkeys(TASK_OF_METRIC.values())}
    for column, entries in (("base", base), ("paka", adapted)):
        for entry in entries:
            rows = tasks.setdefault(entry["task_type"], {})
            rows.setdefault(result_key(entry), {})[column] = entry
    sections = []
    for task, rows in tasks.items():
        if rows:
            parts = [f"### {task_name(task)}", _task_table(rows)]
            parts += [table for key, cells in rows.items() if (table := _per_category_table(key, cells))]
            sections.append("\n\n".join(parts))
    return "\n\n".join(sections)


#: The ``settings`` key of a result's per-category breakdown (SPair-71k's PCK of each category, the headline being
#: their mean), shown as a table of its own under the result's task table.
PER_CATEGORY_KEY = "per_category_pck"


def _per_category_table(key: tuple, cells: Mapping[str, Mapping[str, Any]]) -> str:
    """Base / PaKA / Δ per category of one row whose entries record :data:`PER_CATEGORY_KEY`; ``""`` otherwise."""
    columns = {c: (e.get("settings") or {}).get(PER_CATEGORY_KEY) for c, e in cells.items()}
    columns = {c: values for c, values in columns.items() if isinstance(values, Mapping) and values}
    if not columns:
        return ""
    protocol, dataset, config, split, metric_type, metric_name = key
    names = list(dict.fromkeys(name for values in columns.values() for name in values))

    def cell(column: str, name: str) -> str:
        value = columns.get(column, {}).get(name)
        return "–" if value is None else _format_number(value, metric_type)

    lines = [
        f"{metric_name or metric_type} per category ({dataset}{f' {config}' if config else ''}, {split or '–'}; "
        "its row in the table above is their mean):",
        "",
        "| Category | Base | PaKA | Δ |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in names:
        b, p = (columns.get(c, {}).get(name) for c in ("base", "paka"))
        delta = (
            _format_number(float(p) - float(b), metric_type, signed=True) if b is not None and p is not None else "–"
        )
        lines.append(f"| {name} | {cell('base', name)} | {cell('paka', name)} | {delta} |")
    return "\n".join(lines)


def read_training_config(output_dir: str | os.PathLike) -> dict[str, Any]:
    """``training_config.yaml`` of the output folder as a dict ({} if absent), secrets redacted.

    Args:
        output_dir: the training output folder.

    Returns:
        The settings, with :func:`redact_secrets` applied; ``{}`` when the file is absent or empty.

    Raises:
        ValueError: the file holds YAML that is not a mapping.
    """
    path = Path(output_dir) / TRAINING_CONFIG_FILE
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping of training settings, got {type(data).__name__}")
    return redact_secrets(data)


def redact_secrets(value: Any) -> Any:
    """Replace the values of token/secret/password-like keys (at any depth) with ``"<redacted>"``.

    Args:
        value: a mapping, list or scalar, e.g. a parsed ``training_config.yaml``.

    Returns:
        A copy with every non-empty value under such a key redacted; a scalar as is.
    """
    if isinstance(value, Mapping):
        return {
            k: (_REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "", False) else redact_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value


def _md_table(pairs: Sequence[tuple[str, Any]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    for key, value in pairs:
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        lines.append(f"| `{key}` | {str(value).replace('|', '/')} |")
    return "\n".join(lines)


def _compute_table(summary: Mapping[str, Any]) -> str:
    if not summary:
        return f"No `{TRAINING_SUMMARY_FILE}` was found in the output folder, so compute is not reported."
    pairs = []
    runtime = summary.get("train_runtime_s")
    if runtime is not None:
        pairs.append(("train_runtime", f"{float(runtime) / 3600:.2f} h ({float(runtime):.0f} s)"))
    if summary.get("device") is not None:
        pairs.append(("device", summary["device"]))
    if summary.get("num_processes") is not None:
        pairs.append(("num_processes", summary["num_processes"]))
        if runtime is not None:
            pairs.append(("device_hours", f"{float(runtime) * int(summary['num_processes']) / 3600:.2f}"))
    for key in ("images_seen", "images_skipped"):
        if summary.get(key) is not None:
            pairs.append((key, f"{int(summary[key]):,}"))
    health = summary.get(FEATURE_HEALTH_KEY) or {}
    for key in ("mean_patch_cosine", "effective_rank"):  # the student's patch features, collapse guard
        ends = health.get(key) or {}
        if ends.get("start") is not None and ends.get("end") is not None:
            pairs.append((key, f"{ends['start']:.3f} at the start → {ends['end']:.3f} at the end"))
    shown = {"train_runtime_s", "device", "num_processes", "images_seen", "images_skipped", FEATURE_HEALTH_KEY}
    for key, value in summary.items():
        if key not in shown:
            pairs.append((key, value))
    table = _md_table(pairs, ("Quantity", "Value"))
    if any(key in health for key in ("mean_patch_cosine", "effective_rank")):
        table += (
            "\n\n`mean_patch_cosine` (the mean cosine between distinct patches of an image) and `effective_rank` "
            "(of an image's patch features) were measured on the student's training views, on the first batch "
            "and over the last steps; a collapse of the features raises the first and lowers the second."
        )
    return table


def family_card_metadata(model_type: str | None) -> dict[str, Any]:
    """Card metadata of a derivative of a ``model_type`` backbone, from the registry (:mod:`paka_hf.modeling.backbones`):
    ``license``, ``license_name``, ``license_link``, ``pipeline_tag``, ``notice``, ``tags`` and ``title``.

    Args:
        model_type: the exported ``config.json``'s ``model_type``.

    Returns:
        A dict with those keys.

    Raises:
        ConfigError: the model type is not a supported family.
    """
    family = family_for(model_type, "the exported model")
    card = family.card
    return dict(
        license=card.license,
        license_name=card.license_name,
        license_link=card.license_link,
        pipeline_tag=card.pipeline_tag,
        notice=card.notice,
        tags=card.tags,
        title=family.title,
    )


def _forward_kwargs(model_config: Mapping[str, Any]) -> str:
    """Extra arguments of the usage snippet's forward call: CLIP/SigLIP run at any size only when told to."""
    family = FAMILIES.get(model_config.get("model_type"))
    return ", interpolate_pos_encoding=True" if family is not None and family.input_mode == "interpolate" else ""


def _patch_grid_lines(model_config: Mapping[str, Any]) -> str:
    """The usage snippet's lines from ``hidden`` (``last_hidden_state``) to ``patch_tokens``, per family."""
    family = FAMILIES.get(model_config.get("model_type"))
    if family is not None and family.input_mode == "naflex":  # patchified input, padding after the h*w tokens
        return """h, w = inputs["spatial_shapes"][0].tolist()
patch_tokens = hidden[:, : h * w]  # (1, h*w, D): one feature per patch (no CLS token)"""
    lines = []
    if family is not None and family.final_norm is not None:
        lines.append(f"hidden = model.{family.final_norm}(hidden)  # the model normalizes only its pooled token")
    prefix = family.num_prefix_tokens(SimpleNamespace(**model_config)) if family is not None else 1
    if prefix == 0:
        lines.append("num_prefix = 0  # no CLS token: every token is a patch")
    else:
        lines.append(
            'num_prefix = 1 + (getattr(model.config, "num_register_tokens", 0) or 0)  # CLS (+ register) tokens'
        )
    lines += [
        'height, width = inputs["pixel_values"].shape[-2:]',
        "h, w = height // model.config.patch_size, width // model.config.patch_size",
        "patch_tokens = hidden[:, num_prefix:]  # (1, h*w, D): one feature per patch",
    ]
    return "\n".join(lines)


def _usage_snippet(model_ref: str, model_config: Mapping[str, Any]) -> str:
    return f'''import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

model_id = "{model_ref}"
processor = AutoImageProcessor.from_pretrained(model_id)
model = AutoModel.from_pretrained(model_id).eval()

image = Image.radial_gradient("L").convert("RGB")  # your picture: Image.open("photo.jpg").convert("RGB")
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    hidden = model(**inputs{_forward_kwargs(model_config)}).last_hidden_state  # (1, prefix tokens + h*w, D)

{_patch_grid_lines(model_config)}
patch_grid = patch_tokens.transpose(1, 2).reshape(1, -1, h, w)  # (1, D, h, w) dense feature map
print(patch_grid.shape)'''


def _adapter_snippet(out: Path, model_ref: str, base_ref: str | None) -> str | None:
    """How to load a LoRA run's adapter onto its base with ``peft``; ``None`` when the folder has no adapter."""
    config_path = out / ADAPTER_DIR / ADAPTER_FILES[0]
    if not config_path.is_file():
        return None
    adapter = json.loads(config_path.read_text(encoding="utf-8"))
    recorded = adapter.get("base_model_name_or_path")  # peft records the path it was given: published only as an id
    base_ref = base_ref or (recorded if _is_hub_id(recorded) else None) or "BASE_MODEL_ID"
    return f'''from peft import PeftModel  # pip install peft
from transformers import AutoModel

base = AutoModel.from_pretrained("{base_ref}")
model = PeftModel.from_pretrained(base, "{model_ref}", subfolder="{ADAPTER_DIR}").eval()
# LoRA rank {adapter.get("r")}, alpha {adapter.get("lora_alpha")}; model(**inputs) as above gives the same
# features as the merged model (to float rounding).'''


def _is_hub_id(value: Any) -> bool:
    return isinstance(value, str) and bool(REPO_ID_PATTERN.match(value)) and not Path(value).expanduser().exists()


#: A snapshot folder of the Hugging Face download cache: ``.../models--ORG--NAME/snapshots/<revision>``
#: (Hub names cannot contain ``--``, so the folder name splits back into the id unambiguously).
_HF_CACHE_SNAPSHOT = re.compile(r"(?:^|[\\/])models--([^\\/]+)[\\/]snapshots(?:[\\/]|$)")

#: How the card names a base model that is a local folder with no recorded Hub id.
LOCAL_BASE_TEXT = "a local checkpoint"


@dataclass(frozen=True)
class BaseModelRef:
    """The base model of a run, as the card and the Hub may name it.

    ``source`` is what the run was started from (``model_name_or_path`` of ``training_config.yaml``, or
    ``--base_model``): it may be a local folder, so it is used to recognise the base's evaluation results but is
    never published. ``hub_id`` is the base's Hub id when it is known (the only name a card, its metadata or a
    Space carries); ``local`` says that ``source`` is a local folder.
    """

    source: str | None
    hub_id: str | None
    local: bool

    @property
    def unknown_local(self) -> bool:
        """A local folder whose Hub id is not known: the card says :data:`LOCAL_BASE_TEXT`."""
        return self.local and self.hub_id is None


def hub_id_of_local_checkpoint(path: str | os.PathLike) -> str | None:
    """The Hub id a local checkpoint folder records, or ``None``.

    Read, in this order, from the folder's location in the Hugging Face download cache (``hf download`` and
    ``from_pretrained`` keep a model in ``.../models--ORG--NAME/snapshots/<sha>/``; the path as written and the
    path with symlinks followed are both tried) and from ``_name_or_path`` in its ``config.json`` (saved by
    ``transformers`` 4; ``transformers`` 5 no longer writes it). A ``base_model:`` in the folder's ``README.md``
    is not used: it names the model *that* checkpoint was derived from, not the checkpoint itself.

    Args:
        path: The local folder (it need not exist here; then only its path is read).

    Returns:
        ``"ORG/NAME"``, or ``None`` when nothing records it.
    """
    folder = Path(path).expanduser()
    candidates = [os.fspath(path)]
    if folder.exists():
        candidates.append(os.fspath(folder.resolve()))
    for text in candidates:
        match = _HF_CACHE_SNAPSHOT.search(text)
        if match:
            hub_id = "/".join(match.group(1).split("--"))
            if REPO_ID_PATTERN.match(hub_id):
                return hub_id
    config_path = folder / MODEL_CONFIG_FILE
    if config_path.is_file():
        try:
            recorded = json.loads(config_path.read_text(encoding="utf-8")).get("_name_or_path")
        except (ValueError, AttributeError):  # not JSON, or not a mapping: records nothing
            return None
        if _is_hub_id(recorded):
            return recorded
    return None


def resolve_base_model(training_config: Mapping[str, Any], base_model: str | None = None) -> BaseModelRef:
    """The base model of a run and the Hub id a card may name it by.

    Args:
        training_config: The run's ``training_config.yaml`` as a dict (its ``model_name_or_path``).
        base_model: The base's Hub id given by the user (``--base_model``); it wins over what the folder records.

    Returns:
        The :class:`BaseModelRef`: ``hub_id`` is ``base_model``, else ``model_name_or_path`` when it is a Hub id,
        else what the local folder records (:func:`hub_id_of_local_checkpoint`), else ``None``.

    Raises:
        ConfigError: ``base_model`` is not a Hub id (a local path would be published in the card's metadata).
    """
    source = training_config.get("model_name_or_path")
    source = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    local = source is not None and not _is_hub_id(source)
    if base_model is not None:
        if not _is_hub_id(base_model):
            raise ConfigError(
                f"--base_model must be the base model's Hub id like 'org/name' (it goes into the card's metadata and "
                f"the Space), got {base_model!r}"
            )
        return BaseModelRef(source=source or base_model, hub_id=base_model, local=local)
    if source is None:
        return BaseModelRef(source=None, hub_id=None, local=False)
    return BaseModelRef(source=source, hub_id=hub_id_of_local_checkpoint(source) if local else source, local=local)


def publishable_training_config(training_config: Mapping[str, Any], base: BaseModelRef) -> dict[str, Any]:
    """``training_config`` as it may be published: a local ``model_name_or_path`` becomes the base's Hub id, or
    ``None`` when that is not known (a folder of the machine the run was trained on means nothing elsewhere).

    Args:
        training_config: The run's settings (secrets already redacted, :func:`redact_secrets`).
        base: The run's base model (:func:`resolve_base_model`).

    Returns:
        A copy of ``training_config`` with ``model_name_or_path`` replaced where it was a local path.
    """
    published = dict(training_config)
    if base.local and "model_name_or_path" in published:
        published["model_name_or_path"] = base.hub_id
    return published


#: The card's evaluation hint when no results are attached: a labelled folder in the ``folder`` layout of
#: scripts/evaluate.py (``{split}/images/*`` + ``{split}/masks/<stem>.png``), its class names, and the results
#: file of this model and of its base (the names a push finds in the output folder, ``eval_results*.json``).
HINT_DATA_DIR = "my_seg"
HINT_CLASS_NAMES = "road,car,sky"
HINT_RESULTS_FILES = ("eval_results_paka.json", "eval_results_base.json")


def evaluate_hint(model_ref: str, base_ref: str | None = None) -> list[dict[str, str]]:
    """The evaluation commands the card gives when no results are attached: ``scripts/evaluate.py`` with its real
    flags, for this model and, when its Hub id is known, its base, on the labelled folder :data:`HINT_DATA_DIR`.

    Args:
        model_ref: This model's Hub id (what the card's reader evaluates).
        base_ref: The base model's Hub id, or ``None`` (a local base: no command for it).

    Returns:
        One ``{"command": ..., "output_file": ...}`` per model, this model first; each command is one shell line
        with a backslash continuation, to run as written once the data folder and class names are the reader's.
    """
    hints = []
    for ref, output_file in zip((model_ref, base_ref), HINT_RESULTS_FILES):
        if ref:
            command = (
                f"python scripts/evaluate.py --model_name_or_path {ref} --dataset_name folder "
                f"--data_dir {HINT_DATA_DIR} \\\n    --class_names {HINT_CLASS_NAMES} --ignore_index 255 --protocol all "
                f"--output_file {output_file}"
            )
            hints.append({"command": command, "output_file": output_file})
    return hints


def render_model_card(
    output_dir: str | os.PathLike,
    repo_id: str | None = None,
    *,
    eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
    base_eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    pipeline_tag: str | None = None,
    notice: str | None = None,
    tags: Sequence[str] = (),
    template_path: str | os.PathLike | None = None,
):
    """Render the PaKA model card for ``output_dir`` and return a ``huggingface_hub.ModelCard``.

    Reads from the output folder: ``config.json`` (architecture), ``preprocessor_config.json``,
    ``training_config.yaml`` (settings; ``model_name_or_path`` is the base model, ``dataset_name`` the
    training data), ``training_summary.json`` (compute) and ``pictures/*.png``. ``eval_results`` are
    evaluation JSON files or dicts; when none are given, ``output_dir/eval_results*.json`` are used. Files
    of the base model fill the *Base* column, files of this model (same weights hash, or same path / Hub
    id) the *PaKA* column and the ``model-index``; any other file, or two files measuring the same thing
    for one model, raise :class:`~paka_hf.hub.results.MislabelledResultsError` (rule:
    :func:`~paka_hf.hub.results.attribute_eval_results`). ``base_eval_results`` are taken as the base's.

    Metadata: ``license`` (an SPDX-like Hub id; ``"other"`` with ``license_name`` / ``license_link`` for a
    custom licence), ``pipeline_tag`` and ``notice`` (extra text shown under the introduction, e.g. the
    terms of a gated base model) default to the base family's (:func:`family_card_metadata`: Apache-2.0
    and image feature extraction for DINOv2; ``other`` / ``dinov3-license`` and the notice the DINOv3
    License requires for DINOv3). Passing ``license`` replaces the family's licence fields together.

    ``repo_id`` goes into the usage snippet and the ``model-index`` name (the folder path is used when
    ``None``). Metadata ``base_model`` / ``datasets`` are set only for Hub ids (the Hub rejects local
    paths); override with ``base_model=`` (a Hub id) / ``datasets=``. A local base folder is never published:
    the card names it by the Hub id it records (:func:`resolve_base_model`), else says it started from
    :data:`LOCAL_BASE_TEXT` and logs a warning. With no results attached, the card gives the evaluation
    commands that produce them (:func:`evaluate_hint`). The card is not written to disk: call
    ``card.save(path)``.

    Args:
        output_dir: the export folder (``config.json`` at least).
        repo_id: the Hub id the card is for; the folder path when ``None``.
        eval_results: evaluation JSON files or dicts, for either model; ``output_dir/eval_results*.json`` when
            empty.
        base_eval_results: evaluation JSON files or dicts taken as the base model's.
        base_model: the base model's Hub id for the metadata; overrides what ``training_config.yaml`` records.
        datasets: the metadata's training datasets; ``training_config.yaml``'s ``dataset_name`` when it is a Hub
            id.
        license: the metadata licence; replaces the family's licence fields.
        license_name: the name of an ``other`` licence.
        license_link: the link to an ``other`` licence.
        pipeline_tag: the metadata pipeline tag; the family's when ``None``.
        notice: text under the introduction; the family's when ``None``.
        tags: tags added to the family's and PaKA's.
        template_path: a Jinja template of your own (:func:`read_template`).

    Returns:
        The rendered ``huggingface_hub.ModelCard``.

    Raises:
        FileNotFoundError: ``output_dir`` has no ``config.json``, or the template is missing.
        ConfigError: ``base_model`` is not a Hub id, or the model type is not a supported family.
        MislabelledResultsError: a results file belongs to neither model, or two measure the same thing for one
            model.
        ValueError: ``training_config.yaml`` is not a mapping.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from paka_hf import __version__

    out = Path(output_dir)
    config_path = out / MODEL_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: render_model_card needs an export folder written by "
            "paka_hf.hub.save_backbone (config.json, model.safetensors, preprocessor_config.json)."
        )
    model_config = json.loads(config_path.read_text(encoding="utf-8"))
    preprocessor = {}
    if (out / PREPROCESSOR_FILE).is_file():
        preprocessor = json.loads((out / PREPROCESSOR_FILE).read_text(encoding="utf-8"))
    training_config = read_training_config(out)
    summary = {}
    if (out / TRAINING_SUMMARY_FILE).is_file():
        summary = json.loads((out / TRAINING_SUMMARY_FILE).read_text(encoding="utf-8"))

    base = resolve_base_model(training_config, base_model)
    if base.unknown_local:
        logger.warning(
            "The base model %s is a local checkpoint that records no Hub id: the card says it started from %s and "
            "names no base_model (pass --base_model ORG/NAME to name it)",
            base.source,
            LOCAL_BASE_TEXT,
        )
    dataset_source = training_config.get("dataset_name")
    if datasets is None:
        datasets = [dataset_source] if _is_hub_id(dataset_source) else None

    eval_sources = list(eval_results)
    if not eval_sources:
        eval_sources = sorted(out.glob(EVAL_RESULTS_GLOB))
    adapted_ref = repo_id or os.fspath(out)
    adapted_sha256 = weights_sha256(out / WEIGHTS_FILE)
    loaded, base_files = load_eval_results(eval_sources), load_eval_results(base_eval_results)
    if base.local and base.hub_id:  # the base measured under its Hub id rather than the local folder trained from
        named_base = [d for d in loaded if d["model"] == base.hub_id and d["model_sha256"] != adapted_sha256]
        loaded = [d for d in loaded if all(d is not n for n in named_base)]
        base_files = [*base_files, *named_base]
    base_entries, adapted_entries = attribute_eval_results(
        loaded,
        adapted_refs=[os.fspath(out), *([repo_id] if repo_id else [])],
        adapted_sha256=adapted_sha256,
        base_model=base.source,
        base_files=base_files,
    )

    model_name = repo_id.split("/")[-1] if repo_id else out.resolve().name
    family = family_card_metadata(model_config.get("model_type"))
    if license is None:  # the family's licence, its name and link together
        license, license_name, license_link = family["license"], family["license_name"], family["license_link"]
    notice = notice if notice is not None else (f"**Licence.** {family['notice']}" if family["notice"] else None)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag or family["pipeline_tag"],
        license=license,
        license_name=license_name,
        license_link=license_link,
        base_model=base.hub_id,
        datasets=list(datasets) if datasets else None,
        tags=list(dict.fromkeys([*family["tags"], *DEFAULT_TAGS, *tags])),
        model_name=model_name if adapted_entries else None,
        eval_results=[_eval_result(e) for e in adapted_entries] or None,
    )

    shown_config = publishable_training_config(training_config, base)
    if base.unknown_local and "model_name_or_path" in shown_config:
        shown_config["model_name_or_path"] = LOCAL_BASE_TEXT
    config_pairs = [(k, shown_config[k]) for k in _CARD_CONFIG_KEYS if k in shown_config]
    crop = preprocessor.get("crop_size") or {}
    num_params = _count_parameters(out / WEIGHTS_FILE)
    kwargs = dict(
        model_title=repo_id or model_name,
        base_model_display=base.hub_id,
        base_is_local=base.unknown_local,
        dataset_display=dataset_source,
        architecture=(model_config.get("architectures") or [model_config.get("model_type")])[0],
        num_parameters=f"{num_params:,}" if num_params else "an unknown number of",
        patch_size=model_config.get("patch_size", 14),
        num_register_tokens=model_config.get("num_register_tokens", 0),
        crop_size=f"{crop.get('height', '?')}×{crop.get('width', '?')}" if crop else "its configured size",
        usage_snippet=_usage_snippet(adapted_ref, model_config),
        adapter_snippet=_adapter_snippet(out, adapted_ref, base.hub_id),
        evaluate_hint=evaluate_hint(adapted_ref, base.hub_id),
        hint_data_dir=HINT_DATA_DIR,
        local_base_text=LOCAL_BASE_TEXT,
        backbone_title=family["title"],
        results_table=results_table(base_entries, adapted_entries),
        results_notes=_results_notes(base_entries, adapted_entries),
        pictures=find_pictures(out),
        config_table=_md_table(config_pairs, ("Setting", "Value"))
        if config_pairs
        else f"No `{TRAINING_CONFIG_FILE}` was found in the output folder.",
        compute_table=_compute_table(summary),
        notice=notice,
        citation=CITATION,
        paka_hf_version=__version__,
    )
    return ModelCard.from_template(card_data, template_str=read_template(template_path), **kwargs)


def read_template(template_path: str | os.PathLike | None = None) -> str:
    """Text of the model card's Jinja template.

    Args:
        template_path: A template file of your own; ``None`` reads the packaged one (:data:`TEMPLATE_PATH`,
            through ``importlib.resources``, so it works from a wheel as well as from a source checkout).

    Returns:
        The template's text (UTF-8).

    Raises:
        FileNotFoundError: ``template_path`` is not a file, or the packaged template is missing (an install
            built without its package data).
    """
    if template_path is not None:
        template = Path(template_path)
        if not template.is_file():
            raise FileNotFoundError(f"model card template {template} not found (template_path=)")
        return template.read_text(encoding="utf-8")
    if not TEMPLATE_PATH.is_file():
        raise FileNotFoundError(
            f"the packaged model card template {TEMPLATE_PATH} is missing: paka_hf was installed without its "
            "package data (paka_hf/hub/templates/*.md, declared in setup.py); reinstall it, or pass template_path="
        )
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def hummingbird_note(settings: Mapping[str, Any]) -> str:
    """The Hummingbird settings a reader needs to compare numbers: the memory bank and the k-NN search.

    Memory bank: its size, and ``memory_size`` with the per-map sampling rule (``full`` without a bound; files
    written before ``memory_sampling`` was recorded sampled uniformly). Search: the backend that ran
    (``knn_backend_used``; older files record only the requested ``backend``), exact or approximate, and for
    ``faiss_ivf`` its lists, probes and recall@k against exact search.

    Args:
        settings: a Hummingbird result's ``settings`` (the results JSON).

    Returns:
        One line of Markdown-safe text, e.g. ``memory bank 256,274 patches (full), exact k-NN (faiss), k=30,
        temperature=0.02``.
    """
    size, bank = settings.get("memory_size"), settings.get("memory_bank_size")
    bound = "full" if size is None else f"memory_size={size}, {settings.get('memory_sampling', 'uniform')} sampling"
    parts = [f"memory bank {bank:,} patches ({bound})" if isinstance(bank, int) else f"memory bank ({bound})"]
    backend = settings.get("knn_backend_used")
    if backend is None:
        parts.append(f"k-NN backend={settings.get('backend', 'unrecorded')}")
    elif settings.get("knn_exact", True):
        parts.append(f"exact k-NN ({backend})")
    else:
        search = f"approximate k-NN ({backend}, nlist={settings.get('ivf_nlist_used')}, "
        search += f"nprobe={settings.get('ivf_nprobe_used')})"
        recall = settings.get("knn_recall_at_k")
        if recall is not None:
            search += f", recall@{settings.get('num_neighbors', 'k')}={recall:.3f} against exact search"
            search += f" on {settings.get('knn_recall_queries')} queries"
        parts.append(search)
    for key in ("num_neighbors", "temperature"):
        if key in settings:
            parts.append(f"{'k' if key == 'num_neighbors' else key}={settings[key]}")
    return ", ".join(parts)


#: The settings the card's note gives for each protocol whose numbers depend on more than the input size, in
#: this order (those its entry records; unset ones left out): the known-warp correspondence's warp and
#: thresholds, SPair-71k's split, view and α, the depth probe's crop, bins and schedule, and what each counted.
#: Any other protocol but Hummingbird (:func:`hummingbird_note`) shows its first eight scalar settings.
NOTE_SETTINGS = {
    "warp": (
        "input_size",
        "thresholds",
        "crop_fraction",
        "flip_p",
        "max_rotation",
        "perspective",
        "border_patches",
        "seed",
        "num_images",
    ),
    "spair": (
        "split",
        "layout",
        "input_size",
        "resize",
        "alpha",
        "source_sampling",
        "upsample",
        "max_pairs_per_category",
        "max_pairs",
        "num_pairs",
    ),
    "depth": (
        "input_size",
        "crop",
        "num_bins",
        "use_cls_token",
        "epochs",
        "lr",
        "min_depth",
        "max_depth",
        "depth_key",
        "train_images",
        "test_images",
    ),
}


def _settings_note(protocol: str | None, settings: Mapping[str, Any]) -> str:
    """``key=value, ...`` of a protocol's :data:`NOTE_SETTINGS` (lists as ``[a, b]``), else its first eight
    scalar settings."""
    keys = [k for k in NOTE_SETTINGS.get(protocol, ()) if settings.get(k) is not None]
    if keys:
        lists = {k: json.dumps(_json_clean(settings[k])) for k in keys if isinstance(settings[k], (list, tuple))}
        return ", ".join(f"{k}={lists.get(k, settings[k])}" for k in keys)
    return ", ".join(f"{k}={v}" for k, v in list(settings.items())[:8] if not isinstance(v, (dict, list)))


def _results_notes(base: Sequence[Mapping[str, Any]], adapted: Sequence[Mapping[str, Any]]) -> str:
    """One line per protocol with the settings that matter for reading the tables.

    Hummingbird's line is :func:`hummingbird_note` (memory bank, k-NN backend, recall), one per distinct text,
    named by model and dataset when the results differ in it. The known-warp, SPair-71k and depth protocols show
    their :data:`NOTE_SETTINGS`; other protocols their first eight scalar settings.
    """
    seen, lines = set(), []
    for column, entries in (("Base", base), ("PaKA", adapted)):
        for entry in entries:
            settings = entry.get("settings") or {}
            protocol = entry.get("protocol")
            if not settings:
                continue
            if protocol == "hummingbird":
                shown = hummingbird_note(settings)
                if (protocol, shown) not in seen:
                    seen.add((protocol, shown))
                    lines.append((protocol, f"{column}, {entry.get('dataset_name')}", shown))
            elif protocol not in seen:
                seen.add(protocol)
                lines.append((protocol, None, _settings_note(protocol, settings)))
    several = {p for p, _, _ in lines if sum(q == p for q, _, _ in lines) > 1}
    return "\n".join(
        f"- *{protocol}*{f' ({label})' if protocol in several else ''}: {shown}" for protocol, label, shown in lines
    )


def _count_parameters(path: Path) -> int | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            n = 1
            for dim in f.get_slice(key).get_shape():
                n *= dim
            total += n
    return total
