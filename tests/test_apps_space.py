"""The explorer's Gradio Space: its files, and the push of model + Space against the loopback Hub stand-in
(repository type ``space``), with the model card linking the Space."""

from __future__ import annotations

import pytest
import yaml
from hub_helpers import TOKEN, go_online, make_export_folder
from hub_server import HubStandIn, space_key
from huggingface_hub import HfApi, constants

from paka_hf.apps import space
from paka_hf.commands import push as push_command
from paka_hf.commands.cli import run_script
from paka_hf.utils.errors import ConfigError

REPO = "paka-org/dinov2-paka-tiny"
BASE = "facebook/dinov2-with-registers-small"  # model_name_or_path of hub_helpers.TRAINING_CONFIG


@pytest.fixture
def server(monkeypatch, tmp_path):
    with HubStandIn(max_lifetime_s=120) as stand_in:
        go_online(monkeypatch, stand_in.url, home=tmp_path / "hf_home")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield stand_in


def _metadata(readme: bytes) -> dict:
    return yaml.safe_load(readme.decode().split("---")[1])


def test_space_files_load_the_model_and_its_base_by_hub_id():
    files = space.space_files("paka-org/x-explorer", REPO, BASE)
    app = files["app.py"].decode()
    assert f"build_app({REPO!r}, base={BASE!r}, resolution=448" in app
    compile(app, "app.py", "exec")
    meta = _metadata(files["README.md"])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["models"] == [REPO, BASE]
    requirements = files["requirements.txt"].decode().splitlines()
    assert any(line.startswith("transformers==") for line in requirements)
    assert any(line.startswith("gradio") for line in requirements)
    # paka_hf is not on a package index: the Space carries its sources, the app's imports included
    assert {
        "paka_hf/__init__.py",
        "paka_hf/apps/explorer.py",
        "paka_hf/apps/pictures.py",
        "paka_hf/modeling/backbones.py",
    } <= set(files)
    assert not any("__pycache__" in name for name in files)
    # or one requirement line (a published version, a Git URL) and no sources
    pinned = space.space_files("paka-org/x-explorer", REPO, BASE, package="paka_hf[app]==0.1.0")
    assert pinned["requirements.txt"] == b"paka_hf[app]==0.1.0\n" and set(pinned) == {
        "app.py",
        "requirements.txt",
        "README.md",
    }


def test_space_refuses_local_paths(tmp_path):
    with pytest.raises(ConfigError, match="Hub id"):
        space.space_files("paka-org/x-explorer", REPO, str(tmp_path))
    assert space.default_space_id(REPO) == REPO + "-explorer"


def test_link_space_in_card_is_placed_once():
    card = "---\nlicense: mit\n---\n# Title\n\nIntro.\n\n## How to use\n\ncode\n"
    linked = space.link_space_in_card(card, "paka-org/x-explorer", endpoint="https://hub.example")
    assert linked.index("## Try it in the browser") < linked.index("## How to use")
    assert "(https://hub.example/spaces/paka-org/x-explorer)" in linked
    again = space.link_space_in_card(linked, "paka-org/y-explorer", endpoint="https://hub.example")
    assert again.count("## Try it in the browser") == 1 and "y-explorer" in again and "x-explorer" not in again


def test_push_script_creates_the_space_and_links_it(server, tmp_path, tiny_config, capsys):
    out = tmp_path / "out"
    make_export_folder(out, tiny_config(registers=4))
    assert push_command.main([str(out), "--repo_id", REPO, "--space"]) == 0
    space_id = REPO + "-explorer"
    files = server.snapshot(space_key(space_id))
    assert {"app.py", "requirements.txt", "README.md", "paka_hf/apps/explorer.py"} <= set(files)
    assert _metadata(files["README.md"])["models"] == [REPO, BASE]
    assert f"build_app({REPO!r}, base={BASE!r}" in files["app.py"].decode()
    # the model card links the Space, in the repository and in the output folder
    card = server.snapshot(REPO)["README.md"].decode()
    assert f"{server.url}/spaces/{space_id}" in card and card.count("## Try it in the browser") == 1
    assert (out / "README.md").read_text() == card
    commits = HfApi(endpoint=server.url).list_repo_commits(space_id, repo_type="space", token=TOKEN)
    assert len(commits) == 2  # the Hub's initial commit and ours: the Space's files went in one commit
    assert f"Pushed Space {space_id}" in capsys.readouterr().out


def test_space_requirements_come_from_the_package_metadata():
    # One source: setup.py's install_requires, read back from the installed metadata (no copy in space.py).
    import ast
    import re
    from pathlib import Path

    setup_py = Path(space.__file__).resolve().parents[2] / "setup.py"
    setup_call = next(
        node
        for node in ast.walk(ast.parse(setup_py.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    declared = ast.literal_eval(next(k.value for k in setup_call.keywords if k.arg == "install_requires"))
    names = [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in declared]
    assert space.runtime_requirements() == names
    lines = space.space_requirements().splitlines()
    assert [line.split("==")[0] for line in lines[1:]] == [*names, "gradio"]


def test_space_requirements_need_the_installed_metadata(monkeypatch):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)
    with pytest.raises(ConfigError, match=r"pip install -e \."):
        space.space_requirements()
    assert space.space_requirements("paka_hf[app]==0.1.0") == "paka_hf[app]==0.1.0\n"


def _with_base(out, base: str) -> None:
    """Point the export's training_config.yaml at another base model (a local folder, a cache path...)."""
    config = yaml.safe_load((out / "training_config.yaml").read_text())
    config["model_name_or_path"] = base
    (out / "training_config.yaml").write_text(yaml.safe_dump(config))


def test_a_space_that_cannot_be_made_stops_the_push_before_any_upload(server, tmp_path, tiny_config, capsys):
    out = tmp_path / "out"
    make_export_folder(out, tiny_config())
    local_base = tmp_path / "shared" / "models" / "dinov2-small"
    local_base.mkdir(parents=True)
    _with_base(out, str(local_base))
    capsys.readouterr()  # what writing the export printed
    status = run_script(push_command.main, [str(out), "--repo_id", REPO, "--space"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: the Space loads the base model from the Hub")
    assert "--base_model ORG/NAME" in err
    assert server.repos == {}  # neither the model nor the Space was created
    # a Space id that is no Hub id stops it just as early
    _with_base(out, BASE)
    assert run_script(push_command.main, [str(out), "--repo_id", REPO, "--space", "not a hub id"]) == 2
    assert "the Space id (--space) must be a Hub id" in capsys.readouterr().err and server.repos == {}


def test_the_space_requirements_are_checked_before_the_model_is_pushed(server, tmp_path, tiny_config, monkeypatch):
    import importlib.metadata

    out = tmp_path / "out"
    make_export_folder(out, tiny_config())

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)
    with pytest.raises(ConfigError, match="package metadata is not installed"):
        push_command.main([str(out), "--repo_id", REPO, "--space"])
    assert server.repos == {}


def test_space_of_a_base_from_the_hf_cache_loads_it_by_its_hub_id(tmp_path, tiny_config):
    out = tmp_path / "out"
    make_export_folder(out, tiny_config())
    snapshot = tmp_path / "hf_home" / "hub" / "models--facebook--dinov2-small" / "snapshots" / "0123abcd"
    _with_base(out, str(snapshot))  # the folder need not exist here: its path names the model
    plan = space.plan_space_for_model(out, REPO)
    assert (plan.space_id, plan.model_id, plan.base_id) == (REPO + "-explorer", REPO, "facebook/dinov2-small")
    assert "base='facebook/dinov2-small'" in plan.files["app.py"].decode()
    assert str(tmp_path) not in b"".join(plan.files[name] for name in ("app.py", "README.md")).decode()
    # --base_model names it when nothing records it; a path there is refused, not published
    _with_base(out, str(tmp_path))
    assert space.plan_space_for_model(out, REPO, base_model=BASE).base_id == BASE
    with pytest.raises(ConfigError, match="must be the base model's Hub id"):
        space.plan_space_for_model(out, REPO, base_model=str(tmp_path))


def test_dry_run_with_space_shows_the_space_and_contacts_nobody(tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: a request would fail
    out = tmp_path / "out"
    make_export_folder(out, tiny_config())
    assert push_command.main([str(out), "--repo_id", REPO, "--space", "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert f"Would push the Space {REPO}-explorer ({REPO} against its base {BASE}): README.md, app.py, " in printed
    assert not (out / "README.md").exists()
