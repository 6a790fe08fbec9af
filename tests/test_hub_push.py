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

import json
import logging
import os

import huggingface_hub.lfs
import pytest
import torch
from hub_helpers import SECRET, TOKEN, eval_file, go_online, make_export_folder
from hub_server import HubStandIn
from huggingface_hub import HfApi, ModelCard, constants
from transformers import AutoImageProcessor, AutoModel

from paka_hf import hub
from paka_hf.utils.errors import PaKAUserError

REPO = "paka-org/dinov2-paka-tiny"
BASE = "facebook/dinov2-with-registers-small"  # model_name_or_path of hub_helpers.TRAINING_CONFIG
EXPECTED = {
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "README.md",
    "training_config.yaml",
    "pictures/pca.png",
}


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
    assert files["README.md"].startswith(b"---\n") and b"# paka-org/dinov2-paka-tiny" in files["README.md"]
    assert not (out / "README.md").exists()  # the card goes into the upload, never into the output folder
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
    assert isinstance(excinfo.value, PaKAUserError) and isinstance(excinfo.value, PermissionError)
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
            assert torch.equal(
                remote(pixel_values=pixels).last_hidden_state, local(pixel_values=pixels).last_hidden_state
            )
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


# ----- privacy is the user's -----


@pytest.mark.parametrize("private, expected", [(None, True), (False, False), (True, True)])
def test_unset_privacy_follows_the_namespace_default(monkeypatch, tmp_path, out, private, expected):
    """``private`` unset is sent as nothing at all, so an organization whose default is private gets a private
    repository (before: ``private=False`` was sent, which published the model)."""
    with HubStandIn(private_by_default={"paka-org"}, max_lifetime_s=60) as stand_in:
        go_online(monkeypatch, stand_in.url, home=tmp_path / "hf_home")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        _push(out, private=private, endpoint=stand_in.url)
        assert stand_in.repos[REPO].private is expected


def test_private_push_into_an_existing_public_repo_stops(server, out, tiny_config):
    _push(out, private=False)
    before_head, before_files = server.head(REPO), server.snapshot(REPO)
    make_export_folder(out, tiny_config(registers=4), seed=5)
    with pytest.raises(hub.HubVisibilityError, match="already exists and is public") as err:
        _push(out, private=True)
    assert isinstance(err.value, PaKAUserError)
    assert server.head(REPO) == before_head and server.snapshot(REPO) == before_files
    assert server.repos[REPO].private is False
    assert server.count("POST", r"/commit/") == 1  # only the first push's commit
    _push(out)  # without --private the push goes on into the public repository the user chose before


@pytest.mark.parametrize("failure", ["commit-500", "lfs-upload-dropped"])
def test_failed_first_push_leaves_no_repository(server, out, caplog, monkeypatch, failure):
    """The repository this push created is deleted again when its first commit fails (before: an empty
    repository with the namespace's or a public visibility was left behind)."""
    if failure == "commit-500":
        server.fail("POST", r"/commit/", status=500, times=-1)
    else:
        # huggingface_hub retries every LFS PUT itself, 5 times with 1-8 s waits (23 s per commit try); the same
        # retries without the waits fail the same way
        lfs_backoff = huggingface_hub.lfs.http_backoff
        monkeypatch.setattr(
            huggingface_hub.lfs,
            "http_backoff",
            lambda *args, **kwargs: lfs_backoff(*args, **kwargs, base_wait_time=0.01, max_wait_time=0.01),
        )
        server.fail("PUT", r"^/lfs-upload/", status=0, times=-1)
    with pytest.raises(Exception):  # noqa: B017 - an HTTP 500 or a dropped upload: either must fail the push
        _push(out, max_retries=1)
    assert REPO not in server.repos
    assert "deleted the repository it had created" in caplog.text
    if failure == "lfs-upload-dropped":  # 2 commit tries (max_retries=1), each with the client's 1 + 5 LFS PUTs
        assert server.count("PUT", r"^/lfs-upload/") >= 2 * 6


def test_failed_push_to_an_existing_repo_never_deletes_it(server, out, tiny_config):
    _push(out)
    make_export_folder(out, tiny_config(registers=4), seed=9)
    server.fail("POST", r"/commit/", status=500, times=-1)
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for the HTTP 500
        _push(out, max_retries=0, commit_message="fails")
    assert REPO in server.repos and server.count("DELETE", r"/api/repos/delete") == 0


# ----- the remote is exactly what was pushed -----


def test_push_deletes_stale_remote_files_in_the_same_commit(server, out):
    _push(out)
    # an older upload left a pickle and a picture the new export no longer has
    api = HfApi(endpoint=server.url, token=TOKEN)
    from huggingface_hub import CommitOperationAdd

    api.create_commit(
        REPO,
        [
            CommitOperationAdd("pytorch_model.bin", b"old pickle"),
            CommitOperationAdd("pictures/old_pca.png", b"\x89PNG old"),
        ],
        commit_message="old run",
    )
    (out / "pictures" / "pca.png").unlink()
    info = _push(out, commit_message="New export")
    files = server.snapshot(REPO)
    assert set(files) == (EXPECTED - {"pictures/pca.png"}) | {".gitattributes"}
    titles = [c.title for c in api.list_repo_commits(REPO)]
    assert titles == ["New export", "old run", hub.DEFAULT_COMMIT_MESSAGE, "initial commit"]  # one commit
    assert info.oid == server.head(REPO)


def test_symlinked_pictures_outside_the_folder_are_skipped(server, out, tmp_path, caplog):
    from PIL import Image

    private = tmp_path / "private"
    private.mkdir()
    Image.new("RGB", (4, 4), "blue").save(private / "holiday.png")
    (out / "pictures" / "pca_leak.png").symlink_to(private / "holiday.png")
    (out / "pictures" / "pca_inside.png").symlink_to(out / "pictures" / "pca.png")  # inside: fine
    _push(out)
    files = server.snapshot(REPO)
    assert "pictures/pca_leak.png" not in files and "pictures/pca_inside.png" in files
    assert b"pca_leak" not in files["README.md"]
    assert "pca_leak.png" in caplog.text and "outside" in caplog.text


def test_symlinked_pictures_folder_outside_is_skipped(server, out, tmp_path):
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / "pictures", elsewhere)
    (out / "pictures").symlink_to(elsewhere, target_is_directory=True)
    _push(out)
    assert not any(name.startswith("pictures/") for name in server.snapshot(REPO))


def test_export_file_symlinked_outside_the_folder_is_refused(server, out, tmp_path):
    outside = tmp_path / "someone_elses.safetensors"
    (out / "model.safetensors").rename(outside)
    (out / "model.safetensors").symlink_to(outside)
    with pytest.raises(hub.UnsafeUploadError, match="model.safetensors -> .*someone_elses.safetensors"):
        _push(out)
    assert server.requests == []


def test_own_readme_is_never_overwritten_nor_uploaded(server, out):
    (out / "README.md").write_text("my own notes about this run\n")
    _push(out)
    assert (out / "README.md").read_text() == "my own notes about this run\n"
    remote = server.snapshot(REPO)["README.md"]
    assert b"pipeline_tag: image-feature-extraction" in remote and b"my own notes" not in remote


def test_mislabelled_results_stop_the_push_before_anything_is_sent(server, out):
    with pytest.raises(hub.MislabelledResultsError, match="someone/else"):
        _push(out, eval_results=[eval_file("someone/else", 50.0, 40.0)])
    assert server.requests == [] and REPO not in server.repos


def test_results_of_the_previous_push_never_label_new_weights(server, out, tiny_config):
    """Evaluate the pushed model by its Hub id (weights from the cache), retrain, push again with that file:
    the recorded hash is the previous push's, so the push stops instead of showing old numbers as new."""
    from paka_hf.evaluation.results import EvaluationReport

    _push(out)
    AutoModel.from_pretrained(REPO)  # what scripts/evaluate.py does first: the weights land in the cache
    report = EvaluationReport.for_model(REPO)
    assert report.model_sha256 == hub.weights_sha256(out)
    evaluated = {**report.to_dict(), "results": eval_file(REPO, 44.0, 34.0)["results"]}
    _push(out, eval_results=[evaluated], commit_message="with results")  # same weights: the numbers count
    assert b"| 44.0 |" in server.snapshot(REPO)["README.md"]

    make_export_folder(out, tiny_config(registers=4), seed=11)
    with pytest.raises(hub.MislabelledResultsError, match="with other weights"):
        _push(out, eval_results=[evaluated])
    assert [c.title for c in HfApi(endpoint=server.url).list_repo_commits(REPO, token=TOKEN)][0] == "with results"


def test_a_lora_export_pushes_merged_weights_and_adapter_in_one_commit_and_both_load(server, tmp_path, tiny_config):
    pytest.importorskip("peft")
    from hub_helpers import TRAINING_CONFIG
    from peft import PeftModel

    from paka_hf.modeling.backbones import PatchBackbone
    from paka_hf.modeling.lora import LoRASettings, adapter_parameters, add_lora, export_lora_backbone

    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(registers=4)).save_pretrained(tmp_path / "base")
    backbone = PatchBackbone.from_pretrained(tmp_path / "base")
    add_lora(backbone, LoRASettings(rank=4), base_model_name_or_path=str(tmp_path / "base"))
    with torch.no_grad():  # a trained adapter: B != 0
        for param in adapter_parameters(backbone).values():
            param.normal_(std=0.05)
    out = export_lora_backbone(backbone, tmp_path / "out")
    (out / "training_config.yaml").write_text(TRAINING_CONFIG)
    _push(out)
    files = server.snapshot(REPO)
    assert set(files) == (EXPECTED - {"pictures/pca.png"}) | {
        ".gitattributes",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    }
    assert server.count("POST", r"/commit/main$") == 1
    card = files["README.md"].decode()
    assert f'PeftModel.from_pretrained(base, "{REPO}", subfolder="adapter")' in card
    # peft recorded the local folder the base came from; the published adapter config names the base's Hub id
    assert json.loads(files["adapter/adapter_config.json"])["base_model_name_or_path"] == BASE
    assert str(tmp_path) not in card and all(str(tmp_path).encode() not in content for content in files.values())
    pixels = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        merged = AutoModel.from_pretrained(REPO).eval()(pixel_values=pixels).last_hidden_state
        base = AutoModel.from_pretrained(tmp_path / "base")
        adapted = PeftModel.from_pretrained(base, REPO, subfolder="adapter").eval()
        torch.testing.assert_close(adapted(pixel_values=pixels).last_hidden_state, merged, rtol=0, atol=1e-5)
        plain = AutoModel.from_pretrained(tmp_path / "base").eval()  # (from_pretrained put the adapter into `base`)
        assert not torch.allclose(plain(pixel_values=pixels).last_hidden_state, merged, atol=1e-3)


def test_a_local_base_path_is_published_nowhere(server, out, tmp_path, caplog):
    import yaml

    local_base = tmp_path / "shared" / "models" / "dinov2-small"
    local_base.mkdir(parents=True)
    config = yaml.safe_load((out / "training_config.yaml").read_text())
    (out / "training_config.yaml").write_text(yaml.safe_dump({**config, "model_name_or_path": str(local_base)}))
    with caplog.at_level("WARNING"):
        _push(out)
    files = server.snapshot(REPO)
    assert all(b"shared/models" not in content for content in files.values())
    assert yaml.safe_load(files["training_config.yaml"])["model_name_or_path"] is None
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model is None and "It starts from a local checkpoint" in card.text
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "local checkpoint that records no Hub id" in warnings[0]
    # a base in the Hugging Face download cache is published as its Hub id, in the card and the configuration
    cached = tmp_path / "hf_home" / "hub" / "models--facebook--dinov2-small" / "snapshots" / "0123abcd"
    (out / "training_config.yaml").write_text(yaml.safe_dump({**config, "model_name_or_path": str(cached)}))
    _push(out)
    files = server.snapshot(REPO)
    assert yaml.safe_load(files["training_config.yaml"])["model_name_or_path"] == "facebook/dinov2-small"
    assert ModelCard(files["README.md"].decode()).data.base_model == "facebook/dinov2-small"
    assert all(b"models--" not in content for content in files.values())
