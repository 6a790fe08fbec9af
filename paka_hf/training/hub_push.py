"""Hub pushes during training, through ``Trainer``'s own hooks (the way TRL's trainers override them).

``Trainer`` would upload the whole output folder (``training_args.bin`` is a pickle, checkpoints hold the
teacher and head), overwrite ``README.md`` with its generic card and create the repository at start-up
(public unless asked). :class:`HubPushMixin` keeps ``Trainer``'s flow and settings (``push_to_hub``,
``hub_model_id``, ``hub_strategy``, ``hub_private_repo``, ``hub_revision``, ``hub_always_push``) and
overrides its hooks so every push goes through :func:`paka_hf.hub.push_to_hub`:

- ``init_hf_repo``: checks the settings at start-up; creates nothing (the first push creates the
  repository with the requested visibility, and deletes it again if that first commit fails);
- ``_push_from_checkpoint`` (``hub_strategy="every_save"``, called by ``Trainer._save_checkpoint`` on
  process zero): exports the backbone to a fresh temporary folder, then uploads it **on a worker thread**.
  Training never waits for the network, and never stops for a push: an error at any point (a full disk
  while exporting, refused credentials, an unreachable Hub) is logged and training goes on. While a push
  is still running, a new save is not pushed (as in ``Trainer``; ``hub_always_push=True`` queues it);
- ``_finish_current_push`` (called by ``Trainer`` at the end of ``train``): waits for the running push;
- ``push_to_hub``: the final push (after evaluation, with its results); waits for the background push,
  exports to ``output_dir`` and pushes in the calling thread, so its errors reach the caller.

The export for an in-progress push is written on process zero inside the checkpoint save, as the
checkpoint itself is; the other processes wait at the checkpoint's barrier for that local write (seconds),
never for the upload.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from paka_hf.hub.card import find_pictures
from paka_hf.hub.push import HubAuthenticationError, push_to_hub
from paka_hf.utils.errors import ConfigError
from paka_hf.utils.files import TRAINING_CONFIG_FILE, TRAINING_SUMMARY_FILE

logger = logging.getLogger(__name__)

#: ``hub_strategy`` values paka_hf supports ('checkpoint' / 'all_checkpoints' would upload Trainer checkpoints).
SUPPORTED_STRATEGIES = ("end", "every_save")


@dataclass(frozen=True)
class HubSettings:
    """The Hub settings of a training run, read from ``TrainingArguments``-style ``args``.

    ``private`` is ``args.hub_private_repo`` as given: ``None`` (unset) leaves a new repository's visibility
    to the namespace's default.

    Args:
        repo_id: ``args.hub_model_id``, the target model repository.
        strategy: ``args.hub_strategy``, one of :data:`SUPPORTED_STRATEGIES`.
        private: ``args.hub_private_repo``.
        revision: ``args.hub_revision``, the branch to push to.
        always_push: ``args.hub_always_push``: push at a save even while the previous push still runs.
    """

    repo_id: str
    strategy: str
    private: bool | None
    revision: str | None
    always_push: bool

    @classmethod
    def from_args(cls, args: Any) -> HubSettings:
        """Read and check the Hub settings of ``args``.

        Args:
            args: the run's ``TrainingArguments`` (a :class:`~paka_hf.training.config.PaKAConfig`).

        Returns:
            The settings.

        Raises:
            ConfigError: ``hub_strategy`` is ``checkpoint`` or ``all_checkpoints``, or ``hub_model_id`` is not
                set.
        """
        strategy = getattr(args, "hub_strategy", "every_save")
        strategy = getattr(strategy, "value", strategy)  # transformers.trainer_utils.HubStrategy enum
        if strategy not in SUPPORTED_STRATEGIES:
            raise ConfigError(
                f"hub_strategy={strategy!r} is not supported by paka_hf: 'checkpoint' and 'all_checkpoints' would "
                "upload Trainer checkpoints (optimizer and RNG state are pickles, and the teacher and head are not "
                "a loadable model). Use 'every_save' (push the exported backbone at every save) or 'end'."
            )
        repo_id = getattr(args, "hub_model_id", None)
        if not repo_id:
            raise ConfigError(
                "push_to_hub is true but hub_model_id is not set; set hub_model_id: org/name in the training config."
            )
        return cls(
            repo_id=repo_id,
            strategy=strategy,
            private=getattr(args, "hub_private_repo", None),
            revision=getattr(args, "hub_revision", None),
            always_push=bool(getattr(args, "hub_always_push", False)),
        )


class BackgroundPusher:
    """Runs pushes one at a time on a worker thread; records what each did, never raises into training.

    ``pushes`` holds the ``CommitInfo`` of every successful push, ``errors`` a ``(step, exception)`` per
    failed one. After a :class:`~paka_hf.hub.HubAuthenticationError` no further push is tried (each would
    fail the same way); the final push reports it to the caller.
    """

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paka-hub-push")
        self._futures: list[Future] = []
        self._lock = threading.Lock()
        self.pushes: list[Any] = []
        self.errors: list[tuple[int, BaseException]] = []
        self.auth_failed = False

    def busy(self) -> bool:
        """Whether a submitted push is still running or waiting.

        Returns:
            ``True`` while one is.
        """
        with self._lock:
            return any(not future.done() for future in self._futures)

    def submit(self, step: int, staging: Path, push_kwargs: Mapping[str, Any]) -> Future:
        """Push ``staging`` (then delete it) on the worker thread.

        Args:
            step: the training step, for the log and :attr:`errors`.
            staging: a temporary export folder; it is deleted once the push ends.
            push_kwargs: keyword arguments of :func:`paka_hf.hub.push_to_hub` besides the folder.

        Returns:
            The push's future; it never raises (failures go to :attr:`errors`).
        """

        def job():
            try:
                info = push_to_hub(staging, **push_kwargs)
            except HubAuthenticationError as err:
                self.auth_failed = True
                self.errors.append((step, err))
                logger.error(
                    "Hub push at step %d failed, training continues without in-progress pushes: %s", step, err
                )
            except Exception as err:  # noqa: BLE001 - a failed in-progress push must never end training
                self.errors.append((step, err))
                logger.error(
                    "Hub push at step %d failed, training continues (the next save or the final push "
                    "tries again): %s: %s",
                    step,
                    type(err).__name__,
                    err,
                )
            else:
                self.pushes.append(info)
                logger.info("Hub push at step %d done: %s", step, getattr(info, "commit_url", info))
            finally:
                shutil.rmtree(staging, ignore_errors=True)

        with self._lock:
            self._futures = [f for f in self._futures if not f.done()]
            future = self._executor.submit(job)
            self._futures.append(future)
        return future

    def wait(self) -> None:
        """Block until every submitted push has finished (successfully or not)."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.result()


class HubPushMixin:
    """Route a ``Trainer`` subclass's Hub pushes through :mod:`paka_hf.hub`; see the module docstring.

    Put it before ``Trainer`` and define ``export_backbone(output_dir)`` (write ``config.json``,
    ``model.safetensors`` and ``preprocessor_config.json`` there, e.g. with
    :func:`paka_hf.hub.save_backbone`); :class:`~paka_hf.training.trainer.PaKATrainer` does::

        class PaKATrainer(HubPushMixin, Trainer):
            def export_backbone(self, output_dir):
                save_backbone(self.accelerator.unwrap_model(self.model).student, output_dir, self.processing_class)

    ``training_config.yaml`` and ``training_summary.json`` of ``args.output_dir`` go with an in-progress push
    when ``export_backbone`` does not write them, and so do the pictures of ``output_dir/pictures``.

    Where exporting needs every process (a sharded model is gathered before process zero writes it), the class
    sets :attr:`export_is_collective`: every process then takes part in each export, and process zero's decision
    to push (or to skip a push while the previous one runs) is sent to the others first.
    """

    #: Whether ``export_backbone`` is a collective call that every process must make (see the class docstring).
    export_is_collective: bool = False

    #: Extra keyword arguments of every push: card options (``license``, ``pipeline_tag``, ``notice``...)
    #: and retry settings (``max_retries``, ``backoff_s``); see :func:`paka_hf.hub.push_to_hub`.
    hub_push_options: Mapping[str, Any] = {}

    def export_backbone(self, output_dir: str | os.PathLike) -> Any:  # pragma: no cover - the trainer defines it
        """Write the loadable backbone to ``output_dir``; the class the mixin goes into defines it.

        Args:
            output_dir: the folder to write to.

        Raises:
            NotImplementedError: always, here.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must define export_backbone(output_dir), e.g. with paka_hf.hub.save_backbone"
        )

    @property
    def hub_pusher(self) -> BackgroundPusher:
        """The worker that runs this trainer's in-progress pushes (made on first use)."""
        if getattr(self, "_hub_pusher", None) is None:
            self._hub_pusher = BackgroundPusher()
        return self._hub_pusher

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Check the Hub settings at start-up (not at the first save); the repository is made by the first push.

        Args:
            token: unused: ``Trainer``'s signature; the token is ``args.hub_token`` at push time.
            private: unused likewise; the visibility is ``args.hub_private_repo``.

        Raises:
            ConfigError: as :meth:`HubSettings.from_args`.
        """
        settings = HubSettings.from_args(self.args)
        self.hub_model_id = settings.repo_id
        self.push_in_progress = None

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """``hub_strategy="every_save"``: export the backbone to a temporary folder and push it in the background."""
        collective = self.export_is_collective
        if not self.is_world_process_zero() and not collective:
            return
        settings = HubSettings.from_args(self.args)
        step = self.state.global_step
        if settings.strategy != "every_save":
            return
        push = self._should_push_now(settings, step) if self.is_world_process_zero() else None
        if collective:
            decision = [push]
            torch.distributed.broadcast_object_list(decision, src=0)
            push = decision[0]
        if not push:
            return
        if not self.is_world_process_zero():
            self.export_backbone(self.args.output_dir)  # its part of the gather; process zero alone writes
            return
        staging = None
        try:
            staging = Path(tempfile.mkdtemp(prefix="paka-hub-"))
            self.export_backbone(staging)
            _copy_run_files(Path(self.args.output_dir), staging)
        except Exception as err:  # noqa: BLE001 - a full disk or any export error must not end training
            logger.error(
                "Hub push at step %d skipped, training continues: exporting the backbone to a temporary "
                "folder failed: %s: %s",
                step,
                type(err).__name__,
                err,
            )
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            return
        self.hub_pusher.submit(step, staging, self._push_kwargs(settings, f"Training in progress, step {step}"))

    def _should_push_now(self, settings: HubSettings, step: int) -> bool:
        """Process zero: whether this save is pushed (not after refused credentials, nor while a push still runs)."""
        pusher = self.hub_pusher
        if pusher.auth_failed:
            logger.warning("Hub push at step %d skipped: the Hub refused the credentials earlier", step)
            return False
        if pusher.busy() and not settings.always_push:
            logger.info("Hub push at step %d skipped: the previous push is still running", step)
            return False
        return True

    def _finish_current_push(self) -> None:
        """Wait for the in-progress push (``Trainer`` calls this at the end of ``train`` and before a push)."""
        if getattr(self, "_hub_pusher", None) is not None:
            self._hub_pusher.wait()

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        eval_results: Iterable[str | os.PathLike | Mapping[str, Any]] = (),
        **kwargs: Any,
    ):
        """The final push: wait for in-progress pushes, export to ``args.output_dir``, push with the PaKA card.

        Process zero only (others return ``None``). ``eval_results`` and ``kwargs`` (card options, retry
        settings) go to :func:`paka_hf.hub.push_to_hub`; errors are raised, unlike in-progress pushes.

        Args:
            commit_message: the commit's title; ``"End of training"`` when empty.
            token: a Hub token overriding ``args.hub_token``.
            revision: a branch overriding ``args.hub_revision``.
            private: a visibility overriding ``args.hub_private_repo``.
            eval_results: evaluation JSON files or dicts for the model card.
            **kwargs: further keyword arguments of :func:`paka_hf.hub.push_to_hub`.

        Returns:
            The ``huggingface_hub.CommitInfo`` on process zero, ``None`` on the others.

        Raises:
            ConfigError: a bad Hub setting (:meth:`HubSettings.from_args`) or card option.
            PaKAUserError: what :func:`paka_hf.hub.push_to_hub` raises (a missing file, a public repository for
                a private push, refused credentials, ...).
        """
        if self.export_is_collective:
            self.export_backbone(self.args.output_dir)  # every process takes part; process zero writes
        if not self.is_world_process_zero():
            return None
        settings = HubSettings.from_args(self.args)
        self._finish_current_push()
        if not self.export_is_collective:
            self.export_backbone(self.args.output_dir)
        push_kwargs = self._push_kwargs(settings, commit_message or "End of training")
        if token is not None:
            push_kwargs["token"] = token
        if revision is not None:
            push_kwargs["revision"] = revision
        if private is not None:
            push_kwargs["private"] = private
        return push_to_hub(self.args.output_dir, eval_results=eval_results, **{**push_kwargs, **kwargs})

    def _push_kwargs(self, settings: HubSettings, commit_message: str) -> dict[str, Any]:
        return dict(
            repo_id=settings.repo_id,
            private=settings.private,
            revision=settings.revision,
            token=getattr(self.args, "hub_token", None),
            commit_message=commit_message,
            **self.hub_push_options,
        )


def _copy_run_files(output_dir: Path, staging: Path) -> None:
    """Copy the run's configuration, summary and pictures into an export staged for an in-progress push."""
    for name in (TRAINING_CONFIG_FILE, TRAINING_SUMMARY_FILE):
        if not (staging / name).is_file() and (output_dir / name).is_file():
            shutil.copy2(output_dir / name, staging / name)
    for picture in find_pictures(output_dir):  # skips symlinks out of output_dir
        target = staging / picture.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(output_dir / picture.path, target)
