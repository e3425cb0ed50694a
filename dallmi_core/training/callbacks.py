"""Training callbacks with no-op hooks, so the loop never branches on None and never knows the store.

Progress, cancel, checkpoints and early stopping are all callbacks; a callback ends training
by setting `state.should_stop`, and the loop then leaves through its normal exit path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TrainState:
    """What callbacks see: position, budget, the latest loss parts and validation history."""

    stage: str
    max_steps: int
    step: int = 0
    epoch: float = 0.0
    started_at: float = field(default_factory=time.monotonic)
    resumed_from: int = 0
    parts: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one dict per validation
    best_step: int | None = None
    best_score: float | None = None
    mixup: object | None = None  # the step's MixUp draws (method.mixup.MixupRecord), for a callback that logs them
    should_stop: bool = False
    stop_reason: str | None = None

    def eta_seconds(self) -> float | None:
        done = self.step - self.resumed_from
        if done <= 0:
            return None
        per_step = (time.monotonic() - self.started_at) / done
        return per_step * (self.max_steps - self.step)

    def progress(self) -> dict:
        """What a progress display shows: stage, step, budget, epoch, ETA and the latest loss parts."""
        return {
            "stage": self.stage,
            "step": self.step,
            "max_steps": self.max_steps,
            "epoch": self.epoch,
            "eta_s": self.eta_seconds(),
            **self.parts,
        }

    def stop(self, reason: str) -> None:
        self.should_stop, self.stop_reason = True, reason


class Callback:
    """Base: every hook does nothing."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_evaluate(self, state: TrainState, metrics: dict) -> None: ...

    def on_checkpoint(self, state: TrainState) -> bool:
        """Return True to ask the loop to write a checkpoint now."""
        return False

    def on_train_end(self, state: TrainState) -> None: ...


class CallbackList(Callback):
    def __init__(self, callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])

    def on_train_begin(self, state):
        for cb in self.callbacks:
            cb.on_train_begin(state)

    def on_step_end(self, state):
        for cb in self.callbacks:
            cb.on_step_end(state)

    def on_evaluate(self, state, metrics):
        for cb in self.callbacks:
            cb.on_evaluate(state, metrics)

    def on_checkpoint(self, state):
        return any([cb.on_checkpoint(state) for cb in self.callbacks])

    def on_train_end(self, state):
        for cb in self.callbacks:
            cb.on_train_end(state)


class TqdmProgress(Callback):
    """A progress bar for the command line."""

    def __init__(self, desc: str, disable: bool = False):
        self.desc, self.disable, self.bar = desc, disable, None

    def on_train_begin(self, state):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.step, desc=self.desc, disable=self.disable)

    def on_step_end(self, state):
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in state.parts.items()}, refresh=False)

    def on_train_end(self, state):
        if self.bar is not None:
            self.bar.close()


class CancelCallback(Callback):
    """Cooperative cancel: `is_cancelled()` is polled every step (e.g. a flag in the store)."""

    def __init__(self, is_cancelled: Callable[[], bool]):
        self.is_cancelled = is_cancelled

    def on_step_end(self, state):
        if self.is_cancelled():
            state.stop("cancelled")


class CheckpointEvery(Callback):
    """Ask for a resumable checkpoint every `every` steps."""

    def __init__(self, every: int):
        self.every = every

    def on_checkpoint(self, state):
        return self.every > 0 and state.step % self.every == 0 and state.step < state.max_steps


class EarlyStopping(Callback):
    """Stop when the validation score has not improved for `patience` evaluations."""

    def __init__(self, patience: int):
        self.patience, self.bad = patience, 0

    def on_train_begin(self, state):
        """On resume, count the trailing evaluations without improvement from the history."""
        self.bad = 0
        for metrics in reversed(state.history):
            if metrics.get("improved"):
                break
            self.bad += 1

    def on_evaluate(self, state, metrics):
        self.bad = 0 if metrics.get("improved") else self.bad + 1
        if self.bad >= self.patience:
            state.stop("early_stopping")
