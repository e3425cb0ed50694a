"""The shared training loop as named stages, on accelerate.

`Trainer.fit -> setup -> (train_step -> compute_loss) x N -> evaluate / checkpoint -> finish`.
The same code runs on the CPU, one GPU or many processes (the unlabeled pool is sharded by rank;
only rank 0 writes). Model selection uses held-out PU validation data, never gold labels.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from dallmi_core.config import TrainingBase
from dallmi_core.errors import RunStateError
from dallmi_core.method.sampling import UnlabeledStream
from dallmi_core.method.step import bce_step
from dallmi_core.modeling.model import Classifier, eager_attention, resolve_device, unwrap
from dallmi_core.modeling.precision import cpu_bf16, resolve_precision
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.callbacks import Callback, CallbackList, TrainState
from dallmi_core.training.distributed import gather
from dallmi_core.training.pu_split import PUSplit

CHECKPOINT_FILE = "trainer_state.pt"


def make_accelerator(device: str, precision: str) -> Accelerator:
    """device auto: cuda > mps > cpu; precision auto: see `precision.resolve_precision`."""
    device_type = resolve_device(device)
    cpu = device_type == "cpu"
    precision = resolve_precision(precision, device_type)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one process-wide state that refuses another device or precision; a
        # long-lived process (the worker, a test session) starts every run from a clean one.
        # Under torchrun/accelerate launch the distributed state must stay as it is.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=cpu, mixed_precision=precision)


@dataclass
class TrainResult:
    clf: Classifier
    state: TrainState
    split: PUSplit | None = None
    extras: dict = field(default_factory=dict)


class Trainer:
    """The shared loop; subclasses provide `compute_loss` and the step budget."""

    stage = "train"

    def __init__(
        self,
        clf: Classifier,
        tokens: TokenizedCorpus,
        cfg: TrainingBase,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | os.PathLike | None = None,
    ):
        self.clf, self.tokens, self.cfg = clf, tokens, cfg
        self.callbacks = CallbackList(list(callbacks))
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.accelerator = make_accelerator(cfg.device, cfg.precision)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.best_weights: dict[str, torch.Tensor] | None = None

    # -- stages ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        self.setup()
        self.callbacks.on_train_begin(self.state)
        if self.state.step == 0 and self.evaluates:
            self.evaluate()
        while self.state.step < self.state.max_steps and not self.state.should_stop:
            self.train_step()
            if self.evaluates and (
                self.state.step % self.cfg.eval_every == 0 or self.state.step == self.state.max_steps
            ):
                self.evaluate()
            if self.callbacks.on_checkpoint(self.state):
                self.save_checkpoint()
        if self.state.should_stop and self.state.stop_reason == "cancelled":
            self.save_checkpoint()  # a cancelled run can be resumed without losing its steps
        return self.finish()

    def setup(self) -> None:
        set_seed(self.cfg.seed + self.rank)
        model = self.clf.model
        model.train()
        optimizer = torch.optim.AdamW(
            self.param_groups(unwrap(model)), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        max_steps = self.step_budget()
        from transformers import get_linear_schedule_with_warmup

        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.cfg.warmup_ratio * max_steps), max_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.device = self.accelerator.device
        self.state = TrainState(stage=self.stage, max_steps=max_steps)
        self.maybe_resume()

    def train_step(self) -> None:
        eager = cpu_bf16(self.device.type, self.accelerator.mixed_precision)
        with self.accelerator.autocast(), eager_attention(self.model, enabled=eager):
            loss, parts = self.compute_loss()
        self.accelerator.backward(loss)
        if self.cfg.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.parts = parts
        self.state.epoch = self.epoch_progress()
        self.callbacks.on_step_end(self.state)

    def finish(self) -> TrainResult:
        if self.best_weights is not None:
            unwrap(self.model).load_state_dict(self.best_weights)
        self.callbacks.on_train_end(self.state)
        # accelerate's mixed precision patches the model's forward with autocast; the model handed back
        # must be the plain one, or every later forward (the int8 scoring copy too) runs under it
        self.clf.model = self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
        self.clf.model.eval()
        if self.state.step:
            self.clf.model.config.dallmi_fresh_head = False
        extras = {"unlabeled_shard": self.unlabeled_shard().tolist(), "precision": self.accelerator.mixed_precision}
        return TrainResult(self.clf, self.state, getattr(self, "split", None), extras)

    # -- hooks for subclasses ------------------------------------------------------------------
    evaluates = False

    def param_groups(self, model) -> list[dict]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def step_budget(self) -> int:
        raise NotImplementedError

    def compute_loss(self):
        raise NotImplementedError

    def epoch_progress(self) -> float:
        return 0.0

    def validation_metrics(self) -> dict:
        return {}

    def sampler_state(self) -> dict:
        return {}

    def load_sampler_state(self, state: dict) -> None: ...

    def unlabeled_shard(self) -> np.ndarray:
        """This rank's slice of the training documents (under data parallelism: disjoint per rank)."""
        return np.empty(0, dtype=np.int64)

    # -- model selection -----------------------------------------------------------------------
    def evaluate(self) -> None:
        metrics = self.validation_metrics()
        score = metrics.get("selection_score")
        improved = score is not None and (self.state.best_score is None or score > self.state.best_score + 1e-9)
        if improved:
            self.state.best_score, self.state.best_step = score, self.state.step
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(self.model).state_dict().items()}
        metrics = {"step": self.state.step, **metrics, "improved": improved}
        self.state.history.append(metrics)
        self.callbacks.on_evaluate(self.state, metrics)

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        samplers = gather(self.sampler_state())  # every rank's stream, so each resumes its own shard
        if not self.accelerator.is_main_process:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "step": self.state.step,
            "history": self.state.history,
            "best_step": self.state.best_step,
            "best_score": self.state.best_score,
            "model": unwrap(self.model).state_dict(),
            "best": self.best_weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": samplers,
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
        }
        tmp = self.checkpoint_dir / (CHECKPOINT_FILE + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.checkpoint_dir / CHECKPOINT_FILE)  # a kill never leaves half a file

    def maybe_resume(self) -> None:
        path = self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None
        if path is None or not path.exists():
            return
        try:  # tensors and plain values only: a pickled object in a tampered file is never run
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise RunStateError(
                f"Checkpoint {path} cannot be resumed: it is not a checkpoint of this tool "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}); start a new run."
            ) from exc
        if payload["config"] != self.cfg.to_dict():
            raise RunStateError(f"Checkpoint {path} was written with another configuration; start a new run.")
        unwrap(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        samplers = payload["sampler"]
        if isinstance(samplers, dict):  # written before checkpoints held one stream per rank
            samplers = [samplers]
        if len(samplers) != self.world:
            raise RunStateError(
                f"Checkpoint {path} was written by {len(samplers)} processes, this run has {self.world}; "
                "resume it with as many processes, or start a new run."
            )
        self.load_sampler_state(samplers[self.rank])
        torch.set_rng_state(payload["torch_rng"])
        self.best_weights = payload["best"]
        self.state.step = self.state.resumed_from = payload["step"]
        self.state.history, self.state.best_step, self.state.best_score = (
            payload["history"],
            payload["best_step"],
            payload["best_score"],
        )


def steps_for_epochs(epochs: float, pool: int, batch_size: int, world: int) -> int:
    """Optimizer steps for `epochs` passes over `pool` documents split across `world` processes."""
    return max(1, math.ceil(epochs * pool / (batch_size * world)))


class BceTrainer(Trainer):
    """BCE over one document stream (`self.stream`, `self.targets`): source fine-tuning and the
    BCE target baselines."""

    stream: UnlabeledStream
    targets: np.ndarray

    def compute_loss(self):
        batch = self.stream.next()
        return bce_step(self.model, self.tokens, batch, self.targets[batch], self.device)

    def epoch_progress(self):
        return self.stream.progress

    def unlabeled_shard(self):
        return self.stream.pool

    def sampler_state(self):
        return {"stream": self.stream.state_dict(), "rng": self.stream.rng.bit_generator.state}

    def load_sampler_state(self, state):
        self.stream.load_state_dict(state["stream"])
        self.stream.rng.bit_generator.state = state["rng"]
