"""The collapse guard's decision: start values, the window, each limit, warn against stop, resume."""

import json
import logging
from pathlib import Path

import pytest
import torch

from paka_hf import PaKAConfig, PaKATrainer
from paka_hf.commands import train as train_command
from paka_hf.commands.cli import USER_ERROR_STATUS, run_script
from paka_hf.modeling import model as model_module
from paka_hf.modeling.feature_stats import PatchFeatureStats
from paka_hf.testing import StopAt, tiny_run_config, write_tiny_run_assets
from paka_hf.training.checkpoints import complete_checkpoints
from paka_hf.training.collapse_guard import WINDOW, CollapseGuard, FeatureCollapseError
from paka_hf.utils.errors import PaKAUserError
from paka_hf.utils.files import TRAINING_SUMMARY_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    # limit 0.53 + 0.3 * 0.47 = 0.671; one batch at 0.99 among 0.55s keeps the 5-step mean (0.638) below it
    assert (
        _feed(guard, [(0.53, 20.0), (0.55, 20.0), (0.99, 20.0), (0.55, 20.0), (0.55, 20.0), (0.55, 20.0)])
        == [None] * 6
    )
    assert guard.limits()[0] == pytest.approx(0.671)


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
    with pytest.raises(ValueError, match="collapse_action must be one of"):
        CollapseGuard(action="ignore")
    with pytest.raises(ValueError, match="collapse_rank_ratio"):
        CollapseGuard(rank_ratio=1.0)
    with pytest.raises(ValueError, match="collapse_cosine_rise"):
        PaKAConfig(output_dir="out", max_steps=1, collapse_cosine_rise=0.0)
    assert PaKAConfig(output_dir="out", max_steps=1).collapse_action == "stop"


# --------------------------------------------------------------------------------------------------
# In the trainer: measures logged and summarised, a stop before any save of collapsed weights, resume
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    write_tiny_run_assets(root, image_hw=(64, 80), count=8)
    return root


def _collapsing_stats(monkeypatch, collapse_from_call: int):
    """Make the model report a healthy mean patch cosine, then a collapsed one from the given forward on."""
    calls = {"n": 0}

    def fake(grids, views_per_image=1):
        calls["n"] += 1
        cosine = 0.5 if calls["n"] < collapse_from_call else 0.95
        return PatchFeatureStats(torch.tensor(cosine), torch.tensor(10.0))

    monkeypatch.setattr(model_module, "patch_feature_stats", fake)


def test_the_trainer_logs_both_measures_and_records_start_and_end_in_the_summary(assets, tmp_path):
    trainer = PaKATrainer(args=tiny_run_config(tmp_path / "out", assets / "model", assets / "images", logging_steps=1))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 6 and all(0.0 < entry["mean_patch_cosine"] <= 1.0 for entry in logged)
    assert all(entry["effective_rank"] >= 1.0 for entry in logged)
    trainer.export_backbone()
    health = json.loads((tmp_path / "out" / TRAINING_SUMMARY_FILE).read_text())["feature_health"]
    assert health["mean_patch_cosine"]["start"] == pytest.approx(logged[0]["mean_patch_cosine"], abs=1e-4)
    assert set(health["effective_rank"]) == {"start", "end"} and health["effective_rank"]["end"] >= 1.0


def test_a_collapse_stops_the_run_before_it_saves_collapsed_weights(assets, tmp_path, monkeypatch):
    _collapsing_stats(
        monkeypatch, collapse_from_call=4
    )  # steps 4.. collapse: the 5-step mean (0.68) crosses 0.5 + 0.3 * 0.5 at step 5
    output = tmp_path / "out"
    trainer = PaKATrainer(args=tiny_run_config(output, assets / "model", assets / "images", save_steps=3))
    with pytest.raises(FeatureCollapseError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "mean patch cosine rose from 0.5 at the start to 0.68 at step 5 (limit 0.65)" in message
    assert "learning rate 0.001, head learning rate 0.01, teacher momentum 0.9" in message
    assert f"the last complete checkpoint is {output / 'checkpoint-3'}" in message
    assert [p.name for p in complete_checkpoints(output)] == ["checkpoint-3"] and trainer.state.global_step == 5


def test_warn_logs_one_line_and_the_run_finishes(assets, tmp_path, monkeypatch, caplog):
    _collapsing_stats(monkeypatch, collapse_from_call=2)
    config = tiny_run_config(tmp_path / "out", assets / "model", assets / "images", collapse_action="warn")
    with caplog.at_level(logging.WARNING, logger="paka_hf.training.collapse_guard"):
        PaKATrainer(args=config).train()
    assert sum("collapsing" in record.message for record in caplog.records) == 1


def test_a_resume_keeps_the_start_values_of_the_first_session(assets, tmp_path):
    output = tmp_path / "out"
    first = PaKATrainer(args=tiny_run_config(output, assets / "model", assets / "images", save_steps=3))
    first.add_callback(StopAt(3))
    first.train()
    start = json.loads((output / "checkpoint-3" / TRAINING_SUMMARY_FILE).read_text())["feature_health"]
    resumed = PaKATrainer(args=tiny_run_config(output, assets / "model", assets / "images", save_steps=3))
    resumed.train(resume_from_checkpoint="latest")
    guard = resumed.collapse_callback.guard
    assert guard.cosine.start == pytest.approx(start["mean_patch_cosine"]["start"], abs=1e-4)
    assert guard.rank.start == pytest.approx(start["effective_rank"]["start"], abs=1e-3)


# --------------------------------------------------------------------------------------------------
# On the real DINOv2 ViT-S/14 of ../shared: the demo's settings trip the guard, the CamVid recipe does not
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forty_photos(tmp_path_factory):
    camvid = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid" / "train" / "images"
    if not camvid.is_dir():
        pytest.skip(f"CamVid photos not found at {camvid}")
    folder = tmp_path_factory.mktemp("photos")
    for photo in sorted(camvid.iterdir())[:40]:
        (folder / photo.name).symlink_to(photo)
    return folder


def _train_ten_steps(config: str, model: Path, photos: Path, output: Path) -> int:
    argv = ["--config", str(REPO_ROOT / config), "--model_name_or_path", str(model), "--dataset_name", str(photos)]
    argv += ["--output_dir", str(output), "--max_steps", "10", "--per_device_train_batch_size", "4"]
    return run_script(train_command.main, argv + ["--save_strategy", "no", "--logging_steps", "1"])


@pytest.mark.slow
def test_the_demo_settings_on_a_real_checkpoint_stop_within_ten_steps(
    small_model_path, forty_photos, tmp_path, capsys
):
    status = _train_ten_steps("configs/demo.yaml", small_model_path, forty_photos, tmp_path / "out")
    err = capsys.readouterr().err
    assert status == USER_ERROR_STATUS, err[-2000:]
    line = err.strip().splitlines()[-1]
    line = line[line.index("error: ") :]  # after the progress bar's carriage returns
    assert line.startswith("error: training stopped: the student's patch features are collapsing:")
    assert "learning rate 0.0001, head learning rate 0.001, teacher momentum 0.99" in line


@pytest.mark.slow
def test_the_camvid_recipe_on_a_real_checkpoint_trains_without_a_collapse(small_model_path, forty_photos, tmp_path):
    assert _train_ten_steps("configs/repro/paka.yaml", small_model_path, forty_photos, tmp_path / "out") == 0
    health = json.loads((tmp_path / "out" / TRAINING_SUMMARY_FILE).read_text())["feature_health"]
    assert health["effective_rank"]["end"] > 0.7 * health["effective_rank"]["start"]
