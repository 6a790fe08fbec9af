"""scripts/push_to_hub.py (paka_hf.commands.push), run in-process against the loopback Hub stand-in."""

from __future__ import annotations

import json

import pytest
from hub_helpers import TOKEN, eval_file, go_online, make_export_folder
from hub_server import HubStandIn

from paka_hf.commands import push as push_command
from paka_hf.commands.cli import run_script


@pytest.fixture
def out(tmp_path, tiny_config):
    folder = tmp_path / "out"
    make_export_folder(folder, tiny_config())
    return folder


def test_push_script_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        push_command.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "OUTPUT_DIR",
        "--repo_id",
        "--private",
        "--eval_results",
        "--revision",
        "hf auth login",
        "HF_TOKEN",
    ):
        assert option in text


def test_push_script_pushes_with_env_token(out, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    (tmp_path / "base.json").write_text(json.dumps(eval_file("facebook/dinov2-with-registers-small", 40.0, 30.0)))
    (tmp_path / "paka.json").write_text(json.dumps(eval_file(str(out), 43.0, 34.0)))
    with HubStandIn(max_lifetime_s=60) as server:
        go_online(monkeypatch, server.url)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        code = push_command.main(
            [
                str(out),
                "--repo_id",
                "paka-org/cli",
                "--private",
                "--eval_results",
                str(tmp_path / "base.json"),
                str(tmp_path / "paka.json"),
            ]
        )
        assert code == 0
        files = server.snapshot("paka-org/cli")
        assert server.repos["paka-org/cli"].private
    assert set(files) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "training_config.yaml",
    }
    assert b"| 40.0 | 43.0 | +3.0 |" in files["README.md"]
    captured = capsys.readouterr()
    assert "Pushed paka-org/cli" in captured.out and TOKEN not in captured.out + captured.err


def test_push_script_auth_failure_exit_code(out, tmp_path, monkeypatch, capsys):
    with HubStandIn(max_lifetime_s=60) as server:
        go_online(monkeypatch, server.url)
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
        script = push_command
        assert run_script(script.main, [str(out), "--repo_id", "paka-org/cli"]) == 2  # a user error, one line
    err = capsys.readouterr().err
    assert "hf auth login" in err and "hf_not_a_valid_token" not in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def _tree(folder):
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_push_script_dry_run_contacts_nobody_and_writes_nothing(out, capsys, monkeypatch):
    """--dry_run prints the file list and the card (before: it wrote OUTPUT_DIR/README.md)."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # would fail if anything were sent
    before = _tree(out)
    assert push_command.main([str(out), "--repo_id", "paka-org/cli", "--dry_run"]) == 0
    text = capsys.readouterr().out
    assert "  model.safetensors" in text and "  README.md" in text and "pipeline_tag: image-feature-extraction" in text
    assert _tree(out) == before


def test_push_script_private_on_existing_public_repo_stops(out, monkeypatch, capsys):
    from huggingface_hub import constants

    with HubStandIn(max_lifetime_s=60) as server:
        go_online(monkeypatch, server.url)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        script = push_command
        assert script.main([str(out), "--repo_id", "paka-org/cli"]) == 0  # namespace default: public here
        capsys.readouterr()
        assert run_script(script.main, [str(out), "--repo_id", "paka-org/cli", "--private"]) == 2
        assert server.repos["paka-org/cli"].private is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: paka-org/cli already exists and is public")


def test_push_script_without_private_keeps_the_namespace_default(out, monkeypatch):
    """No --private: nothing is asked, so an organization whose new repositories are private keeps it so
    (before: the script sent private=False and published the model)."""
    from huggingface_hub import constants

    with HubStandIn(max_lifetime_s=60, private_by_default={"paka-org"}) as server:
        go_online(monkeypatch, server.url)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert push_command.main([str(out), "--repo_id", "paka-org/cli"]) == 0
        assert server.repos["paka-org/cli"].private is True
