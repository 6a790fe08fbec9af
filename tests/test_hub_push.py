"""Pushes against a real HTTP peer: the loopback Hub stand-in of tests/hub_server.py.

``huggingface_hub`` reads ``HF_ENDPOINT`` once at import, so the fixture both sets the environment
variable (``paka_hf.hub`` reads it when it runs, see ``resolve_endpoint``) and patches the import-time
constants that the download path of ``transformers`` uses (``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``),
resets ``transformers``' process-wide ``HfApi`` (it keeps the endpoint it was built with) and gives each test
its own ``HF_HOME`` (download cache, tokens), see ``hub_helpers.go_online``. It also turns off offline mode
(tests/conftest.py sets ``HF_HUB_OFFLINE=1`` for the rest of the suite) and Xet (the stand-in takes binary
files over classic Git-LFS).
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from transformers import AutoImageProcessor, AutoModel

from hub_helpers import SECRET, TOKEN, go_online, eval_file, make_export_folder
from hub_server import HubStandIn
from paka_hf import hub, trainer_hub

REPO = "paka-org/dinov2-paka-tiny"
EXPECTED = {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "training_config.yaml",
            "pictures/pca.png"}


@pytest.fixture
def server(monkeypatch, tmp_path):
    with HubStandIn(max_lifetime_s=120) as stand_in:
        go_online(monkeypatch, stand_in.url, home=tmp_path / "hf_home")  # per-test cache, no stray stored token
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield stand_in


@pytest.fixture
def out(tmp_path, tiny_config):
    folder = tmp_path / "out"
    make_export_folder(folder, tiny_config(registers=4))
    (folder / "pictures").mkdir()
    from PIL import Image

    Image.new("RGB", (16, 8), "red").save(folder / "pictures" / "pca.png")
    (folder / "optimizer.pt").write_bytes(b"pickle that must never be uploaded")  # noise a run leaves behind
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "model.safetensors").write_bytes(b"old")
    return folder


def _push(out, **kwargs):
    kwargs.setdefault("token", TOKEN)
    kwargs.setdefault("backoff_s", 0.01)
    return hub.push_to_hub(out, REPO, **kwargs)


def test_create_push_and_exact_file_set(server, out):
    info = _push(out, private=True)
    files = server.snapshot(REPO)
    assert set(files) == EXPECTED | {".gitattributes"}  # .gitattributes: made by the Hub at creation
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert files["README.md"] == (out / "README.md").read_bytes()
    assert SECRET.encode() not in files["training_config.yaml"]
    assert b"hub_token: <redacted>" in files["training_config.yaml"]
    assert server.repos[REPO].private is True
    assert info.oid == server.head(REPO)
    # one commit, and model.safetensors took the LFS route while text files were regular
    assert server.count("POST", r"/commit/main$") == 1
    assert server.count("PUT", r"^/lfs-upload/") == 2  # model.safetensors and pictures/pca.png
    commits = HfApi(endpoint=server.url).list_repo_commits(REPO, token=TOKEN)
    assert [c.title for c in commits] == [hub.DEFAULT_COMMIT_MESSAGE, "initial commit"]


def test_push_again_makes_a_new_commit_with_the_same_files(server, out, tiny_config):
    first = _push(out)
    make_export_folder(out, tiny_config(registers=4), seed=1)  # new weights, same file set
    second = _push(out, commit_message="Second run")
    assert second.oid != first.oid and server.head(REPO) == second.oid
    assert set(server.snapshot(REPO)) == EXPECTED | {".gitattributes"}
    assert server.snapshot(REPO)["model.safetensors"] == (out / "model.safetensors").read_bytes()
    titles = [c.title for c in HfApi(endpoint=server.url).list_repo_commits(REPO, token=TOKEN)]
    assert titles == ["Second run", hub.DEFAULT_COMMIT_MESSAGE, "initial commit"]


@pytest.mark.parametrize("failure", ["commit-500", "commit-dropped", "lfs-upload-dropped"])
def test_failure_mid_push_leaves_remote_exactly_as_before(server, out, tiny_config, failure):
    _push(out)
    before_head, before_files = server.head(REPO), server.snapshot(REPO)
    make_export_folder(out, tiny_config(registers=4), seed=2)
    (out / "pictures" / "pca.png").unlink()
    if failure == "commit-500":
        server.fail("POST", r"/commit/", status=500, times=-1)
    elif failure == "commit-dropped":
        server.fail("POST", r"/commit/", status=0, times=-1)
    else:  # huggingface_hub retries LFS PUTs itself (1 s back-off) -> fail once, then the commit persistently
        server.fail("PUT", r"^/lfs-upload/", status=0, times=1)
        server.fail("POST", r"/commit/", status=503, times=-1)
    with pytest.raises(Exception) as excinfo:
        _push(out, max_retries=2)
    assert not isinstance(excinfo.value, hub.HubAuthenticationError)
    assert server.head(REPO) == before_head
    assert server.snapshot(REPO) == before_files
    assert server.count("POST", r"/commit/") >= 3 + 1  # 1 good push + 1 try + 2 retries


def test_transient_failures_are_retried(server, out, caplog):
    server.fail("POST", r"/api/repos/create", status=502, times=1)
    server.fail("POST", r"/commit/", status=503, times=2)
    with caplog.at_level(logging.WARNING, logger="paka_hf.hub"):
        info = _push(out)
    assert server.head(REPO) == info.oid
    assert set(server.snapshot(REPO)) == EXPECTED | {".gitattributes"}
    assert caplog.text.count("retry") == 3


def test_lost_commit_answer_is_retried_without_a_duplicate_commit(server, out, tiny_config):
    """The commit lands but its answer is lost: the retry finds nothing changed and reports the same commit."""
    _push(out)
    make_export_folder(out, tiny_config(registers=4), seed=3)
    server.fail("POST", r"/commit/", after=True, times=1)
    info = _push(out, commit_message="Update")
    titles = [c.title for c in HfApi(endpoint=server.url).list_repo_commits(REPO, token=TOKEN)]
    assert titles == ["Update", hub.DEFAULT_COMMIT_MESSAGE, "initial commit"]  # exactly one new commit
    assert info.oid == server.head(REPO)
    assert server.snapshot(REPO)["model.safetensors"] == (out / "model.safetensors").read_bytes()


def test_gateway_error_page_is_retried(server, out):
    """A 502 with an HTML body (a proxy, not the Hub) on the README check is transient too."""
    server.fail("POST", r"/api/validate-yaml", status=502, times=1, body=b"<html>502 Bad Gateway</html>")
    info = _push(out)
    assert server.head(REPO) == info.oid and server.count("POST", r"/api/validate-yaml") == 2


@pytest.mark.parametrize("case", ["no-token", "wrong-token", "foreign-namespace"])
def test_authentication_errors_say_how_to_log_in(server, out, case, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    kwargs = {"token": SECRET if case == "wrong-token" else (False if case == "no-token" else TOKEN)}
    repo = "someone-else/model" if case == "foreign-namespace" else REPO
    with pytest.raises(hub.HubAuthenticationError) as excinfo:
        hub.push_to_hub(out, repo, backoff_s=0.01, **kwargs)
    message = str(excinfo.value)
    assert "hf auth login" in message and "HF_TOKEN" in message
    assert ("HTTP 403" if case == "foreign-namespace" else "HTTP 401") in message
    assert REPO not in server.repos and "someone-else/model" not in server.repos
    captured = capsys.readouterr()
    for text in (message, captured.out, captured.err, caplog.text):
        assert SECRET not in text and TOKEN not in text


def test_token_never_in_output_or_logs(server, out, capfd, caplog, monkeypatch):
    from huggingface_hub.utils import logging as hf_logging

    monkeypatch.setattr(constants, "HF_DEBUG", True)  # huggingface_hub logs every request as a curl command
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # token from the environment, as a CI job would have it
    caplog.set_level(logging.DEBUG)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_debug()
    try:
        hub.push_to_hub(out, REPO, backoff_s=0.01)
    finally:
        hf_logging.set_verbosity(previous)
    captured = capfd.readouterr()  # file-descriptor level: also catches handlers bound to the real stderr
    logged = captured.err + caplog.text
    assert "curl" in logged and "/commit/main" in logged and "<TOKEN>" in logged  # requests were logged...
    for text in (captured.out, captured.err, caplog.text):
        assert TOKEN not in text  # ...without the token


def test_pushed_model_loads_with_automodel_and_matches_local(server, out, tmp_path, tiny_config):
    base = eval_file("facebook/dinov2-with-registers-small", linear=40.0, retrieval=30.0)
    adapted = eval_file(REPO, linear=45.0, retrieval=33.5)
    _push(out, eval_results=[base, adapted])

    cache = tmp_path / "cache"
    remote = AutoModel.from_pretrained(REPO, cache_dir=cache).eval()  # downloads from the stand-in
    local = AutoModel.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(REPO, cache_dir=cache)
    pixels = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        assert torch.equal(remote(pixel_values=pixels).last_hidden_state, local(pixel_values=pixels).last_hidden_state)
    assert processor.crop_size == {"height": 224, "width": 224}
    assert any(p.name == "model.safetensors" for p in cache.rglob("*")) and not any(cache.rglob("*.bin"))

    card = ModelCard.load(REPO)  # README.md fetched from the stand-in
    results = {(r.metric_config, r.metric_value) for r in card.data.eval_results}
    assert results == {("linear", 45.0), ("hummingbird", 33.5)}
    assert "| linear | CamVid | val | mIoU (linear) | 40.0 | 45.0 | +5.0 |" in card.text


def test_push_to_a_branch(server, out):
    _push(out)
    main_head = server.head(REPO)
    info = _push(out, revision="experiment", commit_message="Try on a branch")
    assert server.head(REPO) == main_head and server.head(REPO, "experiment") == info.oid


def test_regular_upload_route_with_xet_enabled(monkeypatch, tmp_path, out):
    """With lfs=False the stand-in takes every file inline, so the default client (Xet on) works unpatched."""
    with HubStandIn(lfs=False, max_lifetime_s=60) as stand_in:
        go_online(monkeypatch)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
        hub.push_to_hub(out, REPO, token=TOKEN, endpoint=stand_in.url, backoff_s=0.01)
        assert stand_in.count("PUT", "") == 0 and stand_in.count("POST", r"lfs") == 0
        assert stand_in.snapshot(REPO)["model.safetensors"] == (out / "model.safetensors").read_bytes()


def test_stopped_stand_in_answers_nothing_on_pooled_connections(monkeypatch):
    """huggingface_hub pools keep-alive connections process-wide: a stopped stand-in must close them, or it
    would go on answering (with its own repositories) requests meant for the URL of a later test."""
    import httpx2
    from huggingface_hub.utils import get_session

    go_online(monkeypatch)
    session, auth = get_session(), {"Authorization": f"Bearer {TOKEN}"}
    with HubStandIn(max_lifetime_s=30) as stand_in:
        url = stand_in.url
        assert session.get(f"{url}/api/whoami-v2", headers=auth).status_code == 200  # leaves a pooled connection
    with pytest.raises(httpx2.TransportError):
        session.get(f"{url}/api/whoami-v2", headers=auth)


def test_go_online_resets_transformers_hub_client(server, monkeypatch):
    """transformers resolves ``main`` with one process-wide HfApi whose endpoint is fixed when it is built."""
    from transformers.utils import hub as transformers_hub

    assert transformers_hub.hf_api().endpoint == server.url
    with HubStandIn(max_lifetime_s=30) as other:
        go_online(monkeypatch, other.url)
        assert transformers_hub.hf_api().endpoint == other.url


def test_missing_files_are_reported_before_anything_is_sent(server, out):
    (out / "training_config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="training_config.yaml"):
        _push(out)
    assert server.requests == []


def test_push_from_training_args(server, out):
    from types import SimpleNamespace

    args = SimpleNamespace(push_to_hub=True, hub_model_id=REPO, hub_strategy="end", hub_private_repo=False,
                           hub_token=TOKEN, hub_revision=None)
    info = trainer_hub.push_from_training_args(out, args, eval_results=[eval_file(REPO, 41.0, 31.0)], backoff_s=0.01)
    assert server.head(REPO) == info.oid
    assert "End of training" == HfApi(endpoint=server.url).list_repo_commits(REPO, token=TOKEN)[0].title


def test_training_callback_and_final_push_end_to_end(server, tmp_path, tiny_config):
    """every_save pushes the exported student at each save; the final push after evaluation adds results."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hub_helpers import TRAINING_CONFIG

    run = tmp_path / "run"
    run.mkdir()
    (run / "training_config.yaml").write_text(TRAINING_CONFIG)
    torch.manual_seed(0)
    student = AutoModel.from_config(tiny_config()).eval()
    args = TrainingArguments(output_dir=str(run), push_to_hub=True, hub_model_id=REPO, hub_strategy="every_save",
                             hub_token=TOKEN, report_to=[])
    callback = trainer_hub.HubPushCallback.from_training_args(
        args, export_fn=lambda d: hub.save_backbone(student, d), backoff_s=0.01)
    state = TrainerState()
    for step in (5, 10):
        state.global_step = step
        with torch.no_grad():
            student.embeddings.cls_token.add_(1.0)  # "training" changes the weights between saves
        callback.on_save(args, state, TrainerControl())
    assert len(callback.pushes) == 2
    assert not (run / "README.md").exists()  # in-progress pushes stage their files outside the run folder

    hub.save_backbone(student, run)  # final export, then evaluation, then the final push
    info = trainer_hub.push_from_training_args(run, args, eval_results=[eval_file(REPO, 44.0, 35.0)], backoff_s=0.01)
    titles = [c.title for c in HfApi(endpoint=server.url).list_repo_commits(REPO, token=TOKEN)]
    assert titles == ["End of training", "Training in progress, step 10", "Training in progress, step 5",
                      "initial commit"]
    assert info.oid == server.head(REPO)
    card = ModelCard.load(REPO)
    assert card.data.pipeline_tag == "image-feature-extraction" and card.data.eval_results[0].metric_value == 44.0
    assert server.snapshot(REPO)["model.safetensors"] == (run / "model.safetensors").read_bytes()


def _round_trip(out, tmp_path, endpoint: str) -> None:
    """Push to a new private repo of the token's user, list, download, compare outputs, delete the repo."""
    import uuid

    api = HfApi(endpoint=endpoint)
    user = api.whoami()["name"]
    repo = f"{user}/paka-hf-test-{uuid.uuid4().hex[:8]}"
    try:
        hub.push_to_hub(out, repo, private=True, endpoint=endpoint)
        assert set(api.list_repo_files(repo)) == EXPECTED | {".gitattributes"}
        local_dir = api.snapshot_download(repo, local_dir=tmp_path / "download")
        remote = AutoModel.from_pretrained(local_dir).eval()
        local = AutoModel.from_pretrained(out).eval()
        pixels = torch.randn(1, 3, 56, 56)
        with torch.no_grad():
            assert torch.equal(remote(pixel_values=pixels).last_hidden_state,
                               local(pixel_values=pixels).last_hidden_state)
    finally:
        api.delete_repo(repo, missing_ok=True)
    assert not api.repo_exists(repo)


def test_round_trip_helper_on_the_stand_in(server, out, tmp_path, monkeypatch):
    """The exact code of the real-Hub test, run against the stand-in (token from HF_TOKEN, as there)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    server.orgs.clear()  # the repo goes under the token's own user, as on the real Hub
    _round_trip(out, tmp_path, server.url)
    assert server.repos == {}


@pytest.mark.skipif(not os.environ.get("HF_TOKEN"), reason="real-Hub test: set HF_TOKEN (and have network) to run it")
def test_real_hub_round_trip(out, tmp_path, monkeypatch):
    """Against huggingface.co itself, with the token in HF_TOKEN (needs network and write access)."""
    go_online(monkeypatch)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    _round_trip(out, tmp_path, constants._HF_DEFAULT_ENDPOINT)


def test_trainer_with_mixin_pushes_paka_files_only(server, tmp_path, tiny_config):
    """A real Trainer run: every_save pushes go through paka_hf.hub, never Trainer's folder upload or card."""
    from torch import nn
    from transformers import Trainer, TrainingArguments

    from hub_helpers import TRAINING_CONFIG

    class Wrapper(nn.Module):  # stands in for the PaKA training module: backbone + a loss
        def __init__(self):
            super().__init__()
            self.backbone = AutoModel.from_config(tiny_config())

        def forward(self, pixel_values):
            return {"loss": self.backbone(pixel_values=pixel_values).last_hidden_state.pow(2).mean()}

    class ToyTrainer(trainer_hub.HubPushMixin, Trainer):
        def export_backbone(self, output_dir):
            hub.save_backbone(self.model.backbone, output_dir)

    run = tmp_path / "run"
    run.mkdir()
    (run / "training_config.yaml").write_text(TRAINING_CONFIG)
    args = TrainingArguments(output_dir=str(run), push_to_hub=True, hub_model_id=REPO, hub_strategy="every_save",
                             hub_token=TOKEN, max_steps=2, save_steps=1, per_device_train_batch_size=2,
                             learning_rate=1e-2, report_to=[], use_cpu=True, disable_tqdm=True, save_only_model=True)
    data = [{"pixel_values": torch.randn(3, 28, 28)} for _ in range(4)]
    trainer = ToyTrainer(model=Wrapper(), args=args, train_dataset=data)
    trainer.train()
    info = trainer.push_to_hub(eval_results=[eval_file(REPO, 44.0, 35.0)], backoff_s=0.01)

    titles = [c.title for c in HfApi(endpoint=server.url).list_repo_commits(REPO, token=TOKEN)]
    assert titles == ["End of training", "Training in progress, step 2", "Training in progress, step 1",
                      "initial commit"]
    assert info.oid == server.head(REPO)
    files = server.snapshot(REPO)
    assert set(files) == {".gitattributes", "README.md", "config.json", "model.safetensors",
                          "preprocessor_config.json", "training_config.yaml"}
    assert b"pipeline_tag: image-feature-extraction" in files["README.md"]
    assert b"generated_from_trainer" not in files["README.md"]
    remote = AutoModel.from_pretrained(REPO, cache_dir=tmp_path / "cache").eval()
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(remote(pixel_values=pixels).last_hidden_state,
                           trainer.model.backbone.eval()(pixel_values=pixels).last_hidden_state)
