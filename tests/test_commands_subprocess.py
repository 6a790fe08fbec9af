"""User errors through the real scripts (subprocesses): ``error: ...`` on one line, exit status 2, no traceback;
and no secret in any file a training run writes.

The cases that must go through a real process (no network call, the whole log of a training run) are
started at once by the ``runs`` fixture (each one spends most of its time importing torch and transformers)
and each test reads its own run's result; the other cases call the same ``run_script(main)`` in this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from paka_hf.commands import evaluate as evaluate_command
from paka_hf.commands import push as push_command
from paka_hf.commands import train as train_command
from paka_hf.commands import visualize as visualize_command
from paka_hf.commands.cli import USER_ERROR_STATUS, run_script, split_debug_flag
from paka_hf.testing import TINY_RUN, write_tiny_run_assets
from paka_hf.utils.errors import ConfigError, MissingPathError
from paka_hf.utils.paths import looks_like_local_path

REPO_ROOT = Path(__file__).resolve().parents[1]

SCRIPTS = REPO_ROOT / "scripts"
TOKEN_ON_COMMAND_LINE = "hf_FakeCommandLineToken0123456789"
TOKEN_IN_ENVIRONMENT = "hf_FakeEnvironmentToken0123456789"


def _offline_env(**extra):
    env = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=str(REPO_ROOT),
        OMP_NUM_THREADS="1",
        **extra,
    )
    env.pop("PAKA_DEBUG", None)
    return env


def _online_env(endpoint: str):
    """A Hub client may try the network here: every Hub call goes to ``endpoint``, which never answers."""
    env = _offline_env()
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key)
    env["HF_ENDPOINT"] = endpoint
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start every case's script now; ``runs[name]`` waits for that case and returns (returncode, stdout, stderr)."""
    root = tmp_path_factory.mktemp("cli")
    write_tiny_run_assets(root, (48, 64))
    (root / "configs").mkdir()
    (root / "configs" / "run.yaml").write_text("dataset_name: ./images\nmodel_name_or_path: org/model\nmax_steps: 2\n")
    (root / "elsewhere").mkdir()
    (root / "used" / "checkpoint-5").mkdir(parents=True)
    # A Hub "endpoint" that accepts connections into its backlog and never answers: a client that tried it would
    # hang, and the test sees the connection.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    model, images = str(root / "model"), str(root / "images")
    train = [str(SCRIPTS / "train.py")]
    cases = {
        "model_path": (
            train + ["--model_name_or_path", "./no/such/model", "--output_dir", "out", "--max_steps", "2"],
            root,
            "online",
        ),
        "dataset_path": (
            train
            + [
                "--model_name_or_path",
                "org/model",
                "--dataset_name",
                "data/no/such",
                "--output_dir",
                "out",
                "--max_steps",
                "2",
            ],
            root,
            "online",
        ),
        "yaml_relative": (
            train + ["--config", str(root / "configs" / "run.yaml"), "--output_dir", "out"],
            root / "elsewhere",
            "online",
        ),
        "secrets": (
            train
            + [
                "--model_name_or_path",
                model,
                "--dataset_name",
                images,
                "--output_dir",
                str(root / "secret_out"),
                "--hub_token",
                TOKEN_ON_COMMAND_LINE,
                *TINY_RUN,
            ],
            root,
            "offline",
        ),
    }
    processes = {}
    for name, (argv, cwd, network) in cases.items():
        env = _online_env(endpoint) if network == "online" else _offline_env()
        if name == "secrets":
            env["HF_TOKEN"] = TOKEN_IN_ENVIRONMENT
        processes[name] = subprocess.Popen(
            [sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    results = {}

    class Results(dict):
        def __getitem__(self, name):
            if name not in results:
                out, err = processes[name].communicate(timeout=600)
                results[name] = (processes[name].returncode, out, err)
            return results[name]

    yield Results(), root, listener
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()
    listener.close()


def _assert_one_line_error(result, *expected: str, only_line: bool = True) -> str:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == USER_ERROR_STATUS, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith("error: "), err[-3000:]
    assert sum(line.startswith("error: ") for line in lines) == 1
    if only_line:  # nothing else was printed: the script stopped before loading anything
        assert len(lines) == 1, err
    for text in expected:
        assert text in lines[-1], lines[-1]
    return lines[-1]


def _no_connection_attempted(listener) -> bool:
    listener.setblocking(False)
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return True
    connection.close()
    return False


@pytest.mark.slow
@pytest.mark.parametrize("case, option", [("model_path", "--model_name_or_path"), ("dataset_path", "--dataset_name")])
def test_a_missing_folder_is_no_such_folder_without_asking_the_hub(runs, case, option):
    results, _, listener = runs
    line = _assert_one_line_error(results[case], option, "no such folder", "resolved from the current directory")
    assert "repo" not in line.lower()  # never a repo-id error
    for name in ("model_path", "dataset_path", "yaml_relative"):
        results[name]  # every case that could have asked the Hub has ended
    assert _no_connection_attempted(listener)  # never a network wait


@pytest.mark.slow
def test_a_relative_path_in_a_config_says_from_where_it_was_resolved(runs):
    results, root, _ = runs
    _assert_one_line_error(
        results["yaml_relative"],
        "--dataset_name './images'",
        "no such folder",
        f"resolved from the current directory {root / 'elsewhere'}",
        "not from the folder of the config file",
        f"set in {root / 'configs' / 'run.yaml'}",
    )


# the programs behind scripts/<name>.py
COMMANDS = {
    "train": train_command,
    "evaluate": evaluate_command,
    "visualize": visualize_command,
    "push_to_hub": push_command,
}


def _in_process_cases(root):
    model, images = str(root / "model"), str(root / "images")
    return {
        "bad_value": (
            "train",
            ["--min_intersection", "3", "--max_steps", "2", "--output_dir", str(root / "o")],
            ["min_intersection must be in [0, 1]"],
            True,
        ),
        "missing_config": ("train", ["--config", str(root / "no_such.yaml")], ["--config", "no such"], True),
        "no_checkpoint": (
            "train",
            [
                "--model_name_or_path",
                model,
                "--dataset_name",
                images,
                "--output_dir",
                str(root / "empty_out"),
                "--resume_from_checkpoint",
                "latest",
                *TINY_RUN,
            ],
            ["--resume_from_checkpoint latest: no complete checkpoint"],
            False,
        ),
        "used_output_dir": (
            "train",
            ["--model_name_or_path", model, "--dataset_name", images, "--output_dir", str(root / "used"), *TINY_RUN],
            ["already holds checkpoints", "checkpoint-5", "--resume_from_checkpoint latest", "--overwrite_output_dir"],
            False,
        ),
        "evaluate_model_path": (
            "evaluate",
            ["--model_name_or_path", "./no/such/model", "--dataset_name", "camvid", "--device", "cpu"],
            ["--model_name_or_path", "no such folder"],
            True,
        ),
        "evaluate_unknown_dataset": (
            "evaluate",
            [
                "--model_name_or_path",
                model,
                "--dataset_name",
                "no_such_benchmark",
                "--data_dir",
                images,
                "--device",
                "cpu",
                "--output_file",
                str(root / "r.json"),
            ],
            ["unknown dataset 'no_such_benchmark'"],
            False,
        ),
        "evaluate_bad_protocol": (
            "evaluate",
            ["--model_name_or_path", model, "--dataset_name", "camvid", "--protocol", "knn", "--device", "cpu"],
            ["unknown protocol(s) ['knn']"],
            True,
        ),
        "visualize_output_dir": (
            "visualize",
            [str(root / "no_such_out"), "--images", "x.jpg"],
            ["OUTPUT_DIR", "no such folder"],
            True,
        ),
        "push_output_dir": (
            "push_to_hub",
            [str(root / "no_such_out"), "--repo_id", "org/name"],
            ["OUTPUT_DIR", "no such folder"],
            True,
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "bad_value",
        "missing_config",
        "no_checkpoint",
        "used_output_dir",
        "evaluate_model_path",
        "evaluate_unknown_dataset",
        "evaluate_bad_protocol",
        "visualize_output_dir",
        "push_output_dir",
    ],
)
def test_user_errors_of_every_script_are_one_line_and_exit_2(runs, case, capsys, monkeypatch):
    """The same wrapper as ``python scripts/X.py``, called in this process (no torch import per case)."""
    monkeypatch.delenv("PAKA_DEBUG", raising=False)
    root = runs[1]
    script, argv, expected, only_line = _in_process_cases(root)[case]
    capsys.readouterr()
    code = run_script(COMMANDS[script].main, argv)
    _assert_one_line_error((code, "", capsys.readouterr().err), *expected, only_line=only_line)


@pytest.mark.slow
def test_debug_shows_the_traceback_of_a_user_error(runs, monkeypatch):
    monkeypatch.delenv("PAKA_DEBUG", raising=False)
    argv = ["--min_intersection", "3", "--max_steps", "2", "--output_dir", str(runs[1] / "o"), "--debug"]
    with pytest.raises(ConfigError, match=r"min_intersection must be in \[0, 1\]"):
        run_script(train_command.main, argv)


@pytest.mark.slow
def test_no_token_in_any_file_or_log_of_a_training_run(runs):
    """Trainer pickles its arguments into every checkpoint (training_args.bin): the token must not be there."""
    results, root, _ = runs
    code, out, err = results["secrets"]
    assert code == 0, err[-3000:]
    output = root / "secret_out"
    files = [path for path in output.rglob("*") if path.is_file()]
    assert {"training_args.bin", "model.safetensors", "training_config.yaml"} <= {path.name for path in files}
    assert any(path.name == "training_args.bin" and path.parent.name == "checkpoint-2" for path in files)
    for path in files:
        data = path.read_bytes()
        for token in (TOKEN_ON_COMMAND_LINE, TOKEN_IN_ENVIRONMENT):
            assert token.encode() not in data, path  # before: every checkpoint's training_args.bin held it
    for token in (TOKEN_ON_COMMAND_LINE, TOKEN_IN_ENVIRONMENT):
        assert token not in out + err
    assert "--hub_token on the command line is visible to every user of this machine" in err
    assert "HF_TOKEN" in err


def test_a_token_in_a_config_file_warns_without_showing_it(tmp_path, caplog):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"max_steps: 2\nuse_cpu: true\nhub_token: {TOKEN_IN_ENVIRONMENT}\noutput_dir: {tmp_path}\n")
    with caplog.at_level("WARNING", logger="train"):
        config, origins = train_command.parse_config_and_origins(["--config", str(config_file)])
    assert f"hub_token in {config_file}: a token in a config file travels with the file" in caplog.text
    assert "HF_TOKEN" in caplog.text and TOKEN_IN_ENVIRONMENT not in caplog.text
    assert origins["hub_token"] == str(config_file) and config.hub_token == TOKEN_IN_ENVIRONMENT  # still used


# ---- the wrapper itself, in process ----------------------------------------------------------------------


def test_run_script_turns_user_errors_into_status_2_and_lets_bugs_through(capsys, monkeypatch):
    monkeypatch.delenv("PAKA_DEBUG", raising=False)

    def fails(error):
        def main(argv):
            raise error

        return main

    assert run_script(fails(MissingPathError("x: no such folder\n  (see above)")), []) == 2
    assert capsys.readouterr().err == "error: x: no such folder (see above)\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_script(fails(ZeroDivisionError("bug")), [])
    with pytest.raises(ConfigError):
        run_script(fails(ConfigError("bad")), ["--debug"])
    monkeypatch.setenv("PAKA_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_script(fails(ConfigError("bad")), [])
    assert run_script(lambda argv: argv, ["--x", "1"]) == 0 and run_script(lambda argv: 3, []) == 3


def test_debug_flag_is_taken_only_when_it_stands_alone(monkeypatch):
    monkeypatch.delenv("PAKA_DEBUG", raising=False)
    assert split_debug_flag(["--max_steps", "2", "--debug"]) == (["--max_steps", "2"], True)
    assert split_debug_flag(["--debug", "--max_steps", "2"]) == (["--max_steps", "2"], True)
    assert split_debug_flag(["--debug", "underflow_overflow"]) == (["--debug", "underflow_overflow"], False)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("./x", True),
        ("../x", True),
        ("/abs/x", True),
        ("~/x", True),
        ("a/b/c", True),
        ("org/name", False),
        ("name", False),
        ("facebook/dinov2-small", False),
    ],
)
def test_which_names_are_read_as_local_paths(name, expected):
    assert looks_like_local_path(name) is expected
