"""Pushes during training (paka_hf.training.hub_push): a real ``Trainer`` run against the loopback Hub stand-in.

A toy trainer (a tiny DINOv2 and a made-up loss) with :class:`~paka_hf.training.hub_push.HubPushMixin` stands in
for ``PaKATrainer``, which uses the same mixin: training-time pushes go through ``Trainer``'s own hooks.
"""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path

import pytest
import torch
from hub_helpers import SECRET, TOKEN, TRAINING_CONFIG, eval_file, go_online
from hub_server import HubStandIn
from huggingface_hub import HfApi, constants
from torch import nn
from transformers import AutoModel, Trainer, TrainerCallback, TrainingArguments

from paka_hf import hub
from paka_hf.training import hub_push as trainer_hub

REPO = "paka-org/dinov2-paka-tiny"


@pytest.fixture
def server(monkeypatch, tmp_path):
    with HubStandIn(max_lifetime_s=120, private_by_default={"paka-org"}) as stand_in:
        go_online(monkeypatch, stand_in.url, home=tmp_path / "hf_home")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield stand_in


class Wrapper(nn.Module):  # stands in for the PaKA training module: backbone + a loss
    def __init__(self, config):
        super().__init__()
        self.backbone = AutoModel.from_config(config)

    def forward(self, pixel_values):
        return {"loss": self.backbone(pixel_values=pixel_values).last_hidden_state.pow(2).mean()}


class ToyTrainer(trainer_hub.HubPushMixin, Trainer):
    hub_push_options = {"backoff_s": 0.01, "max_retries": 1}
    fail_export_with: OSError | None = None

    def export_backbone(self, output_dir):
        if self.fail_export_with is not None and Path(output_dir) != Path(self.args.output_dir):
            raise self.fail_export_with
        hub.save_backbone(self.model.backbone, output_dir)


def _trainer(tmp_path, tiny_config, steps=2, callbacks=(), **args):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "training_config.yaml").write_text(TRAINING_CONFIG)
    settings = dict(
        output_dir=str(run),
        push_to_hub=True,
        hub_model_id=REPO,
        hub_strategy="every_save",
        hub_token=TOKEN,
        max_steps=steps,
        save_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_only_model=True,
    )
    settings.update(args)
    torch.manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 28, 28)} for _ in range(2 * steps)]
    return ToyTrainer(
        model=Wrapper(tiny_config()), args=TrainingArguments(**settings), train_dataset=data, callbacks=list(callbacks)
    )


def _titles(server) -> list[str]:
    return [c.title for c in HfApi(endpoint=server.url).list_repo_commits(REPO, token=TOKEN)]


def test_trainer_pushes_paka_files_only_and_the_final_push_waits(server, tmp_path, tiny_config):
    """every_save pushes go through paka_hf.hub, never Trainer's folder upload or card; the final push comes
    last; ``hub_private_repo`` unset leaves visibility to the namespace (private here; before: public)."""
    trainer = _trainer(tmp_path, tiny_config, hub_always_push=True)  # queue every save's push, skip none
    assert trainer.args.hub_private_repo is None
    trainer.train()
    info = trainer.push_to_hub(eval_results=[eval_file(REPO, 44.0, 35.0)])

    assert _titles(server) == [
        "End of training",
        "Training in progress, step 2",
        "Training in progress, step 1",
        "initial commit",
    ]
    assert info.oid == server.head(REPO) and len(trainer.hub_pusher.pushes) == 2
    assert server.repos[REPO].private is True
    files = server.snapshot(REPO)
    assert set(files) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "training_config.yaml",
    }
    assert b"pipeline_tag: image-feature-extraction" in files["README.md"]
    assert b"generated_from_trainer" not in files["README.md"] and SECRET.encode() not in files["training_config.yaml"]
    remote = AutoModel.from_pretrained(REPO, cache_dir=tmp_path / "cache", token=TOKEN).eval()  # private
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(
            remote(pixel_values=pixels).last_hidden_state,
            trainer.model.backbone.eval()(pixel_values=pixels).last_hidden_state,
        )


def test_in_progress_push_runs_in_the_background(server, tmp_path, tiny_config, monkeypatch):
    """The push of step 1 cannot finish until training has done all its steps and saves: training must go on
    while it runs (before: the push ran inside on_save and training stood still for its whole duration)."""
    steps = 3
    reached_last_step = threading.Event()
    released = []
    real_push = trainer_hub.push_to_hub

    def slow_push(*args, **kwargs):
        released.append(reached_last_step.wait(timeout=10))
        return real_push(*args, **kwargs)

    class Progress(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):  # after the last step and its save
            if state.global_step == steps:
                reached_last_step.set()

    monkeypatch.setattr(trainer_hub, "push_to_hub", slow_push)
    trainer = _trainer(tmp_path, tiny_config, steps=steps, callbacks=[Progress()], hub_always_push=False)
    trainer.train()  # Trainer waits for the running push at the end of train()
    assert released[0] is True
    assert _titles(server)[0] == "Training in progress, step 1"
    assert len(released) == 1  # saves 2 and 3 came while step 1's push ran: skipped, as Trainer does


def test_full_disk_while_exporting_is_logged_and_training_goes_on(server, tmp_path, tiny_config, caplog, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    trainer = _trainer(tmp_path, tiny_config)
    trainer.fail_export_with = OSError(errno.ENOSPC, "No space left on device")
    with caplog.at_level(logging.ERROR, logger="paka_hf.training.hub_push"):
        trainer.train()
    assert trainer.state.global_step == 2
    assert caplog.text.count("No space left on device") == 2 and "training continues" in caplog.text
    assert list((tmp_path / "tmp").iterdir()) == []  # the half-written export folders are gone
    assert REPO not in server.repos


def test_refused_credentials_during_training_are_logged_and_training_goes_on(server, tmp_path, tiny_config, caplog):
    trainer = _trainer(tmp_path, tiny_config, steps=3, hub_token="hf_wrong_token")
    with caplog.at_level(logging.INFO, logger="paka_hf.training.hub_push"):
        trainer.train()
    assert trainer.state.global_step == 3
    assert "hf auth login" in caplog.text and "refused the credentials earlier" in caplog.text
    assert len(trainer.hub_pusher.errors) == 1  # no further push tried once the Hub refused the token
    with pytest.raises(hub.HubAuthenticationError):  # the final push reports it to the caller
        trainer.push_to_hub()
    assert REPO not in server.repos and "hf_wrong_token" not in caplog.text


def test_hub_outage_during_training_is_logged_and_the_final_push_succeeds(server, tmp_path, tiny_config, caplog):
    server.fail("POST", r"/commit/", status=503, times=4)  # both in-progress pushes: 1 try + 1 retry each
    trainer = _trainer(tmp_path, tiny_config, hub_always_push=True)
    with caplog.at_level(logging.ERROR, logger="paka_hf.training.hub_push"):
        trainer.train()
    assert trainer.state.global_step == 2 and len(trainer.hub_pusher.errors) == 2
    assert REPO not in server.repos  # each failed first push removed the repository it had created
    info = trainer.push_to_hub()
    assert _titles(server) == ["End of training", "initial commit"] and info.oid == server.head(REPO)


def test_unsupported_settings_fail_at_start_up(tmp_path, tiny_config):
    from paka_hf.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="'every_save'.*'end'"):
        _trainer(tmp_path, tiny_config, hub_strategy="checkpoint")
    with pytest.raises(ConfigError, match="hub_model_id"):
        trainer_hub.HubSettings.from_args(TrainingArguments(output_dir=str(tmp_path), push_to_hub=True, report_to=[]))


def test_end_strategy_pushes_only_at_the_end(server, tmp_path, tiny_config):
    trainer = _trainer(tmp_path, tiny_config, hub_strategy="end")
    trainer.train()
    assert REPO not in server.repos
    trainer.push_to_hub()
    assert _titles(server) == ["End of training", "initial commit"]


def test_paka_trainer_every_save_pushes_the_exported_student(server, tmp_path, monkeypatch):
    """The real PaKATrainer (HubPushMixin + export_backbone): each save pushes the student as a plain model."""

    from paka_hf import PaKAConfig, PaKATrainer
    from paka_hf.testing import write_tiny_run_assets

    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the token from the environment, as scripts/train.py takes it
    write_tiny_run_assets(tmp_path, (60, 70))
    args = PaKAConfig(
        output_dir=str(tmp_path / "run"),
        model_name_or_path=str(tmp_path / "model"),
        dataset_name=str(tmp_path / "images"),
        max_steps=2,
        save_steps=1,
        per_device_train_batch_size=2,
        global_size=56,
        local_size=28,
        n_local=2,
        head_hidden_dim=32,
        head_out_dim=16,
        dataloader_num_workers=0,
        shuffle_buffer_size=4,
        use_cpu=True,
        disable_tqdm=True,
        report_to=[],
        seed=0,
        push_to_hub=True,
        hub_model_id=REPO,
        hub_strategy="every_save",
        hub_always_push=True,
    )
    trainer = PaKATrainer(args=args)
    trainer.train()
    trainer.push_to_hub(eval_results=[eval_file(REPO, 44.0, 35.0)])  # the card changes: a commit of its own
    assert _titles(server) == [
        "End of training",
        "Training in progress, step 2",
        "Training in progress, step 1",
        "initial commit",
    ]
    files = server.snapshot(REPO)
    assert set(files) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "training_config.yaml",
    }
    assert files["model.safetensors"] == (tmp_path / "run" / "model.safetensors").read_bytes()
    assert server.repos[REPO].private is True  # hub_private_repo unset: the namespace's default
