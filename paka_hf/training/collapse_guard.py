r"""The collapse guard: watch the student's dense features during training and warn, or stop, when they collapse.

Post-training settings meant for a random-init model (learning rate 1e-4, head learning rate 1e-3, teacher
momentum 0.99) wreck a pretrained checkpoint in a few steps while the log looks healthy: the loss falls and the
CKA rises, because two constant feature maps align perfectly. On the real DINOv2 ViT-S/14 such a run took the
mean cosine between distinct patches of an image from 0.53 to 0.96 in 10 steps, and CamVid linear mIoU from
26.5 to 4.2. The guard compares the two measures of :mod:`paka_hf.modeling.feature_stats`, computed on the
student's patch tokens at every step, with their values on the first batch (the checkpoint as loaded):

- **mean patch cosine** :math:`\bar c`: a collapse when the recent mean exceeds
  :math:`\bar c_0 + r\,(1 - \bar c_0)`, i.e. when it has closed the share :math:`r` (``collapse_cosine_rise``,
  default 0.3) of its distance to 1;
- **effective rank**: a collapse when the recent mean falls below :math:`q \cdot \operatorname{erank}_0`
  (``collapse_rank_ratio``, default 0.7).

"Recent" is the mean of the last :data:`WINDOW` steps, so one unusual batch does not trip it. Each measure
reports once. The defaults come from the real ViT-S/14 on 40 CamVid photos, 10 steps of batch 4
(``tests/test_training_collapse_guard.py`` runs both): with the demo's settings the effective rank fell from 17.6
on the first batch to a 5-step mean of 9.9 (0.57 of the start; mean patch cosine 0.51 → 0.65, 0.29 of its
distance to 1), while the CamVid recipe (``configs/repro/paka.yaml``) stayed at 0.86 of its start (27.7 of 32.4)
and its mean patch cosine did not rise (0.57 → 0.55; over its first batches it ranged 0.43–0.62). The limits sit
between the two with room for the noise of a small batch; larger batches average it down.

``collapse_action: stop`` (the default) ends the run with one line naming the measure, its start and now, and the
likely cause; ``warn`` logs that line and goes on. ``stop`` is the default because a collapsed backbone is
worthless and every further step costs compute and, through checkpoint rotation, pushes the last good checkpoints
out of ``output_dir``; a false alarm costs a resume with ``--collapse_action warn``. The guard runs before
``Trainer`` logs or saves a step, so a stopped run leaves no checkpoint of collapsed weights.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from paka_hf.training.config import (
    COLLAPSE_ACTIONS,
    DEFAULT_COLLAPSE_COSINE_RISE,
    DEFAULT_COLLAPSE_RANK_RATIO,
    check_collapse_limits,
)
from paka_hf.utils.errors import PaKAUserError, check_choice

logger = logging.getLogger(__name__)

#: Steps averaged into the "now" value compared with the start.
WINDOW = 5


class FeatureCollapseError(PaKAUserError, RuntimeError):
    """Training stopped because the student's patch features collapsed (``collapse_action: stop``)."""


@dataclass
class MeasureTrack:
    """One measure's value on the first batch, its recent values and whether it has been reported.

    Args:
        name: how the measure is named in messages (``"mean patch cosine"``).
        start: the value on the first batch, or ``None`` before it.
    """

    name: str
    start: float | None = None
    reported: bool = False

    def __post_init__(self):
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.last: float | None = None

    def add(self, value: float) -> None:
        """Record this step's value (the first one becomes :attr:`start`).

        Args:
            value: the measure at this step.
        """
        if self.start is None:
            self.start = value
        self.recent.append(value)
        self.last = value

    @property
    def now(self) -> float | None:
        """The mean of the last :data:`WINDOW` values."""
        return sum(self.recent) / len(self.recent) if self.recent else None


class CollapseGuard:
    r"""Decides, step by step, whether the student's patch features are collapsing (module docstring).

    Args:
        action: ``"stop"`` (raise :class:`FeatureCollapseError`) or ``"warn"`` (log a warning and go on).
        cosine_rise: :math:`r`, the fraction of the distance from the start's mean patch cosine to 1 that
            counts as a collapse, in (0, 1].
        rank_ratio: :math:`q`, the fraction of the start's effective rank below which is a collapse, in (0, 1).
        cause: the settings to name as the likely cause, e.g. ``"learning rate 1e-04, head learning rate 1e-03,
            teacher momentum 0.99"``.

    Raises:
        ConfigError: ``action`` or a limit is out of range (a ``ValueError``).
    """

    def __init__(
        self,
        action: str = COLLAPSE_ACTIONS[0],
        cosine_rise: float = DEFAULT_COLLAPSE_COSINE_RISE,
        rank_ratio: float = DEFAULT_COLLAPSE_RANK_RATIO,
        cause: str = "",
    ):
        check_choice("collapse_action", action, COLLAPSE_ACTIONS)
        check_collapse_limits(cosine_rise, rank_ratio)
        self.action, self.cosine_rise, self.rank_ratio, self.cause = action, cosine_rise, rank_ratio, cause
        self.cosine = MeasureTrack("mean patch cosine")
        self.rank = MeasureTrack("effective rank")

    def restore(self, start_cosine: float | None, start_rank: float | None) -> None:
        """Take the start values of an earlier part of the run (a resume), so the comparison stays with the
        checkpoint as first loaded rather than with the resumed weights.

        Args:
            start_cosine: the mean patch cosine of the run's first batch, or ``None`` when not recorded.
            start_rank: the effective rank of the run's first batch, or ``None`` when not recorded.
        """
        if start_cosine is not None and start_rank is not None:
            self.cosine.start, self.rank.start = float(start_cosine), float(start_rank)

    def limits(self) -> tuple[float, float]:
        r"""``(cosine limit, rank limit)`` for the recorded start values: :math:`\bar c_0 + r\,(1 - \bar c_0)`
        and :math:`q \cdot \operatorname{erank}_0` (module docstring).

        Returns:
            The two limits; a collapse is a mean patch cosine above the first or an effective rank below the
            second.
        """
        return (
            self.cosine.start + self.cosine_rise * (1.0 - self.cosine.start),
            self.rank_ratio * self.rank.start,
        )

    def observe(self, step: int, mean_patch_cosine: float, effective_rank: float) -> str | None:
        """Record one step's measures and check them.

        Args:
            step: the optimizer step the measures were taken at (for the message).
            mean_patch_cosine: this step's mean patch cosine (the same on every process).
            effective_rank: this step's effective rank (the same on every process).

        Returns:
            The one-line message when a measure crossed its limit at this step (each measure reports once),
            else ``None``. With ``action="warn"`` the message is also logged as a warning.

        Raises:
            FeatureCollapseError: a measure crossed its limit and ``action`` is ``"stop"``.
        """
        if not (math.isfinite(mean_patch_cosine) and math.isfinite(effective_rank)):
            return None  # a non-finite loss step is the trainer's to report; the measures say nothing here
        self.cosine.add(float(mean_patch_cosine))
        self.rank.add(float(effective_rank))
        if len(self.cosine.recent) < WINDOW:
            return None
        cosine_limit, rank_limit = self.limits()
        crossed = None
        if not self.cosine.reported and self.cosine.now > cosine_limit:
            self.cosine.reported, crossed = True, (self.cosine, cosine_limit, "rose")
        elif not self.rank.reported and self.rank.now < rank_limit:
            self.rank.reported, crossed = True, (self.rank, rank_limit, "fell")
        if crossed is None:
            return None
        track, limit, moved = crossed
        message = (
            f"the student's patch features are collapsing: {track.name} {moved} from {track.start:.3g} at the "
            f"start to {track.now:.3g} at step {step} (limit {limit:.3g}). The likely cause is a setting too "
            f"aggressive for this checkpoint: {self.cause or 'the learning rate, head learning rate or teacher momentum'}; "
            "lower the learning rates or raise teacher_momentum (configs/repro/paka.yaml holds settings for a "
            "pretrained ViT-S/14)"
        )
        if self.action == "stop":
            raise FeatureCollapseError(
                f"training stopped: {message}, or set collapse_action: warn to train on regardless"
            )
        logger.warning("%s", message)
        return message

    def summary(self) -> dict[str, dict[str, float | None]]:
        """The measures at the start and at the end (mean of the last steps), for the training summary and card.

        Returns:
            ``{"mean_patch_cosine": {"start": ..., "end": ...}, "effective_rank": {"start": ..., "end": ...}}``,
            ``None`` where nothing was measured.
        """
        return {
            "mean_patch_cosine": {"start": self.cosine.start, "end": self.cosine.now},
            "effective_rank": {"start": self.rank.start, "end": self.rank.now},
        }


class CollapseGuardCallback(TrainerCallback):
    """Feeds :class:`CollapseGuard` once per optimizer step with the step's measures, the same on every process.

    :meth:`add` takes each micro-batch's measures (``PaKAOutput.mean_patch_cosine`` / ``effective_rank``, from
    ``PaKATrainer.compute_loss``); at the step's end their mean over the micro-batches and processes is checked, so
    every process reaches the same decision and a stop never leaves one process waiting in a collective. It runs
    before ``Trainer`` logs or saves that step, so a stopped run saves no checkpoint of collapsed weights.

    Args:
        guard: the guard that decides.
        reduce_sum: sums a tensor over the processes (``accelerator.reduce(t, "sum")``), or ``None`` for one process.
        last_checkpoint: says which complete checkpoint a stopped run leaves (for the message), or ``None``.
    """

    def __init__(
        self,
        guard: CollapseGuard,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
        last_checkpoint: Callable[[], str] | None = None,
    ):
        self.guard, self.reduce_sum, self.last_checkpoint = guard, reduce_sum, last_checkpoint
        self._sums: torch.Tensor | None = None  # (cosine sum, rank sum, micro-batches), on the model's device

    def add(self, mean_patch_cosine: torch.Tensor, effective_rank: torch.Tensor) -> None:
        """Add one micro-batch's measures (detached scalars; no host sync here).

        Args:
            mean_patch_cosine: the micro-batch's mean patch cosine.
            effective_rank: the micro-batch's effective rank.
        """
        values = torch.stack([mean_patch_cosine.float(), effective_rank.float(), torch.ones_like(effective_rank)])
        self._sums = values if self._sums is None else self._sums + values

    def on_step_end(self, args, state, control, **kwargs):
        """Check the step's measures, averaged over its micro-batches and the processes.

        Args:
            args: the run's training arguments (unused).
            state: the trainer state; its ``global_step`` goes into the message.
            control: the trainer control (unused).
            **kwargs: the other objects ``Trainer`` passes to callbacks (unused).

        Raises:
            FeatureCollapseError: with ``collapse_action: stop``, when the features collapse; the message names
                the last complete checkpoint.
        """
        if self._sums is None:
            return
        sums = self._sums.double()
        self._sums = None
        if self.reduce_sum is not None:
            sums = self.reduce_sum(sums)
        cosine_sum, rank_sum, count = sums.tolist()
        try:
            self.guard.observe(state.global_step, cosine_sum / count, rank_sum / count)
        except FeatureCollapseError as error:
            where = self.last_checkpoint() if self.last_checkpoint is not None else None
            raise FeatureCollapseError(f"{error}; {where}" if where else str(error)) from None
