"""Ctrl-C during training is never lost.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be. When that is inside a
finalizer (a ``__del__`` method or a ``weakref`` callback, which the garbage collector and reference drops run at
arbitrary points: a DataLoader iterator, a temporary folder, a file), the exception is printed as "Exception ignored
in ..." and dropped, and the run goes on to its last step as if the key had never been pressed.

:class:`InterruptGuard` installs a SIGINT handler for the length of ``Trainer.train`` that raises
``KeyboardInterrupt`` at once, as Python's own does, and also records the signal; as a ``TrainerCallback`` it raises
``KeyboardInterrupt`` again at the next step boundary if training is still running, and :meth:`raise_if_requested`
does so after the loop. A handler someone else installed (a notebook's, an application's) is left in place.
"""

from __future__ import annotations

import signal
import threading

from transformers import TrainerCallback


class InterruptGuard(TrainerCallback):
    """Records SIGINT during training and makes sure it stops the run; see the module docstring.

    Use::

        guard = InterruptGuard()
        trainer.add_callback(guard)
        with guard:
            trainer_loop()
        guard.raise_if_requested()
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> InterruptGuard:
        """Install the handler when SIGINT has Python's default one and this is the main thread (the only one that
        may set signal handlers)."""
        self.requested = False
        self._previous = None
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        """Put the previous handler back."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def raise_if_requested(self) -> None:
        """Raise ``KeyboardInterrupt`` if SIGINT came while the guard was installed.

        Raises:
            KeyboardInterrupt: when it did (its first raise may have been dropped by a finalizer).
        """
        if self.requested:
            raise KeyboardInterrupt

    def on_step_begin(self, args, state, control, **kwargs):
        """Stop before the step if SIGINT came and was dropped.

        Args:
            args: the run's training arguments (unused).
            state: the trainer state (unused).
            control: the trainer control (unused).
            **kwargs: the other objects ``Trainer`` passes to callbacks (unused).

        Raises:
            KeyboardInterrupt: as :meth:`raise_if_requested`.
        """
        self.raise_if_requested()

    def on_step_end(self, args, state, control, **kwargs):
        """Stop after the step (before it is logged or saved) if SIGINT came and was dropped.

        Args:
            args: the run's training arguments (unused).
            state: the trainer state (unused).
            control: the trainer control (unused).
            **kwargs: the other objects ``Trainer`` passes to callbacks (unused).

        Raises:
            KeyboardInterrupt: as :meth:`raise_if_requested`.
        """
        self.raise_if_requested()
