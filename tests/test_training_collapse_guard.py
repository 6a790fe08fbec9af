"""The collapse guard's decision: start values, the window, each limit, warn against stop, resume."""

import logging

import pytest

from paka_hf.training.collapse_guard import WINDOW, CollapseGuard, FeatureCollapseError
from paka_hf.utils.errors import PaKAUserError


def _feed(guard, values, start_step=0):
    messages = []
    for offset, (cosine, rank) in enumerate(values):
        messages.append(guard.observe(start_step + offset, cosine, rank))
    return messages


def test_a_healthy_run_never_reports():
    guard = CollapseGuard(action="stop")
    messages = _feed(guard, [(0.53 + 0.01 * (k % 3), 20.0 - 0.1 * k) for k in range(40)])
    assert messages == [None] * 40
    summary = guard.summary()
    assert summary["mean_patch_cosine"]["start"] == pytest.approx(0.53)
    assert summary["effective_rank"]["end"] == pytest.approx(sum(20.0 - 0.1 * k for k in range(35, 40)) / 5)


def test_rising_cosine_stops_with_one_line_naming_measure_start_now_and_cause():
    guard = CollapseGuard(action="stop", cause="learning rate 1e-04, head learning rate 1e-03, teacher momentum 0.99")
    values = [(0.53, 20.0)] + [(0.96, 19.0)] * (WINDOW - 1)
    _feed(guard, values[:-1])
    with pytest.raises(FeatureCollapseError) as raised:
        guard.observe(4, *values[-1])
    message = str(raised.value)
    assert isinstance(raised.value, PaKAUserError) and "\n" not in message
    assert "mean patch cosine rose from 0.53" in message and "step 4" in message
    assert "learning rate 1e-04" in message and "teacher momentum 0.99" in message
    assert "collapse_action: warn" in message


def test_the_window_keeps_one_odd_batch_from_tripping_the_limit():
    guard = CollapseGuard(action="stop")
    # limit 0.53 + 0.5 * 0.47 = 0.765; one batch at 0.99 among 0.55s keeps the 5-step mean below it
    assert (
        _feed(guard, [(0.53, 20.0), (0.55, 20.0), (0.99, 20.0), (0.55, 20.0), (0.55, 20.0), (0.55, 20.0)])
        == [None] * 6
    )
    assert guard.limits()[0] == pytest.approx(0.765)


def test_falling_effective_rank_warns_once_and_training_goes_on(caplog):
    guard = CollapseGuard(action="warn")
    with caplog.at_level(logging.WARNING):
        messages = _feed(guard, [(0.5, 20.0)] + [(0.5, 6.0)] * 10)
    reported = [m for m in messages if m]
    assert len(reported) == 1 and "effective rank fell from 20" in reported[0]
    assert sum("collapsing" in r.message for r in caplog.records) == 1


def test_a_resume_compares_with_the_runs_first_start_values():
    guard = CollapseGuard(action="stop")
    guard.restore(0.5, 20.0)
    with pytest.raises(FeatureCollapseError, match="from 0.5 at the start"):
        _feed(guard, [(0.9, 20.0)] * WINDOW, start_step=100)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="'warn' or 'stop'"):
        CollapseGuard(action="ignore")
    with pytest.raises(ValueError, match="rank_ratio"):
        CollapseGuard(rank_ratio=1.0)
