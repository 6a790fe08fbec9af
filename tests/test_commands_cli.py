"""run_script, the wrapper every program runs in: Ctrl-C is one line and exit status 130, as a user error is one
line and exit status 2."""

import pytest

from paka_hf.commands.cli import INTERRUPTED_STATUS, USER_ERROR_STATUS, run_script
from paka_hf.utils.errors import ConfigError, Interrupted


def _raise(error):
    def main(argv):
        raise error

    return main


def test_ctrl_c_is_one_line_and_status_130(capsys):
    assert run_script(_raise(KeyboardInterrupt()), []) == INTERRUPTED_STATUS == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_an_interrupt_with_a_message_prints_it_on_one_line(capsys):
    error = Interrupted(
        "training stopped at step 7;\n resume with: python scripts/train.py --resume_from_checkpoint latest"
    )
    assert run_script(_raise(error), []) == INTERRUPTED_STATUS
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted: training stopped at step 7; resume with:")


def test_debug_lets_the_interrupt_and_user_errors_propagate(capsys):
    with pytest.raises(KeyboardInterrupt):
        run_script(_raise(KeyboardInterrupt()), ["--debug"])
    with pytest.raises(ConfigError):
        run_script(_raise(ConfigError("bad")), ["--debug"])
    assert run_script(_raise(ConfigError("bad value")), []) == USER_ERROR_STATUS
    assert capsys.readouterr().err == "error: bad value\n"


@pytest.mark.parametrize(("argv", "level"), [([], "WARNING"), (["--debug"], "DEBUG")])
def test_http_request_lines_show_only_with_debug(monkeypatch, argv, level):
    import logging

    from paka_hf.commands import cli

    monkeypatch.delenv(cli.DEBUG_ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setattr(cli, "_debug_requested", None)
    assert run_script(lambda _: cli.configure_logging(), argv) == 0
    for name in cli.HTTP_LOGGERS:
        assert logging.getLevelName(logging.getLogger(name).level) == level
    logging.getLogger("httpx").setLevel(logging.NOTSET)
