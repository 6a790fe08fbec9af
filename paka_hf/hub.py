"""Hub publishing: export the backbone, render the model card, push everything in one commit.

The end product of PaKA is a plain ``transformers`` DINOv2 on the Hub that anyone loads with
``AutoModel.from_pretrained("org/dinov2-paka")``. This module owns the three steps that get it there:

1. :func:`save_backbone` writes the *export folder* files ``config.json``, ``model.safetensors`` (never a
   pickle) and ``preprocessor_config.json`` from a trained backbone. The trainer calls it.
2. :func:`render_model_card` builds ``README.md`` from ``model_cards/paka_model_card.md`` with
   ``huggingface_hub.ModelCard``: Hub metadata, a ``model-index`` with every evaluation result of the
   adapted model, a base-vs-PaKA results table, a usage snippet that runs as written, the training
   configuration and compute, pictures from :mod:`paka_hf.visualize` and the paper's citation.
3. :func:`push_to_hub` uploads exactly :data:`EXPORT_FILES`, the card, its pictures and the training
   configuration in **one** ``HfApi.create_commit``, so a failed push never leaves a half-updated
   repository. Transient HTTP failures (5xx, 429, dropped connections) are retried with exponential
   back-off; 401/403 raise :class:`HubAuthenticationError`, which says how to log in. The token is never
   printed or logged, and token-like keys in ``training_config.yaml`` are redacted before upload.

During training, :class:`HubPushMixin` (mixed into the trainer), :class:`HubPushCallback`
(``hub_strategy="every_save"``) and :func:`push_from_training_args` (end of training, after evaluation)
push through the same code, so the repository always carries this module's card rather than a bare
``Trainer`` card, and never ``Trainer``'s pickles.

Example::

    >>> from paka_hf.hub import save_backbone, push_to_hub
    >>> save_backbone(student_backbone, "out/")                      # trainer
    >>> push_to_hub("out/", "org/dinov2-paka", eval_results=["base.json", "paka.json"])

The endpoint is read when a function runs: the ``endpoint`` argument, else the ``HF_ENDPOINT``
environment variable, else ``huggingface_hub``'s default. (``huggingface_hub`` itself reads
``HF_ENDPOINT`` once, at import, so setting it later would otherwise be ignored.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from transformers import TrainerCallback

from .backbones import FAMILIES, family_for
from .backbones import default_image_processor as _family_image_processor

logger = logging.getLogger(__name__)

#: Files of the export folder that make the model loadable with ``AutoModel`` / ``AutoImageProcessor``.
EXPORT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
#: The training configuration written by the trainer, pushed next to the model (token-like keys redacted).
TRAINING_CONFIG_FILE = "training_config.yaml"
TRAINING_SUMMARY_FILE = "training_summary.json"
CARD_FILE = "README.md"
#: Sub-folder of the output folder (and of the repository) that holds the card's pictures.
PICTURES_DIR = "pictures"
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "model_cards" / "paka_model_card.md"

PAPER_URL = "https://arxiv.org/abs/2509.05606"
# Title, authors and arXiv id as given on the arXiv listing of 2509.05606 (surnames only).
CITATION = """@misc{yeo2025paka,
  title         = {PaKA: Patch-level Kernel Alignment},
  author        = {Yeo and Jang and Kim},
  year          = {2025},
  eprint        = {2509.05606},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2509.05606}
}"""
DEFAULT_TAGS = ("dinov2", "paka", "vision", "self-supervised-learning", "dense-features", "arxiv:2509.05606")
DEFAULT_COMMIT_MESSAGE = "Upload PaKA-adapted DINOv2 backbone"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SECRET_KEY = re.compile(r"(token|secret|password|api_key)", re.IGNORECASE)
_REDACTED = "<redacted>"

# Settings of training_config.yaml shown in the card's table, in this order (the full file is linked).
_CARD_CONFIG_KEYS = (
    "model_name_or_path", "dataset_name", "max_steps", "num_train_epochs", "per_device_train_batch_size",
    "gradient_accumulation_steps", "learning_rate", "head_learning_rate", "weight_decay", "global_size",
    "local_size", "n_local", "min_intersection", "loss", "kernel", "kernel_scope", "roi_size",
    "teacher_momentum", "use_head", "drop_path_rate", "bf16", "fp16", "seed", "export",
)


# --------------------------------------------------------------------------------------------------
# 0. Backbone families: what an export may hold and what its card must declare (paka_hf.backbones)
# --------------------------------------------------------------------------------------------------

#: ``model_type`` of the vision models an export folder may hold (one per registry family).
_SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def default_image_processor(model_type: str = "dinov2"):
    """The reference image processor of a family (see :func:`paka_hf.backbones.default_image_processor`)."""
    return _family_image_processor(family_for(model_type))


def family_card_metadata(model_type: str | None) -> dict[str, Any]:
    """Card metadata of a derivative of a ``model_type`` backbone: ``license``, ``license_name``,
    ``license_link``, ``pipeline_tag``, ``notice``, ``tags`` and ``title`` (from the registry)."""
    family = family_for(model_type, "the exported model")
    card = family.card
    return dict(license=card.license, license_name=card.license_name, license_link=card.license_link,
                pipeline_tag=card.pipeline_tag, notice=card.notice, tags=card.tags, title=family.title)  # fmt: skip


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
        lines.append('num_prefix = 1 + (getattr(model.config, "num_register_tokens", 0) or 0)  # CLS (+ register) tokens')
    lines += [
        'height, width = inputs["pixel_values"].shape[-2:]',
        "h, w = height // model.config.patch_size, width // model.config.patch_size",
        "patch_tokens = hidden[:, num_prefix:]  # (1, h*w, D): one feature per patch",
    ]
    return "\n".join(lines)


class HubAuthenticationError(PermissionError):
    """The Hub refused the credentials (HTTP 401/403). The message says how to log in."""


# --------------------------------------------------------------------------------------------------
# 1. Export
# --------------------------------------------------------------------------------------------------


def save_backbone(model: Any, output_dir: str | os.PathLike, image_processor: Any = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` to ``output_dir``.

    ``model`` is a ``Dinov2Model`` / ``Dinov2WithRegistersModel`` or a
    :class:`paka_hf.backbones.PatchBackbone` (its ``.model`` is saved). The weights go to safetensors
    only; a stale ``pytorch_model.bin`` left in the folder by an earlier run is removed so the folder never
    offers a pickle. The saved config has ``drop_path_rate = 0.0`` (stochastic depth is a training setting
    of the student, not part of the published model); the in-memory model is left unchanged.
    ``image_processor`` defaults to the backbone's own (a :class:`~paka_hf.backbones.PatchBackbone` carries its
    checkpoint's), else the family's reference one. Returns the folder.
    """
    backbone = getattr(model, "model", model)  # PatchBackbone -> the transformers model inside
    config = getattr(backbone, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise TypeError(
            f"save_backbone expects a vision model of a supported family ({', '.join(_SUPPORTED_MODEL_TYPES)}) "
            f"or a PatchBackbone around one, "
            f"got {type(model).__name__} with model_type={model_type!r}. Pass the student backbone, not the "
            "PaKA training module or the projection head."
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved_drop_path = getattr(config, "drop_path_rate", None)
    try:
        if saved_drop_path:
            config.drop_path_rate = 0.0
        backbone.save_pretrained(out)
    finally:
        if saved_drop_path:
            config.drop_path_rate = saved_drop_path
    for pickle_name in ("pytorch_model.bin", "pytorch_model.bin.index.json"):
        (out / pickle_name).unlink(missing_ok=True)
    if not (out / "model.safetensors").is_file():
        raise RuntimeError(
            f"save_pretrained did not write {out / 'model.safetensors'} (sharded or non-safetensors output?); "
            "paka_hf publishes a single safetensors file."
        )
    if image_processor is None:
        image_processor = getattr(model, "image_processor", None) or default_image_processor(model_type)
    image_processor.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------------
# 2. Model card
# --------------------------------------------------------------------------------------------------


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
    """The PNG files under ``output_dir/pictures`` (PCA, clusters, retrieval first), titled by name prefix."""
    folder = Path(output_dir) / PICTURES_DIR
    order = {kind: i for i, kind in enumerate(_PICTURE_TEXT)}  # pca, clusters, retrieval, then the rest
    pngs = sorted(folder.glob("*.png"), key=lambda p: (order.get(p.stem.split("_")[0], len(order)), p.name)) \
        if folder.is_dir() else []
    pictures = []
    for png in pngs:
        kind = png.stem.split("_")[0]
        title, caption = _PICTURE_TEXT.get(kind, (png.stem.replace("_", " ").capitalize(), ""))
        pictures.append(Picture(path=f"{PICTURES_DIR}/{png.name}", title=title, caption=caption))
    return pictures


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


def _eval_result(entry: Mapping[str, Any]):
    """One evaluation entry as a ``huggingface_hub.EvalResult`` (the card's ``model-index``)."""
    from huggingface_hub import EvalResult

    settings = entry.get("settings")
    return EvalResult(
        task_type=entry["task_type"],
        task_name=entry.get("task_name") or entry["task_type"].replace("-", " ").capitalize(),
        dataset_type=entry.get("dataset_type") or entry["dataset_name"],
        dataset_name=entry["dataset_name"],
        dataset_config=entry.get("dataset_config"),
        dataset_split=entry.get("split"),
        metric_type=entry["metric_type"],
        metric_name=entry.get("metric_name"),
        metric_value=round(float(entry["value"]), 4),
        metric_config=entry.get("protocol"),
        metric_args=_json_clean(settings) if isinstance(settings, Mapping) and settings else None,
    )


def _json_clean(value: Any) -> Any:
    """Plain JSON/YAML types only (tuples to lists, numpy scalars to Python)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _fmt_value(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "–"
    text = f"{float(entry['value']):.1f}"
    if entry.get("std") is not None:
        text += f" ± {float(entry['std']):.1f}"
    return text


def results_table(base: Sequence[Mapping[str, Any]], adapted: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: one row per (protocol, dataset, split, metric), columns Base, PaKA and the change."""
    rows: dict[tuple, dict[str, Any]] = {}
    for column, entries in (("base", base), ("paka", adapted)):
        for entry in entries:
            rows.setdefault(_result_key(entry), {})[column] = entry
    if not rows:
        return ""
    lines = ["| Protocol | Dataset | Split | Metric | Base | PaKA | Δ |", "| --- | --- | --- | --- | ---: | ---: | ---: |"]
    for key, cells in rows.items():
        protocol, dataset, config, split, metric_type, metric_name = key
        b, p = cells.get("base"), cells.get("paka")
        delta = f"{float(p['value']) - float(b['value']):+.1f}" if b is not None and p is not None else "–"
        dataset_text = f"{dataset} ({config})" if config else str(dataset)
        lines.append(
            f"| {protocol or '–'} | {dataset_text} | {split or '–'} | {metric_name or metric_type} | "
            f"{_fmt_value(b)} | {_fmt_value(p)} | {delta} |"
        )
    return "\n".join(lines)


def read_training_config(output_dir: str | os.PathLike) -> dict[str, Any]:
    """``training_config.yaml`` of the output folder as a dict ({} if absent), secrets redacted."""
    path = Path(output_dir) / TRAINING_CONFIG_FILE
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping of training settings, got {type(data).__name__}")
    return redact_secrets(data)


def redact_secrets(value: Any) -> Any:
    """Replace the values of token/secret/password-like keys (at any depth) with ``"<redacted>"``."""
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
        return "No `training_summary.json` was found in the output folder, so compute is not reported."
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
    for key, value in summary.items():
        if key not in {"train_runtime_s", "device", "num_processes", "images_seen", "images_skipped"}:
            pairs.append((key, value))
    return _md_table(pairs, ("Quantity", "Value"))


def _usage_snippet(model_ref: str, model_config: Mapping[str, Any] | None = None) -> str:
    return f'''import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

model_id = "{model_ref}"
processor = AutoImageProcessor.from_pretrained(model_id)
model = AutoModel.from_pretrained(model_id).eval()

image = Image.radial_gradient("L").convert("RGB")  # your picture: Image.open("photo.jpg").convert("RGB")
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    hidden = model(**inputs{_forward_kwargs(model_config or {})}).last_hidden_state  # (1, prefix tokens + h*w, D)

{_patch_grid_lines(model_config or {})}
patch_grid = patch_tokens.transpose(1, 2).reshape(1, -1, h, w)  # (1, D, h, w) dense feature map
print(patch_grid.shape)'''


def _is_hub_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and not Path(value).expanduser().exists()


def render_model_card(
    output_dir: str | os.PathLike,
    repo_id: str | None = None,
    *,
    eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
    base_eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
    template_path: str | os.PathLike | None = None,
):
    """Render the PaKA model card for ``output_dir`` and return a ``huggingface_hub.ModelCard``.

    Reads from the output folder: ``config.json`` (architecture), ``preprocessor_config.json``,
    ``training_config.yaml`` (settings; ``model_name_or_path`` is the base model, ``dataset_name`` the
    training data), ``training_summary.json`` (compute) and ``pictures/*.png``. ``eval_results`` are
    evaluation JSON files or dicts; when none are given, ``output_dir/eval_results*.json`` are used. Files
    whose ``model`` is the base model fill the *Base* column, the others the *PaKA* column and the
    ``model-index``; ``base_eval_results`` forces files into the base column.

    ``license`` defaults to the base family's (:func:`family_card_metadata`: DINOv3 derivatives get
    ``license: other`` / ``dinov3-license`` and the notice the DINOv3 License requires); ``pipeline_tag``
    and the family tag come from the same place.

    ``repo_id`` goes into the usage snippet and the ``model-index`` name (the folder path is used when
    ``None``). Metadata ``base_model`` / ``datasets`` are set only for Hub ids (the Hub rejects local
    paths); override with ``base_model=`` / ``datasets=``. The card is not written to disk: call
    ``card.save(path)``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from . import __version__

    out = Path(output_dir)
    config_path = out / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: render_model_card needs an export folder written by "
            "paka_hf.hub.save_backbone (config.json, model.safetensors, preprocessor_config.json)."
        )
    model_config = json.loads(config_path.read_text(encoding="utf-8"))
    preprocessor = {}
    if (out / "preprocessor_config.json").is_file():
        preprocessor = json.loads((out / "preprocessor_config.json").read_text(encoding="utf-8"))
    training_config = read_training_config(out)
    summary = {}
    if (out / TRAINING_SUMMARY_FILE).is_file():
        summary = json.loads((out / TRAINING_SUMMARY_FILE).read_text(encoding="utf-8"))

    base_source = base_model or training_config.get("model_name_or_path")
    base_model_meta = base_model or (base_source if _is_hub_id(base_source) else None)
    dataset_source = training_config.get("dataset_name")
    if datasets is None:
        datasets = [dataset_source] if _is_hub_id(dataset_source) else None

    eval_sources = list(eval_results)
    if not eval_sources:
        eval_sources = sorted(out.glob("eval_results*.json"))
    adapted_ref = repo_id or os.fspath(out)
    base_entries, adapted_entries = split_eval_results(
        load_eval_results(eval_sources), base_model=base_source, adapted_model=adapted_ref
    )
    forced = [dict(r) for data in load_eval_results(base_eval_results) for r in data["results"]]
    if forced:
        base_entries = list({**{_result_key(e): e for e in base_entries}, **{_result_key(e): e for e in forced}}.values())

    model_name = repo_id.split("/")[-1] if repo_id else out.resolve().name
    family_meta = family_card_metadata(model_config.get("model_type"))  # licence etc. of the base's family
    licence = dict(license=family_meta["license"], license_name=family_meta["license_name"],
                   license_link=family_meta["license_link"]) if license is None else dict(license=license)  # fmt: skip
    family_tags = [t for t in DEFAULT_TAGS if t != "dinov2"] + list(family_meta["tags"])
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=family_meta["pipeline_tag"],
        **{key: value for key, value in licence.items() if value is not None},
        base_model=base_model_meta,
        datasets=list(datasets) if datasets else None,
        tags=list(dict.fromkeys([*family_tags, *tags])),
        model_name=model_name if adapted_entries else None,
        eval_results=[_eval_result(e) for e in adapted_entries] or None,
    )

    config_pairs = [(k, training_config[k]) for k in _CARD_CONFIG_KEYS if k in training_config]
    crop = preprocessor.get("crop_size") or {}
    num_params = _count_parameters(out / "model.safetensors")
    kwargs = dict(
        model_title=repo_id or model_name,
        base_model_display=base_source,
        dataset_display=dataset_source,
        architecture=(model_config.get("architectures") or [model_config.get("model_type")])[0],
        num_parameters=f"{num_params:,}" if num_params else "an unknown number of",
        patch_size=model_config.get("patch_size", 14),
        num_register_tokens=model_config.get("num_register_tokens", 0),
        crop_size=f"{crop.get('height', '?')}×{crop.get('width', '?')}" if crop else "its configured size",
        usage_snippet=_usage_snippet(adapted_ref, model_config),
        backbone_title=family_meta["title"],
        license_notice=family_meta["notice"],
        results_table=results_table(base_entries, adapted_entries),
        results_notes=_results_notes(base_entries + adapted_entries),
        pictures=find_pictures(out),
        config_table=_md_table(config_pairs, ("Setting", "Value")) if config_pairs
        else "No `training_config.yaml` was found in the output folder.",
        compute_table=_compute_table(summary),
        citation=CITATION,
        paka_hf_version=__version__,
    )
    template = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not template.is_file():
        raise FileNotFoundError(
            f"model card template {template} not found; run from a source checkout of paka_hf "
            "(pip install -e .) or pass template_path="
        )
    return ModelCard.from_template(card_data, template_path=str(template), **kwargs)


def _results_notes(entries: Sequence[Mapping[str, Any]]) -> str:
    """One line per protocol with the settings that matter for reading the table."""
    seen, lines = set(), []
    for entry in entries:
        settings = entry.get("settings") or {}
        protocol = entry.get("protocol")
        if not settings or protocol in seen:
            continue
        seen.add(protocol)
        shown = ", ".join(f"{k}={v}" for k, v in list(settings.items())[:8] if not isinstance(v, (dict, list)))
        lines.append(f"- *{protocol}*: {shown}")
    return "\n".join(lines)


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


def write_model_card(output_dir: str | os.PathLike, repo_id: str | None = None, **kwargs: Any) -> Path:
    """Render the card (see :func:`render_model_card`) and save it as ``output_dir/README.md``."""
    card = render_model_card(output_dir, repo_id, **kwargs)
    path = Path(output_dir) / CARD_FILE
    card.save(path)
    return path


# --------------------------------------------------------------------------------------------------
# 3. Push
# --------------------------------------------------------------------------------------------------


def resolve_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``$HF_ENDPOINT`` read now, else ``huggingface_hub``'s import-time endpoint."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _status_code(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level exception types of the HTTP client huggingface_hub uses (httpx2 in hub 2.x)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            kind = getattr(module, name, None)
            if isinstance(kind, type) and issubclass(kind, BaseException):
                errors.append(kind)
    return tuple(errors)


def _is_transient(err: BaseException) -> bool:
    status = _status_code(err)
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(err, _transport_errors()):
        return True
    if isinstance(err, json.JSONDecodeError):  # an HTML error page from a gateway instead of the Hub's JSON
        return True
    cause = err.__cause__ or err.__context__
    return cause is not None and cause is not err and _is_transient(cause)


def _auth_error(err: BaseException, repo_id: str, endpoint: str) -> HubAuthenticationError:
    status = _status_code(err)
    what = "not authenticated" if status == 401 else "not allowed to write to this repository"
    return HubAuthenticationError(
        f"The Hub at {endpoint} refused the push to {repo_id!r} (HTTP {status}: {what}). Log in with "
        "`hf auth login` (or set the HF_TOKEN environment variable, or pass token=...) using a token with "
        "*write* access to the namespace; check that the organization exists and that you are a member "
        "with write rights. Tokens: https://huggingface.co/settings/tokens"
    )


def _with_retries(
    action: Callable[[], Any], *, what: str, repo_id: str, endpoint: str, max_retries: int, backoff_s: float
) -> Any:
    """Run ``action``; retry transient HTTP failures with exponential back-off; translate auth errors."""
    from huggingface_hub.errors import LocalTokenNotFoundError

    attempt = 0
    while True:
        try:
            return action()
        except LocalTokenNotFoundError as err:
            raise HubAuthenticationError(
                f"No Hugging Face token found for {what} on {repo_id!r}: run `hf auth login` or set the HF_TOKEN "
                "environment variable (or pass token=...)."
            ) from err
        except Exception as err:  # noqa: BLE001 - classified below, re-raised when not transient
            if _status_code(err) in (401, 403):
                raise _auth_error(err, repo_id, endpoint) from err
            if not _is_transient(err) or attempt >= max_retries:
                if _is_transient(err):
                    logger.error("%s on %s failed after %d attempts: %s", what, repo_id, attempt + 1, type(err).__name__)
                raise
            wait = backoff_s * (2**attempt)
            attempt += 1
            status = _status_code(err)
            logger.warning(
                "%s on %s failed (%s); retry %d/%d in %.1f s",
                what, repo_id, f"HTTP {status}" if status else type(err).__name__, attempt, max_retries, wait,
            )
            time.sleep(wait)


def collect_upload_files(output_dir: str | os.PathLike) -> dict[str, Path]:
    """Map path-in-repo → local file for everything :func:`push_to_hub` uploads (card not included).

    Exactly: :data:`EXPORT_FILES`, ``training_config.yaml`` and ``pictures/*.png``. Raises
    ``FileNotFoundError`` listing what is missing. Nothing else in the folder (checkpoints, optimizer
    state, logs, pickles) is ever uploaded.
    """
    out = Path(output_dir)
    required = [*EXPORT_FILES, TRAINING_CONFIG_FILE]
    missing = [name for name in required if not (out / name).is_file()]
    if missing:
        hint = ""
        if any(name in EXPORT_FILES for name in missing):
            hint += " Export the backbone with paka_hf.hub.save_backbone(model, output_dir)."
        if TRAINING_CONFIG_FILE in missing:
            hint += f" {TRAINING_CONFIG_FILE} is written by the trainer (scripts/train.py) at the start of training."
        raise FileNotFoundError(f"{out} lacks {', '.join(missing)}; nothing was pushed.{hint}")
    files = {name: out / name for name in required}
    for picture in find_pictures(out):
        files[picture.path] = out / picture.path
    return files


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    *,
    commit_description: str | None = None,
    endpoint: str | None = None,
    license: str | None = None,
    base_model: str | None = None,
    max_retries: int = 4,
    backoff_s: float = 2.0,
):
    """Publish ``output_dir`` to ``repo_id`` in one commit; return the ``huggingface_hub.CommitInfo``.

    Uploads exactly ``model.safetensors``, ``config.json``, ``preprocessor_config.json``, ``README.md``
    (rendered now by :func:`render_model_card` and also written to ``output_dir/README.md``),
    ``pictures/*.png`` and ``training_config.yaml`` (token-like values redacted). Creates the repository
    if needed (``private`` applies only then) and the branch ``revision`` if it does not exist.

    Every transient failure (HTTP 5xx/429, connection errors) is retried up to ``max_retries`` times with
    back-off ``backoff_s * 2**i``; the commit is built afresh on each attempt, and since all files go in a
    single ``create_commit`` the repository is either fully updated or untouched. HTTP 401/403 raise
    :class:`HubAuthenticationError`. ``token`` defaults to the logged-in token / ``HF_TOKEN``; it is never
    printed or logged.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    if not isinstance(repo_id, str) or not _HUB_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'org/name' (got {repo_id!r})")
    out = Path(output_dir)
    files = collect_upload_files(out)
    card_path = write_model_card(out, repo_id, eval_results=eval_results, license=license, base_model=base_model)
    config_bytes = yaml.safe_dump(
        redact_secrets(yaml.safe_load(files[TRAINING_CONFIG_FILE].read_text(encoding="utf-8")) or {}),
        sort_keys=False,
    ).encode("utf-8")

    endpoint = resolve_endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    retry = dict(repo_id=repo_id, endpoint=endpoint, max_retries=max_retries, backoff_s=backoff_s)

    _with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True), what="create_repo", **retry)
    if revision not in (None, "main"):
        _with_retries(
            lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), what="create_branch", **retry
        )

    def commit():
        # Fresh operations on every attempt: huggingface_hub mutates them and forbids reuse after a commit.
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
            for name, path in files.items()
            if name != TRAINING_CONFIG_FILE
        ]
        operations.append(CommitOperationAdd(path_in_repo=TRAINING_CONFIG_FILE, path_or_fileobj=config_bytes))
        operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=str(card_path)))
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message,
            commit_description=commit_description,
            revision=revision,
        )

    logger.info("Pushing %d files from %s to %s (%s)", len(files) + 1, out, repo_id, revision or "main")
    info = _with_retries(commit, what="create_commit", **retry)
    logger.info("Pushed %s: %s", repo_id, getattr(info, "commit_url", info))
    return info


# --------------------------------------------------------------------------------------------------
# 4. During training
# --------------------------------------------------------------------------------------------------

_SUPPORTED_STRATEGIES = ("end", "every_save")


def _check_strategy(strategy: Any) -> str:
    strategy = getattr(strategy, "value", strategy)  # transformers.trainer_utils.HubStrategy enum
    if strategy not in _SUPPORTED_STRATEGIES:
        raise ValueError(
            f"hub_strategy={strategy!r} is not supported by paka_hf: 'checkpoint' and 'all_checkpoints' would "
            "upload Trainer checkpoints (optimizer and RNG state are pickles, and the teacher and head are not "
            "a loadable model). Use 'every_save' (push the exported backbone at every save) or 'end'."
        )
    return strategy


def _hub_settings(args: Any) -> dict[str, Any]:
    strategy = _check_strategy(getattr(args, "hub_strategy", "every_save"))
    repo_id = getattr(args, "hub_model_id", None)
    if not repo_id:
        raise ValueError(
            "push_to_hub is true but hub_model_id is not set; set hub_model_id: org/name in the training config."
        )
    return dict(
        repo_id=repo_id,
        strategy=strategy,
        private=bool(getattr(args, "hub_private_repo", False)),
        token=getattr(args, "hub_token", None),
        revision=getattr(args, "hub_revision", None),
    )


def push_from_training_args(
    output_dir: str | os.PathLike,
    args: Any,
    eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
    commit_message: str = "End of training",
    **kwargs: Any,
):
    """End-of-training push driven by ``TrainingArguments``-style settings; ``None`` if not requested.

    Call it after the final export (and after evaluation, so the card carries the results). Reads
    ``args.push_to_hub``, ``hub_model_id``, ``hub_strategy`` (``end`` or ``every_save``; both push here),
    ``hub_private_repo``, ``hub_token`` and ``hub_revision``; only process zero should call it
    (``trainer.is_world_process_zero()``). ``kwargs`` go to :func:`push_to_hub`.
    """
    if not getattr(args, "push_to_hub", False):
        return None
    settings = _hub_settings(args)
    return push_to_hub(
        output_dir,
        settings["repo_id"],
        private=settings["private"],
        eval_results=eval_results,
        revision=settings["revision"],
        token=settings["token"],
        commit_message=commit_message,
        **kwargs,
    )


class HubPushCallback(TrainerCallback):
    """Push the exported backbone at every save (``hub_strategy="every_save"``), through :func:`push_to_hub`.

    At each ``on_save`` on process zero, ``export_fn(staging_dir)`` writes the current backbone (use
    ``lambda d: save_backbone(student, d, processor)``); when ``export_fn`` is ``None`` the new
    ``checkpoint-{step}`` folder is used if it holds a plain DINOv2 export. ``training_config.yaml``,
    ``training_summary.json`` and ``pictures/`` are copied from ``args.output_dir`` when present; the card is
    regenerated each time, so the repository never carries a bare ``Trainer`` card. Commit message:
    ``"Training in progress, step N"``. With ``hub_strategy="end"`` the callback does nothing; call
    :func:`push_from_training_args` after the final export and evaluation in both cases.

    A failed in-progress push is logged and training continues (the next save or the final push
    retries); an authentication error is raised at once.
    """

    def __init__(
        self,
        repo_id: str,
        *,
        strategy: str = "every_save",
        private: bool = False,
        token: str | None = None,
        revision: str | None = None,
        export_fn: Callable[[str], Any] | None = None,
        push_fn: Callable[..., Any] | None = None,
        **push_kwargs: Any,
    ):
        strategy = _check_strategy(strategy)
        self.repo_id, self.strategy, self.private, self.revision = repo_id, strategy, private, revision
        self._token = token
        self.export_fn = export_fn
        self.push_fn = push_fn or push_to_hub
        self.push_kwargs = push_kwargs
        self.pushes: list[Any] = []  # CommitInfo of every successful in-progress push

    def __repr__(self) -> str:  # never show the token
        return f"HubPushCallback(repo_id={self.repo_id!r}, strategy={self.strategy!r}, revision={self.revision!r})"

    @classmethod
    def from_training_args(cls, args: Any, **kwargs: Any) -> "HubPushCallback | None":
        """Build from ``args.push_to_hub`` / ``hub_model_id`` / ``hub_strategy`` ...; ``None`` if not pushing."""
        if not getattr(args, "push_to_hub", False):
            return None
        settings = _hub_settings(args)
        return cls(
            settings["repo_id"], strategy=settings["strategy"], private=settings["private"],
            token=settings["token"], revision=settings["revision"], **kwargs,
        )

    def on_save(self, args, state, control, **kwargs):
        if self.strategy != "every_save" or not getattr(state, "is_world_process_zero", True):
            return control
        step = int(getattr(state, "global_step", 0))
        output_dir = Path(args.output_dir)
        with tempfile.TemporaryDirectory(prefix="paka-hub-") as staging:
            staging_dir = Path(staging)
            if self.export_fn is not None:
                self.export_fn(str(staging_dir))
            else:
                self._copy_checkpoint_export(output_dir / f"checkpoint-{step}", staging_dir)
            for name in (TRAINING_CONFIG_FILE, TRAINING_SUMMARY_FILE):
                if (output_dir / name).is_file():
                    shutil.copy2(output_dir / name, staging_dir / name)
            if (output_dir / PICTURES_DIR).is_dir():
                shutil.copytree(output_dir / PICTURES_DIR, staging_dir / PICTURES_DIR)
            try:
                info = self.push_fn(
                    staging_dir, self.repo_id, private=self.private, revision=self.revision, token=self._token,
                    commit_message=f"Training in progress, step {step}", **self.push_kwargs,
                )
            except HubAuthenticationError:
                raise
            except Exception as err:  # noqa: BLE001 - a failed intermediate push must not end training
                logger.error("Hub push at step %d failed, training continues: %s", step, err)
                return control
        self.pushes.append(info)
        return control

    @staticmethod
    def _copy_checkpoint_export(checkpoint: Path, staging: Path) -> None:
        config = checkpoint / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        if model_type not in _SUPPORTED_MODEL_TYPES or not (checkpoint / "model.safetensors").is_file():
            raise RuntimeError(
                f"{checkpoint} does not hold a plain backbone export (config.json + model.safetensors); give "
                "HubPushCallback an export_fn, e.g. lambda d: paka_hf.hub.save_backbone(student_backbone, d)."
            )
        for name in EXPORT_FILES:
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, staging / name)
        if not (staging / "preprocessor_config.json").is_file():
            default_image_processor(model_type).save_pretrained(staging)


class HubPushMixin:
    """Route a ``Trainer`` subclass's Hub settings through :mod:`paka_hf.hub` instead of ``Trainer``'s own push.

    ``Trainer`` would upload the whole output folder (``training_args.bin`` is a pickle, checkpoints hold the
    teacher and head) and overwrite ``README.md`` with its generic card. Put this mixin before ``Trainer``
    and define ``export_backbone(output_dir)``::

        class PaKATrainer(HubPushMixin, Trainer):
            def export_backbone(self, output_dir):
                save_backbone(self.student_backbone, output_dir, self.processing_class)

    Then, with ``push_to_hub=True`` in the arguments: ``hub_strategy="every_save"`` pushes the exported backbone
    at every save (a :class:`HubPushCallback` is added when ``Trainer.__init__`` calls ``init_hf_repo``);
    ``trainer.push_to_hub(eval_results=[...])`` after evaluation exports and pushes with the PaKA card
    (``trainer.save_model()`` calls it too, as in ``Trainer``). The repository is created by the first push.
    """

    def export_backbone(self, output_dir: str) -> None:  # pragma: no cover - the trainer defines it
        raise NotImplementedError(
            f"{type(self).__name__} must define export_backbone(output_dir), e.g. "
            "paka_hf.hub.save_backbone(student_backbone, output_dir, processing_class)"
        )

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        self.hub_model_id = self.args.hub_model_id
        self.push_in_progress = None
        _hub_settings(self.args)  # fail at start-up, not at the first save, on a bad hub_strategy / missing id
        callback = HubPushCallback.from_training_args(self.args, export_fn=self.export_backbone)
        if callback is not None and callback.strategy == "every_save":
            self.add_callback(callback)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        return  # HubPushCallback pushes the exported backbone, not the checkpoint folder

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
        **kwargs: Any,
    ):
        """Export the backbone to ``args.output_dir`` and push it with the PaKA card (process zero only)."""
        if not self.is_world_process_zero():
            return None
        if getattr(self.args, "hub_model_id", None) is None:
            raise ValueError("set hub_model_id (org/name) in the training config to push to the Hub")
        settings = _hub_settings(self.args)
        self.export_backbone(self.args.output_dir)
        return push_to_hub(
            self.args.output_dir,
            settings["repo_id"],
            private=settings["private"] if private is None else private,
            eval_results=eval_results,
            revision=revision or settings["revision"],
            token=token or settings["token"],
            commit_message=commit_message or "End of training",
            **kwargs,
        )

