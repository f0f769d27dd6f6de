"""What every recipe shares inside a Ray Train worker: the TRL trainer, checkpoints, progress.

A recipe builds its model and hands it to `make_trainer`, which wraps TRL's
`SFTTrainer` (transformers' loop: accumulation, mixed precision, gradient
checkpointing, schedulers) for Ray Train with `prepare_trainer`. Then
`train` runs it:

- every checkpoint the trainer saves is reported to Ray Train (rank 0 uploads
  it to the run's storage under the job's output; every worker reports, as Ray
  Train requires), with `slmops.json` naming the phase and step;
- a worker group restarted by the `FailureConfig` finds that checkpoint with
  `ray.train.get_checkpoint()` and resumes from it: model, optimizer,
  scheduler, data order and step, and says so in the job's events;
- rank 0 prints progress lines (step, loss, validation loss, tokens/s, ETA).

`finish` reports the final model as the run's last checkpoint. This module
runs in workers and the job's driver only; the service never imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from slmops.core.progress import Progress
from slmops.training.config import TrainingConfig
from slmops.training.data import Example, collate

STATE_FILE = "slmops.json"  # inside every Ray checkpoint: {"phase", "step", "final", "done"}
HF_DIR = "checkpoint"  # the transformers checkpoint inside a Ray checkpoint
DONE_DIR = "done"  # finished phases' outputs (multi-adapter), carried by every later checkpoint
MODEL_DIR = "model"  # the final output inside the final Ray checkpoint
LOG_POINTS = 20  # progress lines per phase


@dataclass
class WorkerContext:
    """One worker's view of the run."""

    config: TrainingConfig
    rank: int
    world: int
    device: Any
    work_dir: str
    progress: Progress | None  # rank 0 only
    restored: str | None = None  # local copy of the Ray checkpoint this run resumes from
    state: dict[str, Any] = field(default_factory=dict)  # that checkpoint's slmops.json
    extra_callbacks: list[Any] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def done_dir(self) -> str:
        """Where finished phases' outputs live locally (restored ones included)."""
        path = os.path.join(self.work_dir, DONE_DIR)
        os.makedirs(path, exist_ok=True)
        return path


def worker_context(config: TrainingConfig, progress: Progress | None) -> WorkerContext:
    """This worker's context; restores the last Ray checkpoint when the run resumes."""
    import ray.train
    import ray.train.torch
    import torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    work = tempfile.mkdtemp(prefix=f"slmops-train-{rank}-")
    ctx = WorkerContext(
        config=config,
        rank=rank,
        world=world,
        device=ray.train.torch.get_device(),
        work_dir=work,
        progress=progress if rank == 0 else None,
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        restored = os.path.join(work, "restored")
        with checkpoint.as_directory() as folder:
            shutil.copytree(folder, restored)
        ctx.restored = restored
        ctx.state = json.loads(Path(restored, STATE_FILE).read_text())
        if Path(restored, DONE_DIR).is_dir():
            shutil.copytree(Path(restored, DONE_DIR), ctx.done_dir(), dirs_exist_ok=True)
    return ctx


class Collator:
    """Rows of the training dataset (dicts of an Example's fields) to padded tensors."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return collate([Example(**row) for row in rows], self.pad_token_id)


def to_dataset(examples: list[Example]) -> Any:
    """A `datasets.Dataset` of tokenized examples (top-k columns only when present)."""
    from datasets import Dataset

    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    if any(e.top_ids for e in examples):
        for row, example in zip(rows, examples):
            row["top_ids"] = example.top_ids or [[] for _ in example.input_ids]
            row["top_logprobs"] = example.top_logprobs or [[] for _ in example.input_ids]
    return Dataset.from_list(rows)


def _strategy(every: int) -> dict[str, Any]:
    return {"strategy": "steps", "steps": every} if every else {"strategy": "epoch", "steps": 1}


def trainer_args(ctx: WorkerContext, phase: str, has_eval: bool, **overrides: Any) -> Any:
    """TRL's SFTConfig from the spec's hyperparameters."""
    from trl import SFTConfig

    hp = ctx.config.hyperparameters
    save = _strategy(hp.checkpoint_every)
    evaluate = _strategy(hp.eval_every or hp.checkpoint_every)
    early = hp.early_stopping_patience > 0 and has_eval
    if early:
        evaluate = save  # the best model is chosen among the saved ones
    on_gpu = ctx.device.type == "cuda"
    args: dict[str, Any] = {
        "output_dir": os.path.join(ctx.work_dir, "hf", phase),
        "per_device_train_batch_size": hp.batch_size // ctx.world,
        "per_device_eval_batch_size": hp.batch_size // ctx.world,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "learning_rate": hp.learning_rate,
        "weight_decay": hp.weight_decay,
        "warmup_steps": hp.warmup_ratio,  # below 1: a share of the run's steps
        "lr_scheduler_type": "cosine",
        "num_train_epochs": hp.epochs,
        "max_steps": hp.max_steps or -1,
        "max_grad_norm": hp.max_grad_norm,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "bf16": hp.precision == "bf16",
        "fp16": hp.precision == "fp16" and on_gpu,
        "gradient_checkpointing": hp.gradient_checkpointing,
        "logging_steps": 1.0 / LOG_POINTS,
        "logging_first_step": True,
        "save_strategy": save["strategy"],
        "save_steps": save["steps"],
        "save_total_limit": 2 if early else 1,
        "eval_strategy": evaluate["strategy"] if has_eval else "no",
        "eval_steps": evaluate["steps"],
        "load_best_model_at_end": early,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not on_gpu,
        "ddp_find_unused_parameters": False,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "max_length": hp.max_seq_length,
        "packing": hp.packing,
        "dataset_kwargs": {} if hp.packing else {"skip_prepare_dataset": True},
        "save_only_model": False,
    }
    args.update(overrides)
    return SFTConfig(**args)


def make_trainer(
    ctx: WorkerContext,
    phase: str,
    model: Any,
    tokenizer: Any,
    train: list[Example],
    validation: list[Example],
    trainer_cls: Any = None,
    **args: Any,
) -> Any:
    """A TRL trainer for this phase, prepared for Ray Train, with our callbacks."""
    from ray.train.huggingface.transformers import prepare_trainer
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    has_eval = bool(validation)
    config = trainer_args(ctx, phase, has_eval, **args)
    callbacks: list[Any] = [CheckpointReporter(ctx, phase), ProgressReporter(ctx, phase, train)]
    if config.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(ctx.config.hyperparameters.early_stopping_patience))
    callbacks.extend(ctx.extra_callbacks)
    trainer = (trainer_cls or SFTTrainer)(
        model=model,
        args=config,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(validation) if has_eval else None,
        processing_class=tokenizer,
        data_collator=None if ctx.config.hyperparameters.packing else Collator(tokenizer.pad_token_id),
        callbacks=callbacks,
    )
    return prepare_trainer(trainer)


def resume_point(ctx: WorkerContext, phase: str) -> str | None:
    """The transformers checkpoint to resume this phase from, if the run was restored mid-phase."""
    if ctx.restored and ctx.state.get("phase") == phase and not ctx.state.get("final"):
        folder = os.path.join(ctx.restored, HF_DIR)
        return folder if os.path.isdir(folder) else None
    return None


def train(ctx: WorkerContext, trainer: Any, phase: str) -> dict[str, float]:
    """Run (or resume) the trainer; the phase's metrics."""
    resume = resume_point(ctx, phase)
    if resume and ctx.progress:
        ctx.progress(
            ctx.state.get("fraction", 0.0),
            f"resumed {phase} from step {ctx.state['step']} after a worker failure",
            resumed_from_step=float(ctx.state["step"]),
        )
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    metrics = {
        "train_loss": float(losses[-1]) if losses else float(output.training_loss),
        "initial_loss": float(losses[0]) if losses else float("nan"),
        "steps": float(trainer.state.global_step),
        "train_seconds": seconds,
        "tokens_per_second": _tokens_per_second(trainer, seconds),
    }
    if resume:
        metrics["resumed_from_step"] = float(ctx.state["step"])
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    elif evals:
        metrics["eval_loss"] = float(evals[-1])
    return metrics


def _tokens_per_second(trainer: Any, seconds: float) -> float:
    reporter = next((c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressReporter)), None)
    tokens = reporter.tokens_done(trainer.state.global_step) if reporter else 0.0
    return tokens / seconds if seconds > 0 else 0.0


def _state(phase: str, step: int, ctx: WorkerContext, **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "step": step, "final": False, **extra}


class CheckpointReporter(TrainerCallback):
    """Reports each saved transformers checkpoint to Ray Train (rank 0 uploads it)."""

    def __init__(self, ctx: WorkerContext, phase: str):
        self.ctx, self.phase = ctx, phase

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import ray.train
        from transformers.trainer_utils import get_last_checkpoint

        latest = _latest(state.log_history)
        metrics = {"step": float(state.global_step)}
        for key, name in (("loss", "train_loss"), ("eval_loss", "eval_loss")):
            if key in latest:
                metrics[name] = float(latest[key])
        if not self.ctx.is_main:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="slmops-ckpt-") as folder:
            source = get_last_checkpoint(args.output_dir)
            if source:
                shutil.copytree(source, os.path.join(folder, HF_DIR))
            if os.listdir(self.ctx.done_dir()):
                shutil.copytree(self.ctx.done_dir(), os.path.join(folder, DONE_DIR))
            fraction = state.global_step / max(1, state.max_steps)
            Path(folder, STATE_FILE).write_text(
                json.dumps(_state(self.phase, state.global_step, self.ctx, fraction=fraction))
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        if self.ctx.progress:
            self.ctx.progress(fraction, f"{self.phase}: checkpoint at step {state.global_step}", **metrics)


def _latest(history: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for entry in history:
        merged.update(
            {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
    return merged


class ProgressReporter(TrainerCallback):
    """Rank 0's progress lines: step, loss, validation loss, tokens/s and ETA."""

    def __init__(self, ctx: WorkerContext, phase: str, examples: list[Example]):
        self.ctx, self.phase = ctx, phase
        self.tokens_per_epoch = float(sum(len(e.input_ids) for e in examples))
        self.steps_per_epoch = 1.0
        self.started = time.perf_counter()
        self.first_step = 0

    def tokens_done(self, step: int) -> float:
        return (step - self.first_step) / self.steps_per_epoch * self.tokens_per_epoch

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()
        self.first_step = state.global_step
        self.steps_per_epoch = max(1.0, state.max_steps / max(1e-9, args.num_train_epochs))
        if args.max_steps and args.max_steps > 0:
            loader = kwargs.get("train_dataloader")
            if loader is not None:
                self.steps_per_epoch = max(1.0, len(loader) / args.gradient_accumulation_steps)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not self.ctx.progress or not logs or "train_runtime" in logs:
            return
        elapsed = time.perf_counter() - self.started
        done = state.global_step - self.first_step
        metrics = {"step": float(state.global_step)}
        if "eval_loss" in logs:
            metrics["eval_loss"] = float(logs["eval_loss"])
            message = f"{self.phase}: validation loss {logs['eval_loss']:.4f} at step {state.global_step}"
        else:
            for key in ("loss", "learning_rate", "grad_norm"):
                if isinstance(logs.get(key), (int, float)):
                    metrics["train_loss" if key == "loss" else key] = float(logs[key])
            if done > 0 and elapsed > 0:
                metrics["tokens_per_second"] = self.tokens_done(state.global_step) / elapsed
                metrics["eta_seconds"] = (state.max_steps - state.global_step) * elapsed / done
            epoch = min(args.num_train_epochs, int(state.epoch or 0) + 1)
            message = f"{self.phase}: epoch {epoch:g}/{args.num_train_epochs:g}, step {state.global_step}/{state.max_steps}"
        self.ctx.progress(state.global_step / max(1, state.max_steps), message, **metrics)


def finish(ctx: WorkerContext, save: Any, metrics: dict[str, float]) -> None:
    """Rank 0 saves the output with save(folder) and reports it as the final checkpoint; all report."""
    import ray.train

    if not ctx.is_main:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="slmops-final-") as folder:
        save(os.path.join(folder, MODEL_DIR))
        Path(folder, STATE_FILE).write_text(json.dumps({"phase": "final", "step": -1, "final": True}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def report_phase_done(ctx: WorkerContext, phase: str, metrics: dict[str, float]) -> None:
    """After a phase whose output rank 0 put in done_dir: a checkpoint carrying every finished phase."""
    import ray.train

    if not ctx.is_main:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="slmops-done-") as folder:
        shutil.copytree(ctx.done_dir(), os.path.join(folder, DONE_DIR))
        Path(folder, STATE_FILE).write_text(
            json.dumps({"phase": phase, "step": -1, "final": False, "done": True})
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    if ctx.progress:
        ctx.progress(1.0, f"{phase}: done", **metrics)
