"""Export folder and model card: safetensors only, card metadata and eval results round-trip, snippet runs."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from hub_helpers import SECRET, TRAINING_CONFIG, eval_file, make_export_folder
from paka_hf import hub


@pytest.fixture
def export_dir(tmp_path, tiny_config):
    out = tmp_path / "out"
    model = make_export_folder(out, tiny_config(registers=4))
    return out, model


def test_save_backbone_writes_loadable_safetensors_only(tmp_path, tiny_config):
    from paka_hf.backbones import PatchBackbone

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
        assert torch.equal(loaded(pixel_values=pixels).last_hidden_state,
                           backbone.model(pixel_values=pixels).last_hidden_state)


def test_save_backbone_rejects_non_dinov2(tmp_path):
    with pytest.raises(TypeError, match="vision model of a supported family"):
        hub.save_backbone(torch.nn.Linear(2, 2), tmp_path)


def test_card_metadata_results_and_round_trip(export_dir, tmp_path):
    out, _ = export_dir
    base = eval_file("facebook/dinov2-with-registers-small", linear=40.5, retrieval=35.0)
    adapted = eval_file(str(out), linear=44.3, retrieval=39.0)
    (tmp_path / "base.json").write_text(json.dumps(base))
    (out / "eval_results.json").write_text(json.dumps(adapted))  # found in the output folder by itself

    card = hub.render_model_card(out, "paka-org/dinov2-paka-tiny", eval_results=[tmp_path / "base.json",
                                                                                   out / "eval_results.json"])
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
        "semantic-segmentation", "camvid", "CamVid", "val")
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


def test_split_eval_results_dedupes_and_finds_the_base():
    base = eval_file("facebook/dinov2-with-registers-small", 40.0, 30.0)
    first, rerun = eval_file("out/", 41.0, 31.0), eval_file("out/", 42.0, 32.0)
    b, a = hub.split_eval_results([base, first, rerun], base_model="facebook/dinov2-with-registers-small")
    assert [e["value"] for e in b] == [40.0, 30.0]
    assert [e["value"] for e in a] == [42.0, 32.0]  # the re-run replaces the first run


def test_base_eval_results_force_the_base_column(export_dir):
    out, _ = export_dir
    card = hub.render_model_card(out, "paka-org/x", eval_results=[eval_file("paka-org/x", 45.0, 35.0)],
                                 base_eval_results=[eval_file("/some/local/copy/of/the/base", 41.0, 31.0)])
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
        "nested": {"api_key": "<redacted>", "hub_token": None}}


# ----- during training -----


class _State(SimpleNamespace):
    pass


def _args(output_dir, **kw):
    base = dict(output_dir=str(output_dir), push_to_hub=True, hub_model_id="paka-org/run", hub_strategy="every_save",
                hub_private_repo=True, hub_token=SECRET, hub_revision=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_callback_every_save_pushes_exported_backbone(tmp_path, tiny_config):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    out = tmp_path / "run"
    out.mkdir()
    (out / "training_config.yaml").write_text(TRAINING_CONFIG)
    torch.manual_seed(0)
    student = AutoModel.from_config(tiny_config()).eval()
    calls = []

    def fake_push(folder, repo_id, **kwargs):
        folder = Path(folder)
        calls.append(dict(repo_id=repo_id, files=sorted(p.name for p in folder.iterdir()), **kwargs))
        return f"commit-{len(calls)}"

    args = TrainingArguments(output_dir=str(out), push_to_hub=True, hub_model_id="paka-org/run",
                             hub_strategy="every_save", hub_private_repo=True, report_to=[])
    callback = hub.HubPushCallback.from_training_args(
        args, export_fn=lambda d: hub.save_backbone(student, d), push_fn=fake_push)
    assert "token" not in repr(callback)
    state = TrainerState()
    state.global_step = 7
    callback.on_save(args, state, TrainerControl())
    assert callback.pushes == ["commit-1"]
    (call,) = calls
    assert call["repo_id"] == "paka-org/run" and call["private"] is True
    assert call["commit_message"] == "Training in progress, step 7"
    assert call["files"] == sorted([*hub.EXPORT_FILES, "training_config.yaml"])

    state.is_world_process_zero = False  # other ranks never push
    callback.on_save(args, state, TrainerControl())
    assert len(calls) == 1


def test_callback_end_strategy_and_disabled(tmp_path):
    pushed = []
    cb = hub.HubPushCallback.from_training_args(_args(tmp_path, hub_strategy="end"),
                                                push_fn=lambda *a, **k: pushed.append(a))
    cb.on_save(_args(tmp_path, hub_strategy="end"), _State(global_step=1, is_world_process_zero=True), None)
    assert pushed == []
    assert hub.HubPushCallback.from_training_args(_args(tmp_path, push_to_hub=False)) is None
    assert hub.push_from_training_args(tmp_path, _args(tmp_path, push_to_hub=False)) is None


def test_training_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match="'every_save'.*'end'"):
        hub.HubPushCallback.from_training_args(_args(tmp_path, hub_strategy="checkpoint"))
    with pytest.raises(ValueError, match="pickles"):
        hub.HubPushCallback("paka-org/run", strategy="all_checkpoints")
    with pytest.raises(ValueError, match="hub_model_id"):
        hub.push_from_training_args(tmp_path, _args(tmp_path, hub_model_id=None))


def test_callback_without_export_fn_needs_a_plain_checkpoint(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "config.json").write_text(json.dumps({"model_type": "paka_training_module"}))
    cb = hub.HubPushCallback("paka-org/run", push_fn=lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="export_fn"):
        cb.on_save(_args(out), _State(global_step=3, is_world_process_zero=True), None)


def test_failed_intermediate_push_does_not_stop_training(tmp_path, tiny_config, caplog):
    out = tmp_path / "run"
    out.mkdir()
    student = AutoModel.from_config(tiny_config())

    def broken_push(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    def auth_push(*args, **kwargs):
        raise hub.HubAuthenticationError("log in")

    cb = hub.HubPushCallback("paka-org/run", export_fn=lambda d: hub.save_backbone(student, d), push_fn=broken_push)
    cb.on_save(_args(out), _State(global_step=2, is_world_process_zero=True), None)
    assert cb.pushes == [] and "training continues" in caplog.text
    cb.push_fn = auth_push
    with pytest.raises(hub.HubAuthenticationError):
        cb.on_save(_args(out), _State(global_step=4, is_world_process_zero=True), None)
