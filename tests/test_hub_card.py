"""Export folder and model card: safetensors only, card metadata and eval results round-trip, snippet runs."""

from __future__ import annotations

import json
import re
import runpy

import pytest
import torch
from hub_helpers import SECRET, TRAINING_CONFIG, eval_file, make_export_folder
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from paka_hf import hub
from paka_hf.utils.errors import PaKAUserError


@pytest.fixture
def export_dir(tmp_path, tiny_config):
    out = tmp_path / "out"
    model = make_export_folder(out, tiny_config(registers=4))
    return out, model


def test_save_backbone_writes_loadable_safetensors_only(tmp_path, tiny_config):
    from paka_hf.modeling.backbones import PatchBackbone

    config = tiny_config(registers=2)
    config.drop_path_rate = 0.1
    backbone = PatchBackbone.from_config(config).eval()
    (tmp_path / "pytorch_model.bin").write_bytes(b"stale pickle from an older run")
    hub.save_backbone(backbone, tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(hub.EXPORT_FILES)
    assert backbone.model.config.drop_path_rate == 0.1  # in-memory model untouched
    assert json.loads((tmp_path / "config.json").read_text())["drop_path_rate"] == 0.0
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    pixels = processor(images=Image.new("RGB", (80, 60), "orange"), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(
            loaded(pixel_values=pixels).last_hidden_state, backbone.model(pixel_values=pixels).last_hidden_state
        )


def test_save_backbone_rejects_non_dinov2(tmp_path):
    with pytest.raises(TypeError, match="vision model of a supported family"):
        hub.save_backbone(torch.nn.Linear(2, 2), tmp_path)


def test_card_metadata_results_and_round_trip(export_dir, tmp_path):
    out, _ = export_dir
    base = eval_file("facebook/dinov2-with-registers-small", linear=40.5, retrieval=35.0)
    adapted = eval_file(str(out), linear=44.3, retrieval=39.0)
    (tmp_path / "base.json").write_text(json.dumps(base))
    (out / "eval_results.json").write_text(json.dumps(adapted))  # found in the output folder by itself

    card = hub.render_model_card(
        out, "paka-org/dinov2-paka-tiny", eval_results=[tmp_path / "base.json", out / "eval_results.json"]
    )
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    data = loaded.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.base_model == "facebook/dinov2-with-registers-small"
    assert data.datasets == ["detection-datasets/coco"]
    assert data.license == "apache-2.0"
    assert {"dinov2", "paka", "arxiv:2509.05606"} <= set(data.tags)
    # model-index carries every result of the adapted model, intact; base results stay out of it
    assert data.model_name == "dinov2-paka-tiny"
    got = {(r.metric_config, r.metric_name): r for r in data.eval_results}
    assert set(got) == {("linear", "mIoU (linear)"), ("hummingbird", "mIoU (hummingbird, 1-NN)")}
    linear = got[("linear", "mIoU (linear)")]
    assert (linear.task_type, linear.dataset_type, linear.dataset_name, linear.dataset_split) == (
        "semantic-segmentation",
        "camvid",
        "CamVid",
        "val",
    )
    assert linear.metric_type == "mean_iou" and linear.metric_value == 44.3
    assert linear.metric_args == {"input_size": 448, "epochs": 25}
    # base-vs-adapted table with the change
    text = loaded.text
    assert "| linear | CamVid | val | mIoU (linear) | 40.5 | 44.3 | +3.8 |" in text
    assert "| hummingbird | CamVid | val | mIoU (hummingbird, 1-NN) | 35.0 | 39.0 | +4.0 |" in text
    # training configuration and compute, without the secret
    assert "| `global_size` | 224 |" in text and "| `teacher_momentum` | 0.9995 |" in text
    assert "1.50 h (5400 s)" in text and "| `images_skipped` | 2 |" in text
    assert SECRET not in str(loaded)
    # citation of the paper
    assert "2509.05606" in text and "PaKA: Patch-level Kernel Alignment" in text and "Yeo and Jang and Kim" in text


def test_card_without_results_or_summary_says_so(tmp_path, tiny_config):
    out = tmp_path / "out"
    make_export_folder(out, tiny_config(), summary=False)
    card = hub.render_model_card(out)
    assert card.data.eval_results is None
    assert "No evaluation results were attached" in card.text
    assert "No `training_summary.json`" in card.text


def test_card_usage_snippet_runs_against_output_folder(export_dir, tmp_path, capsys):
    out, model = export_dir
    card = hub.render_model_card(out, "paka-org/dinov2-paka-tiny")
    snippets = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert len(snippets) == 1
    snippet = snippets[0]
    assert 'model_id = "paka-org/dinov2-paka-tiny"' in snippet
    script = tmp_path / "usage.py"
    script.write_text(snippet.replace('"paka-org/dinov2-paka-tiny"', repr(str(out))))
    namespace = runpy.run_path(str(script))

    grid = namespace["patch_grid"]
    hidden_size, patch = model.config.hidden_size, model.config.patch_size
    assert grid.shape == (1, hidden_size, 224 // patch, 224 // patch)
    # the grid is exactly the patch tokens of the local model (CLS and 4 registers dropped)
    with torch.no_grad():
        ref = model(pixel_values=namespace["inputs"]["pixel_values"]).last_hidden_state[:, 5:]
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), ref)
    assert f"torch.Size([1, {hidden_size}, 16, 16])" in capsys.readouterr().out


def test_card_embeds_pictures(export_dir):
    out, _ = export_dir
    (out / "pictures").mkdir()
    for name in ("pca.png", "clusters.png", "retrieval.png"):
        Image.new("RGB", (8, 8)).save(out / "pictures" / name)
    text = hub.render_model_card(out).text
    for name in ("pca.png", "clusters.png", "retrieval.png"):
        assert f"](pictures/{name})" in text
    assert "PCA of patch features" in text and "Overclustering" in text and "Nearest-patch retrieval" in text
    assert text.index("pictures/pca.png") < text.index("pictures/clusters.png") < text.index("pictures/retrieval.png")


def _hashed(model: str, sha256: str | None, linear: float, retrieval: float) -> dict:
    return {**eval_file(model, linear, retrieval), "model_sha256": sha256}


def test_results_of_another_model_stop_the_card(export_dir, tmp_path):
    """A results file of a third model is never shown as this model's (before: it filled the PaKA column)."""
    out, _ = export_dir
    files = {
        "base.json": eval_file("facebook/dinov2-with-registers-small", 40.0, 30.0),
        "paka.json": eval_file(str(out), 44.0, 34.0),
        "other.json": eval_file("someone/another-model", 60.0, 50.0),
    }
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    with pytest.raises(hub.MislabelledResultsError, match=r"other\.json measured 'someone/another-model'") as err:
        hub.render_model_card(out, "paka-org/x", eval_results=[tmp_path / name for name in files])
    assert "base.json" not in str(err.value) and "paka.json" not in str(err.value)
    assert isinstance(err.value, PaKAUserError)


def test_results_of_earlier_weights_in_the_same_folder_stop_the_card(export_dir, tmp_path, tiny_config):
    """Evaluated, then retrained into the same folder: the recorded hash no longer matches the weights."""
    out, _ = export_dir
    stale = tmp_path / "eval_old.json"
    stale.write_text(json.dumps(_hashed(str(out), hub.weights_sha256(out), 44.0, 34.0)))
    make_export_folder(out, tiny_config(registers=4), seed=7)  # the new run's weights
    with pytest.raises(hub.MislabelledResultsError, match=r"eval_old\.json measured .* with other weights"):
        hub.render_model_card(out, "paka-org/x", eval_results=[stale])
    # the same weights evaluated under another name (a copy of the folder, the Hub id) do count
    fresh = _hashed("/elsewhere/copy-of-out", hub.weights_sha256(out), 45.0, 35.0)
    card = hub.render_model_card(out, "paka-org/x", eval_results=[fresh])
    assert {r.metric_value for r in card.data.eval_results} == {45.0, 35.0}


def test_two_files_measuring_the_same_metric_stop_the_card(export_dir, tmp_path):
    """Two runs of one protocol for one model: the card cannot pick one (before: the later file won silently)."""
    out, _ = export_dir
    for name, linear in (("first.json", 41.0), ("rerun.json", 42.0)):
        (tmp_path / name).write_text(json.dumps(eval_file(str(out), linear, 31.0)))
    base = eval_file("facebook/dinov2-with-registers-small", 40.0, 30.0)
    with pytest.raises(hub.MislabelledResultsError, match=r"first\.json and .*rerun\.json both measure linear"):
        hub.render_model_card(out, "paka-org/x", eval_results=[base, tmp_path / "first.json", tmp_path / "rerun.json"])


def test_evaluation_report_records_the_weights_it_measured(export_dir, tmp_path):
    import hashlib

    from paka_hf.evaluation.results import EvaluationReport

    out, _ = export_dir
    report = EvaluationReport.for_model(out)
    assert report.model == str(out)
    assert report.model_sha256 == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    report.save(tmp_path / "eval.json")
    assert json.loads((tmp_path / "eval.json").read_text())["model_sha256"] == report.model_sha256
    assert EvaluationReport.for_model(tmp_path / "no-such-model").model_sha256 is None


def test_base_eval_results_force_the_base_column(export_dir):
    out, _ = export_dir
    card = hub.render_model_card(
        out,
        "paka-org/x",
        eval_results=[eval_file("paka-org/x", 45.0, 35.0)],
        base_eval_results=[eval_file("/some/local/copy/of/the/base", 41.0, 31.0)],
    )
    assert "| linear | CamVid | val | mIoU (linear) | 41.0 | 45.0 | +4.0 |" in card.text
    assert {r.metric_value for r in card.data.eval_results} == {45.0, 35.0}


def test_eval_results_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "x"}))
    with pytest.raises(ValueError, match="bad.json has no 'results' list"):
        hub.load_eval_results([bad])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        hub.load_eval_results([tmp_path / "missing.json"])


def test_redaction_of_training_config():
    import yaml

    redacted = hub.redact_secrets(yaml.safe_load(TRAINING_CONFIG))
    assert redacted["hub_token"] == "<redacted>" and redacted["learning_rate"] == 1e-5
    assert hub.redact_secrets({"nested": {"api_key": "k", "hub_token": None}}) == {
        "nested": {"api_key": "<redacted>", "hub_token": None}
    }


def test_the_card_template_is_package_data_found_through_importlib_resources():
    # A wheel holds only what setup.py declares: the template must be inside paka_hf and declared, or an
    # installed paka_hf cannot render a card (.ci/wheel_smoke.sh checks the built wheel itself).
    import ast
    import importlib.resources
    from fnmatch import fnmatch
    from pathlib import Path

    from paka_hf.hub.card import TEMPLATE_PATH, read_template

    packaged = importlib.resources.files("paka_hf.hub") / "templates" / "paka_model_card.md"
    assert TEMPLATE_PATH == packaged and packaged.is_file()
    assert read_template().startswith("---\n{{ card_data }}\n---")
    package_dir = Path(hub.__file__).resolve().parent
    template = Path(str(TEMPLATE_PATH)).resolve()
    assert template.is_relative_to(package_dir)

    root = package_dir.parents[1]
    setup_call = next(
        node
        for node in ast.walk(ast.parse((root / "setup.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    package_data = ast.literal_eval(next(k.value for k in setup_call.keywords if k.arg == "package_data"))
    relative = template.relative_to(package_dir).as_posix()
    assert any(fnmatch(relative, pattern) for pattern in package_data["paka_hf.hub"])


def test_read_template_reads_a_given_file_and_names_a_missing_one(tmp_path):
    from paka_hf.hub.card import read_template

    own = tmp_path / "card.md"
    own.write_text("---\n{{ card_data }}\n---\n# {{ model_id }}\n", encoding="utf-8")
    assert read_template(own) == own.read_text(encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="nothere.md"):
        read_template(tmp_path / "nothere.md")


def _set_base(out, base: str) -> None:
    import yaml

    config = yaml.safe_load((out / "training_config.yaml").read_text())
    config["model_name_or_path"] = base
    (out / "training_config.yaml").write_text(yaml.safe_dump(config))


def test_a_local_base_is_never_published_and_the_card_says_so(export_dir, tmp_path, caplog):
    out, _ = export_dir
    local_base = tmp_path / "shared" / "models" / "dinov2-small"
    local_base.mkdir(parents=True)
    _set_base(out, str(local_base))
    with caplog.at_level("WARNING", logger="paka_hf.hub.card"):
        card = hub.render_model_card(out, "paka-org/dinov2-paka-tiny")
    assert "shared/models" not in card.content and str(tmp_path) not in card.content
    assert card.data.base_model is None
    assert "It starts from a local checkpoint (its Hub id was not recorded)" in card.text
    assert "| `model_name_or_path` | a local checkpoint |" in card.text
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "--base_model ORG/NAME" in warnings[0].getMessage()
    # the hint evaluates this model only: there is no Hub id to evaluate the base by
    hint = re.findall(r"```bash\n(.*?)```", card.text, flags=re.S)[0]
    assert hint.count("scripts/evaluate.py") == 1 and "eval_results_base.json" not in card.text
    # --base_model names it; a path there would be published, so it is refused
    named = hub.render_model_card(out, "paka-org/dinov2-paka-tiny", base_model="facebook/dinov2-small")
    assert named.data.base_model == "facebook/dinov2-small" and "shared/models" not in named.content
    assert "It starts from `facebook/dinov2-small`" in named.text
    with pytest.raises(PaKAUserError, match="must be the base model's Hub id"):
        hub.render_model_card(out, base_model=str(local_base))


def test_a_local_base_that_records_its_hub_id_is_named_by_it(export_dir, tmp_path, tiny_config, caplog):
    from paka_hf.hub.card import hub_id_of_local_checkpoint

    out, _ = export_dir
    # a snapshot of the Hugging Face download cache: the folder's path names the model (it need not exist here)
    snapshot = tmp_path / "hf_home" / "hub" / "models--facebook--dinov2-with-registers-small" / "snapshots" / "9a1b"
    _set_base(out, str(snapshot))
    with caplog.at_level("WARNING", logger="paka_hf.hub.card"):
        card = hub.render_model_card(out, "paka-org/dinov2-paka-tiny")
    assert not caplog.records
    assert card.data.base_model == "facebook/dinov2-with-registers-small"
    assert "It starts from `facebook/dinov2-with-registers-small`" in card.text
    assert "| `model_name_or_path` | facebook/dinov2-with-registers-small |" in card.text
    assert "hf_home" not in card.content and "models--" not in card.content
    assert "--model_name_or_path facebook/dinov2-with-registers-small" in card.text  # the base's hint too
    # a symlink to such a snapshot, and a folder whose config.json records the id (transformers 4 wrote
    # _name_or_path; transformers 5 does not)
    snapshot.mkdir(parents=True)
    (tmp_path / "linked").symlink_to(snapshot)
    assert hub_id_of_local_checkpoint(tmp_path / "linked") == "facebook/dinov2-with-registers-small"
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({"model_type": "dinov2", "_name_or_path": "facebook/dinov2-base"}))
    assert hub_id_of_local_checkpoint(saved) == "facebook/dinov2-base"
    (saved / "config.json").write_text(json.dumps({"model_type": "dinov2", "_name_or_path": str(tmp_path)}))
    assert hub_id_of_local_checkpoint(saved) is None


def test_the_cards_evaluation_hint_runs_and_its_results_go_on_the_card(export_dir, tmp_path):
    import shlex

    import numpy as np
    from PIL import Image

    from paka_hf.commands import evaluate as evaluate_command
    from paka_hf.hub.card import HINT_CLASS_NAMES, HINT_DATA_DIR

    out, _ = export_dir
    repo = "paka-org/dinov2-paka-tiny"
    card = hub.render_model_card(out, repo)
    commands = re.findall(r"```bash\n(.*?)```", card.text, flags=re.S)[0].replace("\\\n", " ").splitlines()
    assert len(commands) == 2  # this model and its base (a Hub id), each one shell line
    argv = shlex.split(commands[0])
    assert argv[:2] == ["python", "scripts/evaluate.py"]
    output_file = argv[argv.index("--output_file") + 1]
    assert f"--eval_results {output_file} " in card.text.replace("`", " ")
    # the reader's data: a labelled folder in the layout the card describes, with as many classes as it names
    rng = np.random.default_rng(0)
    classes = HINT_CLASS_NAMES.split(",")
    data = tmp_path / "data"
    for split in ("train", "val"):
        for folder in ("images", "masks"):
            (data / split / folder).mkdir(parents=True)
        for i in range(3):
            mask = np.zeros((28, 28), np.uint8)
            mask[:, 14:], mask[20:, :], mask[:2, :2] = 1, len(classes) - 1, 255
            Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(
                data / split / "images" / f"{i}.png"
            )
            Image.fromarray(mask).save(data / split / "masks" / f"{i}.png")
    # run it as written, with the export folder for the repository id, this data folder and a results path in
    # tmp_path, plus settings small enough for a test
    results = tmp_path / output_file
    substitute = {repo: str(out), HINT_DATA_DIR: str(data), output_file: str(results)}
    fast = ["--input_size", "28", "--epochs", "1", "--num_clusters", "3", "--seeds", "0", "--augment_passes", "0"]
    evaluate_command.main([*(substitute.get(a, a) for a in argv[2:]), *fast, "--no_progress", "--device", "cpu"])
    measured = json.loads(results.read_text())
    assert {r["protocol"] for r in measured["results"]} == {"linear", "overcluster", "hummingbird"}
    with_results = hub.render_model_card(out, repo, eval_results=[results])
    assert len(with_results.data.eval_results) == len(measured["results"])
    assert "No evaluation results were attached" not in with_results.text
    linear = next(r for r in measured["results"] if r["protocol"] == "linear")
    assert f"| – | {linear['value']:.1f} | – |" in with_results.text  # the PaKA column, no base file given


def test_card_records_the_collapse_guards_measures_before_and_after(tmp_path, tiny_config):
    out = tmp_path / "out"
    make_export_folder(out, tiny_config())
    summary = json.loads((out / "training_summary.json").read_text())
    summary["feature_health"] = {
        "mean_patch_cosine": {"start": 0.5312, "end": 0.5504},
        "effective_rank": {"start": 17.55, "end": 16.9},
    }
    (out / "training_summary.json").write_text(json.dumps(summary))
    text = hub.render_model_card(out, "org/model").text
    assert "| `mean_patch_cosine` | 0.531 at the start → 0.550 at the end |" in text
    assert "| `effective_rank` | 17.550 at the start → 16.900 at the end |" in text
    assert "feature_health" not in text


def test_card_notes_give_hummingbirds_memory_bank_and_knn_search(export_dir, tmp_path):
    """The memory size and the k-NN backend (for the approximate index, its lists, probes and recall) are on the
    card, per model when the base and this model were searched differently; older files say what they recorded."""
    from paka_hf.hub.card import hummingbird_note

    out, _ = export_dir
    common = {"num_neighbors": 30, "temperature": 0.02, "memory_size": 10240, "memory_bank_size": 10240}
    base = eval_file("facebook/dinov2-with-registers-small", linear=40.5, retrieval=35.0)
    base["results"][1]["settings"] = {
        **common,
        "memory_sampling": "rare_class",
        "backend": "auto",
        "knn_backend_used": "faiss",
        "knn_exact": True,
        "knn_recall_at_k": None,
    }
    adapted = eval_file(str(out), linear=44.3, retrieval=39.0)
    adapted["results"][1]["settings"] = {
        **common,
        "memory_sampling": "rare_class",
        "backend": "faiss_ivf",
        "knn_backend_used": "faiss_ivf",
        "knn_exact": False,
        "ivf_nlist_used": 512,
        "ivf_nprobe_used": 32,
        "knn_recall_at_k": 0.9734,
        "knn_recall_queries": 1000,
    }
    text = hub.render_model_card(out, "paka-org/dinov2-paka-tiny", eval_results=[base, adapted]).text
    assert (
        "- *hummingbird* (Base, CamVid): memory bank 10,240 patches (memory_size=10240, rare_class sampling), "
        "exact k-NN (faiss), k=30, temperature=0.02" in text
    )
    assert (
        "- *hummingbird* (PaKA, CamVid): memory bank 10,240 patches (memory_size=10240, rare_class sampling), "
        "approximate k-NN (faiss_ivf, nlist=512, nprobe=32), recall@30=0.973 against exact search on 1000 queries, "
        "k=30, temperature=0.02" in text
    )
    # a file written before the search was recorded: the requested backend, and uniform sampling (the old rule)
    assert hummingbird_note({"memory_size": 64, "backend": "auto"}) == (
        "memory bank (memory_size=64, uniform sampling), k-NN backend=auto"
    )
    assert hummingbird_note({"memory_size": None, "memory_bank_size": 5, "knn_backend_used": "torch"}) == (
        "memory bank 5 patches (full), exact k-NN (torch)"
    )


# --- the card and model-index for every task the evaluation reports (segmentation, keypoint matching, depth) ---

BASE_ID = "facebook/dinov2-with-registers-small"


def _task_results(linear: float, warp: float, spair: float, rmse: float, abs_rel: float, delta1: float) -> list:
    """MetricResults of every metric type, built as the evaluation runner builds them."""
    from paka_hf.evaluation.correspondence import CorrespondenceConfig
    from paka_hf.evaluation.depth import DepthProbeConfig
    from paka_hf.evaluation.results import MetricResult
    from paka_hf.evaluation.spair import SPairConfig

    seg = dict(dataset_name="CamVid", dataset_type="camvid", split="val")
    nyu = dict(dataset_name="NYUv2", dataset_type="nyu_depth_v2", split="test", task_type="depth-estimation")
    depth_settings = {
        **DepthProbeConfig().to_dict(),
        "depth_key": "rawDepths",
        "train_images": 795,
        "test_images": 654,
    }
    return [
        MetricResult(protocol="linear", metric_name="mIoU (linear)", value=linear, settings={"epochs": 25}, **seg),
        MetricResult(
            protocol="linear", metric_name="pixel accuracy (linear)", value=80.0, metric_type="pixel_accuracy", **seg
        ),
        MetricResult(
            protocol="warp",
            dataset_name="my_images",
            dataset_type="folder",
            split="all",
            metric_name="PCK@2 patches (known warp)",
            value=warp,
            settings=CorrespondenceConfig().to_dict(),
            task_type="keypoint-matching",
            metric_type="pck",
        ),
        MetricResult(
            protocol="spair",
            dataset_name="SPair-71k",
            dataset_type="spair-71k",
            split="test",
            metric_name="PCK@0.1 bbox (mean over categories)",
            value=spair,
            settings={
                **SPairConfig().to_dict(),
                "num_pairs": 12234,
                "per_category_pck": {"aeroplane": spair + 10.0, "bicycle": spair - 10.0},
            },
            task_type="keypoint-matching",
            metric_type="pck",
        ),
        MetricResult(
            protocol="depth", metric_name="RMSE (m)", value=rmse, metric_type="rmse", settings=depth_settings, **nyu
        ),
        MetricResult(protocol="depth", metric_name="AbsRel", value=abs_rel, metric_type="abs_rel", **nyu),
        MetricResult(protocol="depth", metric_name="δ1", value=delta1, metric_type="delta1", **nyu),
    ]


def _report(model: str, results: list) -> dict:
    from paka_hf.evaluation.results import EvaluationReport

    return EvaluationReport(model=model, results=results).to_dict()


def test_card_has_a_table_per_task_with_units_and_lower_is_better_marked(export_dir):
    out, _ = export_dir
    base = _report(BASE_ID, _task_results(40.5, 55.0, 30.04, 0.5123, 0.150, 80.04))
    adapted = _report(str(out), _task_results(44.3, 61.25, 33.0, 0.4731, 0.1321, 83.46))
    text = hub.render_model_card(out, "paka-org/x", eval_results=[base, adapted]).text

    seg, kp, depth = (
        text.index(f"### {name}") for name in ("Semantic Segmentation", "Keypoint Matching", "Depth Estimation")
    )
    assert seg < kp < depth < text.index("## Pictures")
    # segmentation rows as before, one decimal in percent
    assert "| linear | CamVid | val | mIoU (linear) | 40.5 | 44.3 | +3.8 |" in text[seg:kp]
    assert "| linear | CamVid | val | pixel accuracy (linear) | 80.0 | 80.0 | +0.0 |" in text[seg:kp]
    assert "mIoU in percent; pixel accuracy in percent." in text[seg:kp]
    # keypoint matching: both correspondence protocols in one table
    assert "| warp | my_images | all | PCK@2 patches (known warp) | 55.0 | 61.2 | +6.2 |" in text[kp:depth]
    assert "| spair | SPair-71k | test | PCK@0.1 bbox (mean over categories) | 30.0 | 33.0 | +3.0 |" in text[kp:depth]
    # depth: metres and ratios keep three decimals, the lower-is-better ones carry ↓ and a negative Δ
    assert "| depth | NYUv2 | test | RMSE (m) ↓ | 0.512 | 0.473 | -0.039 |" in text[depth:]
    assert "| depth | NYUv2 | test | AbsRel ↓ | 0.150 | 0.132 | -0.018 |" in text[depth:]
    assert "| depth | NYUv2 | test | δ1 | 80.0 | 83.5 | +3.4 |" in text[depth:]
    assert "RMSE in metres" in text[depth:] and "↓: lower is better (a negative Δ is an improvement)." in text[depth:]
    assert "↓" not in text[seg:depth] and "Numbers are in percent" not in text
    # the settings behind the new protocols' numbers
    assert (
        "- *warp*: input_size=[448, 448], thresholds=[1.0, 2.0, 4.0], crop_fraction=[0.6, 1.0], flip_p=0.5, "
        "max_rotation=10.0, perspective=0.05, border_patches=0.5, seed=0" in text
    )
    assert (
        "- *spair*: split=test, layout=large, input_size=[448, 448], resize=pad, alpha=0.1, source_sampling=bilinear, "
        "upsample=1, num_pairs=12234" in text
    )
    assert (
        "- *depth*: crop=eigen, num_bins=256, use_cls_token=False, epochs=50, lr=0.0003, min_depth=0.001, "
        "max_depth=10.0, depth_key=rawDepths, train_images=795, test_images=654" in text
    )
    # SPair-71k's categories, whose mean is the headline, in a table of their own under the keypoint table
    categories = text.index("PCK@0.1 bbox (mean over categories) per category (SPair-71k, test; its row")
    assert kp < categories < depth
    assert "| aeroplane | 40.0 | 43.0 | +3.0 |\n| bicycle | 20.0 | 23.0 | +3.0 |" in text[categories:depth]


def test_model_index_gives_each_metric_its_task_and_says_which_are_lower_is_better(export_dir, tmp_path):
    out, _ = export_dir
    adapted = _report(str(out), _task_results(44.3, 61.25, 33.0, 0.4731, 0.1321, 83.46))
    card = hub.render_model_card(out, "paka-org/x", eval_results=[adapted])
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")

    got = {(r.metric_config, r.metric_type, r.dataset_name): r for r in loaded.data.eval_results}
    assert len(got) == 7
    expected = {
        ("linear", "mean_iou", "CamVid"): ("semantic-segmentation", "Semantic Segmentation", "mIoU (linear)", 44.3),
        ("linear", "pixel_accuracy", "CamVid"): (
            "semantic-segmentation",
            "Semantic Segmentation",
            "pixel accuracy (linear)",
            80.0,
        ),
        ("warp", "pck", "my_images"): ("keypoint-matching", "Keypoint Matching", "PCK@2 patches (known warp)", 61.25),
        ("spair", "pck", "SPair-71k"): (
            "keypoint-matching",
            "Keypoint Matching",
            "PCK@0.1 bbox (mean over categories)",
            33.0,
        ),
        ("depth", "rmse", "NYUv2"): ("depth-estimation", "Depth Estimation", "RMSE (m) (lower is better)", 0.4731),
        ("depth", "abs_rel", "NYUv2"): ("depth-estimation", "Depth Estimation", "AbsRel (lower is better)", 0.1321),
        ("depth", "delta1", "NYUv2"): ("depth-estimation", "Depth Estimation", "δ1", 83.46),
    }
    for key, (task_type, task, metric_name, value) in expected.items():
        result = got[key]
        assert (result.task_type, result.task_name, result.metric_name, result.metric_value) == (
            task_type,
            task,
            metric_name,
            value,
        ), key
    depth = got[("depth", "rmse", "NYUv2")]
    assert (depth.dataset_type, depth.dataset_split) == ("nyu_depth_v2", "test")
    assert depth.metric_args["crop"] == "eigen" and depth.metric_args["betas"] == [0.9, 0.99]
    # the Hub's model-index: one result per (task, dataset), its metrics together
    index = loaded.data.to_dict()["model-index"][0]["results"]
    tasks = [(r["task"]["type"], r["dataset"]["name"], [m["type"] for m in r["metrics"]]) for r in index]
    assert tasks == [
        ("semantic-segmentation", "CamVid", ["mean_iou", "pixel_accuracy"]),
        ("keypoint-matching", "my_images", ["pck"]),
        ("keypoint-matching", "SPair-71k", ["pck"]),
        ("depth-estimation", "NYUv2", ["rmse", "abs_rel", "delta1"]),
    ]


def test_the_card_shows_new_metrics_only_for_the_model_that_measured_them(export_dir, tmp_path):
    """Depth and keypoint numbers follow the card's rule: the base's fill its column, never the model-index, and a
    third model's stop the push."""
    out, _ = export_dir
    base = _report(BASE_ID, _task_results(40.5, 55.0, 30.04, 0.5123, 0.150, 80.04))
    only_seg = _report(str(out), _task_results(44.3, 61.25, 33.0, 0.4731, 0.1321, 83.46)[:2])
    card = hub.render_model_card(out, "paka-org/x", eval_results=[base, only_seg])
    assert {r.metric_type for r in card.data.eval_results} == {"mean_iou", "pixel_accuracy"}
    assert "| depth | NYUv2 | test | RMSE (m) ↓ | 0.512 | – | – |" in card.text
    assert "| spair | SPair-71k | test | PCK@0.1 bbox (mean over categories) | 30.0 | – | – |" in card.text
    assert "| aeroplane | 40.0 | – | – |" in card.text

    other = _report("someone/another-model", _task_results(1, 2, 3, 4, 5, 6)[4:])
    (tmp_path / "other_depth.json").write_text(json.dumps(other))
    with pytest.raises(hub.MislabelledResultsError, match=r"other_depth\.json measured 'someone/another-model'"):
        hub.render_model_card(out, "paka-org/x", eval_results=[base, only_seg, tmp_path / "other_depth.json"])


def test_a_metric_type_the_card_does_not_know_keeps_its_task_and_counts_as_higher_is_better(export_dir):
    """Read from the code: an unknown metric type is not refused; it keeps the task its file records (a table of
    its own, after the known tasks), four significant digits, no ↓, and its name unchanged in the model-index."""
    from paka_hf.evaluation.results import MetricResult

    out, _ = export_dir
    custom = MetricResult(
        protocol="mine",
        dataset_name="Mine",
        dataset_type="mine",
        split="val",
        metric_name="F-score",
        value=0.012345,  # the results JSON keeps 4 decimals
        task_type="edge-detection",
        metric_type="f_score",
    )
    assert custom.higher_is_better
    depth = _task_results(44.3, 61.25, 33.0, 0.4731, 0.1321, 83.46)[4]
    card = hub.render_model_card(out, "paka-org/x", eval_results=[_report(str(out), [custom, depth])])
    text = card.text
    assert text.index("### Depth Estimation") < text.index("### Edge Detection")
    assert "`f_score` as recorded." in text and "| mine | Mine | val | F-score | – | 0.0123 | – |" in text
    (result,) = [r for r in card.data.eval_results if r.metric_type == "f_score"]
    assert (result.task_type, result.task_name, result.metric_name, result.metric_value) == (
        "edge-detection",
        "Edge Detection",
        "F-score",
        0.0123,
    )
