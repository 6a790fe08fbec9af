"""Pushes during training: ``hub_strategy="every_save"`` and the final push, through :mod:`paka_hf.hub`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .hub.export import _SUPPORTED_MODEL_TYPES, EXPORT_FILES, PICTURES_DIR, TRAINING_CONFIG_FILE, TRAINING_SUMMARY_FILE
from .hub.export import default_image_processor
from .hub.push import HubAuthenticationError, push_to_hub

logger = logging.getLogger(__name__)

_SUPPORTED_STRATEGIES = ("end", "every_save")


def _check_strategy(strategy: Any) -> str:
    strategy = getattr(strategy, "value", strategy)  # transformers.trainer_utils.HubStrategy enum
    if strategy not in _SUPPORTED_STRATEGIES:
        raise ValueError(
            f"hub_strategy={strategy!r} is not supported by paka_hf: 'checkpoint' and 'all_checkpoints' would "
            "upload Trainer checkpoints (optimizer and RNG state are pickles, and the teacher and head are not "
            "a loadable model). Use 'every_save' (push the exported backbone at every save) or 'end'."
        )
    return strategy


def _hub_settings(args: Any) -> dict[str, Any]:
    strategy = _check_strategy(getattr(args, "hub_strategy", "every_save"))
    repo_id = getattr(args, "hub_model_id", None)
    if not repo_id:
        raise ValueError(
            "push_to_hub is true but hub_model_id is not set; set hub_model_id: org/name in the training config."
        )
    return dict(
        repo_id=repo_id,
        strategy=strategy,
        private=bool(getattr(args, "hub_private_repo", False)),
        token=getattr(args, "hub_token", None),
        revision=getattr(args, "hub_revision", None),
    )


def push_from_training_args(
    output_dir: str | os.PathLike,
    args: Any,
    eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
    commit_message: str = "End of training",
    **kwargs: Any,
):
    """End-of-training push driven by ``TrainingArguments``-style settings; ``None`` if not requested.

    Call it after the final export (and after evaluation, so the card carries the results). Reads
    ``args.push_to_hub``, ``hub_model_id``, ``hub_strategy`` (``end`` or ``every_save``; both push here),
    ``hub_private_repo``, ``hub_token`` and ``hub_revision``; only process zero should call it
    (``trainer.is_world_process_zero()``). ``kwargs`` go to :func:`push_to_hub`.
    """
    if not getattr(args, "push_to_hub", False):
        return None
    settings = _hub_settings(args)
    return push_to_hub(
        output_dir,
        settings["repo_id"],
        private=settings["private"],
        eval_results=eval_results,
        revision=settings["revision"],
        token=settings["token"],
        commit_message=commit_message,
        **kwargs,
    )


class HubPushCallback(TrainerCallback):
    """Push the exported backbone at every save (``hub_strategy="every_save"``), through :func:`push_to_hub`.

    At each ``on_save`` on process zero, ``export_fn(staging_dir)`` writes the current backbone (use
    ``lambda d: save_backbone(student, d, processor)``); when ``export_fn`` is ``None`` the new
    ``checkpoint-{step}`` folder is used if it holds a plain DINOv2 export. ``training_config.yaml``,
    ``training_summary.json`` and ``pictures/`` are copied from ``args.output_dir`` when present; the card is
    regenerated each time, so the repository never carries a bare ``Trainer`` card. Commit message:
    ``"Training in progress, step N"``. With ``hub_strategy="end"`` the callback does nothing; call
    :func:`push_from_training_args` after the final export and evaluation in both cases.

    A failed in-progress push is logged and training continues (the next save or the final push
    retries); an authentication error is raised at once.
    """

    def __init__(
        self,
        repo_id: str,
        *,
        strategy: str = "every_save",
        private: bool = False,
        token: str | None = None,
        revision: str | None = None,
        export_fn: Callable[[str], Any] | None = None,
        push_fn: Callable[..., Any] | None = None,
        **push_kwargs: Any,
    ):
        strategy = _check_strategy(strategy)
        self.repo_id, self.strategy, self.private, self.revision = repo_id, strategy, private, revision
        self._token = token
        self.export_fn = export_fn
        self.push_fn = push_fn or push_to_hub
        self.push_kwargs = push_kwargs
        self.pushes: list[Any] = []  # CommitInfo of every successful in-progress push

    def __repr__(self) -> str:  # never show the token
        return f"HubPushCallback(repo_id={self.repo_id!r}, strategy={self.strategy!r}, revision={self.revision!r})"

    @classmethod
    def from_training_args(cls, args: Any, **kwargs: Any) -> "HubPushCallback | None":
        """Build from ``args.push_to_hub`` / ``hub_model_id`` / ``hub_strategy`` ...; ``None`` if not pushing."""
        if not getattr(args, "push_to_hub", False):
            return None
        settings = _hub_settings(args)
        return cls(
            settings["repo_id"], strategy=settings["strategy"], private=settings["private"],
            token=settings["token"], revision=settings["revision"], **kwargs,
        )

    def on_save(self, args, state, control, **kwargs):
        if self.strategy != "every_save" or not getattr(state, "is_world_process_zero", True):
            return control
        step = int(getattr(state, "global_step", 0))
        output_dir = Path(args.output_dir)
        with tempfile.TemporaryDirectory(prefix="paka-hub-") as staging:
            staging_dir = Path(staging)
            if self.export_fn is not None:
                self.export_fn(str(staging_dir))
            else:
                self._copy_checkpoint_export(output_dir / f"checkpoint-{step}", staging_dir)
            for name in (TRAINING_CONFIG_FILE, TRAINING_SUMMARY_FILE):
                if (output_dir / name).is_file():
                    shutil.copy2(output_dir / name, staging_dir / name)
            if (output_dir / PICTURES_DIR).is_dir():
                shutil.copytree(output_dir / PICTURES_DIR, staging_dir / PICTURES_DIR)
            try:
                info = self.push_fn(
                    staging_dir, self.repo_id, private=self.private, revision=self.revision, token=self._token,
                    commit_message=f"Training in progress, step {step}", **self.push_kwargs,
                )
            except HubAuthenticationError:
                raise
            except Exception as err:  # noqa: BLE001 - a failed intermediate push must not end training
                logger.error("Hub push at step %d failed, training continues: %s", step, err)
                return control
        self.pushes.append(info)
        return control

    @staticmethod
    def _copy_checkpoint_export(checkpoint: Path, staging: Path) -> None:
        config = checkpoint / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        if model_type not in _SUPPORTED_MODEL_TYPES or not (checkpoint / "model.safetensors").is_file():
            raise RuntimeError(
                f"{checkpoint} does not hold a plain DINOv2 export (config.json + model.safetensors); give "
                "HubPushCallback an export_fn, e.g. lambda d: paka_hf.hub.save_backbone(student_backbone, d)."
            )
        for name in EXPORT_FILES:
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, staging / name)
        if not (staging / "preprocessor_config.json").is_file():
            default_image_processor().save_pretrained(staging)


class HubPushMixin:
    """Route a ``Trainer`` subclass's Hub settings through :mod:`paka_hf.hub` instead of ``Trainer``'s own push.

    ``Trainer`` would upload the whole output folder (``training_args.bin`` is a pickle, checkpoints hold the
    teacher and head) and overwrite ``README.md`` with its generic card. Put this mixin before ``Trainer``
    and define ``export_backbone(output_dir)``::

        class PaKATrainer(HubPushMixin, Trainer):
            def export_backbone(self, output_dir):
                save_backbone(self.student_backbone, output_dir, self.processing_class)

    Then, with ``push_to_hub=True`` in the arguments: ``hub_strategy="every_save"`` pushes the exported backbone
    at every save (a :class:`HubPushCallback` is added when ``Trainer.__init__`` calls ``init_hf_repo``);
    ``trainer.push_to_hub(eval_results=[...])`` after evaluation exports and pushes with the PaKA card
    (``trainer.save_model()`` calls it too, as in ``Trainer``). The repository is created by the first push.
    """

    def export_backbone(self, output_dir: str) -> None:  # pragma: no cover - the trainer defines it
        raise NotImplementedError(
            f"{type(self).__name__} must define export_backbone(output_dir), e.g. "
            "paka_hf.hub.save_backbone(student_backbone, output_dir, processing_class)"
        )

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        self.hub_model_id = self.args.hub_model_id
        self.push_in_progress = None
        _hub_settings(self.args)  # fail at start-up, not at the first save, on a bad hub_strategy / missing id
        callback = HubPushCallback.from_training_args(self.args, export_fn=self.export_backbone)
        if callback is not None and callback.strategy == "every_save":
            self.add_callback(callback)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        return  # HubPushCallback pushes the exported backbone, not the checkpoint folder

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
        **kwargs: Any,
    ):
        """Export the backbone to ``args.output_dir`` and push it with the PaKA card (process zero only)."""
        if not self.is_world_process_zero():
            return None
        if getattr(self.args, "hub_model_id", None) is None:
            raise ValueError("set hub_model_id (org/name) in the training config to push to the Hub")
        settings = _hub_settings(self.args)
        self.export_backbone(self.args.output_dir)
        return push_to_hub(
            self.args.output_dir,
            settings["repo_id"],
            private=settings["private"] if private is None else private,
            eval_results=eval_results,
            revision=revision or settings["revision"],
            token=token or settings["token"],
            commit_message=commit_message or "End of training",
            **kwargs,
        )

