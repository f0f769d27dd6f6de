"""The supervised recipe (SFT distillation and full fine-tuning) on Ray Train.

`fit` runs `train_loop` on every worker of a `TorchTrainer`: a plain PyTorch
loop (AdamW, linear warm-up then cosine decay, gradient clipping, seeded) on
the tokenized examples the driver put in the object store. Rank 0 prints
progress lines; every worker reports metrics to Ray Train once per epoch (a
report waits for the controller's next poll, about 2 s, so per-step reports
would stall small models); at the end rank 0 saves model and tokenizer as
safetensors and reports them as the run's `ray.train.Checkpoint`.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from slmops.core.errors import SlmopsError
from slmops.core.progress import Progress, scaled, stdout_progress
from slmops.training.data import IGNORE_INDEX, Example, collate
from slmops.training.spec import TrainingConfig


class WorkerFailed(RuntimeError):
    """A training worker could not do its work; the message says why."""


PROGRESS_START, PROGRESS_END = 0.1, 0.9  # share of the job's progress the loop covers
LOG_POINTS = 20  # progress lines per run


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


def optimizer_steps(batches_per_epoch: int, config: TrainingConfig) -> int:
    """Optimizer steps of the run: each epoch ends with a step on its last (partial) group."""
    hp = config.hyperparameters
    total = hp.epochs * math.ceil(batches_per_epoch / hp.gradient_accumulation_steps)
    return min(total, hp.max_steps) if hp.max_steps else total


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; biases and norm weights (1-D) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _all_sum(values: list[float]) -> list[float]:
    """Sum values over all workers (identity with a single worker)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


@dataclass
class _Worker:
    """Everything one worker trains with."""

    config: TrainingConfig
    rank: int
    world: int
    device: Any
    model: Any  # as prepared by Ray Train (DistributedDataParallel with several workers)
    core: Any  # the underlying transformers model
    tokenizer: Any
    sampler: Any
    loader: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    total_steps: int
    progress: Progress | None  # rank 0 only


def _setup(loop_config: dict[str, Any]) -> tuple[_Worker, list[Example]]:
    """Model, data loader and optimizer of this worker; and its share of validation examples."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from slmops.training import model_init

    config = TrainingConfig.model_validate(loop_config["config"])
    hp = config.hyperparameters
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    train_examples, val_examples = ray.get(loop_config["examples"])

    model_dir = model_init.resolve_model(config.base.model)
    tokenizer = model_init.load_tokenizer(model_dir)
    core = model_init.load_model(config.base, model_dir, tokenizer, hp.seed)
    model = ray.train.torch.prepare_model(core)
    pad_id = tokenizer.pad_token_id
    sampler = DistributedSampler(train_examples, num_replicas=world, rank=rank, shuffle=True, seed=hp.seed)
    loader = DataLoader(
        train_examples,
        batch_size=hp.batch_size // world,
        sampler=sampler,
        collate_fn=lambda rows: collate(rows, pad_id),
    )
    total_steps = optimizer_steps(len(loader), config)
    warmup_steps = int(hp.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(_param_groups(core, hp.weight_decay), lr=hp.learning_rate)
    worker = _Worker(
        config=config,
        rank=rank,
        world=world,
        device=ray.train.torch.get_device(),
        model=model,
        core=core,
        tokenizer=tokenizer,
        sampler=sampler,
        loader=loader,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup_steps, total_steps)
        ),
        scaler=torch.amp.GradScaler(ray.train.torch.get_device().type, enabled=hp.precision == "fp16"),
        total_steps=total_steps,
        progress=scaled(stdout_progress, PROGRESS_START, PROGRESS_END) if rank == 0 else None,
    )
    return worker, val_examples[rank::world]


def _optimizer_step(w: _Worker) -> None:
    import torch

    w.scaler.unscale_(w.optimizer)
    torch.nn.utils.clip_grad_norm_(w.model.parameters(), w.config.hyperparameters.max_grad_norm)
    w.scaler.step(w.optimizer)
    w.scaler.update()
    w.optimizer.zero_grad(set_to_none=True)
    w.scheduler.step()


def _train(w: _Worker) -> dict[str, float]:
    """The epochs; metrics of the run (losses averaged over workers and log intervals)."""
    import ray.train
    import torch

    hp = w.config.hyperparameters
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(hp.precision)
    log_every = max(1, w.total_steps // LOG_POINTS)
    torch.manual_seed(hp.seed + w.rank)
    w.model.train()
    step, tokens, first_loss, last_loss = 0, 0.0, float("nan"), float("nan")
    window = [0.0, 0.0]  # loss sum and micro-batch count since the last log point
    started = time.perf_counter()
    for epoch in range(hp.epochs):
        w.sampler.set_epoch(epoch)
        for index, batch in enumerate(w.loader):
            batch = {k: v.to(w.device) for k, v in batch.items()}
            with torch.autocast(w.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = w.model(**batch).loss
            w.scaler.scale(loss / hp.gradient_accumulation_steps).backward()
            tokens += float(batch["attention_mask"].sum())
            window = [window[0] + loss.item(), window[1] + 1]
            if (index + 1) % hp.gradient_accumulation_steps and index + 1 < len(w.loader):
                continue
            _optimizer_step(w)
            step += 1
            if step == 1 or step % log_every == 0 or step == w.total_steps:
                loss_sum, count = _all_sum(window)
                last_loss, window = loss_sum / count, [0.0, 0.0]
                first_loss = last_loss if step == 1 else first_loss
                if w.progress:
                    w.progress(
                        step / w.total_steps,
                        f"epoch {epoch + 1}/{hp.epochs}, step {step}/{w.total_steps}",
                        train_loss=last_loss,
                        learning_rate=w.scheduler.get_last_lr()[0],
                    )
            if step >= w.total_steps:
                break
        if step >= w.total_steps:
            break
        ray.train.report({"train_loss": last_loss, "step": step, "epoch": epoch + 1})
    train_seconds = time.perf_counter() - started
    (all_tokens,) = _all_sum([tokens])
    return {
        "train_loss": last_loss,
        "initial_loss": first_loss,
        "steps": float(step),
        "train_seconds": train_seconds,
        "tokens_per_second": all_tokens / train_seconds if train_seconds > 0 else 0.0,
        "parameters": float(sum(p.numel() for p in w.core.parameters())),
    }


def evaluate(model: Any, examples: list[Example], batch_size: int, pad_id: int, device: Any) -> float:
    """Mean loss per completion token over examples, across workers; NaN with none."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, tokens = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            rows = examples[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            loss_sum += F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels.flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            tokens += float((labels != IGNORE_INDEX).sum())
    model.train()
    loss_sum, tokens = _all_sum([loss_sum, tokens])
    return loss_sum / tokens if tokens else float("nan")


def _save_and_report(w: _Worker, metrics: dict[str, float]) -> None:
    """Rank 0 saves model and tokenizer (safetensors); every worker makes the final report."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="slmops-ckpt-") as out:
        checkpoint = None
        if w.rank == 0:
            w.core.save_pretrained(out)
            w.tokenizer.save_pretrained(out)
            checkpoint = ray.train.Checkpoint.from_directory(out)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop(loop_config: dict[str, Any]) -> dict[str, float]:
    """The per-worker training function run by the TorchTrainer; returns the run's metrics."""
    try:
        worker, validation = _setup(loop_config)
    except SlmopsError as exc:
        # Domain errors do not survive pickling across Ray; their message does.
        raise WorkerFailed(str(exc)) from None
    metrics = _train(worker)
    batch_size = worker.config.hyperparameters.batch_size // worker.world
    eval_loss = evaluate(worker.core, validation, batch_size, worker.tokenizer.pad_token_id, worker.device)
    if not math.isnan(eval_loss):
        metrics["eval_loss"] = eval_loss
    if worker.progress:
        worker.progress(1.0, "training done; saving the checkpoint", **metrics)
    _save_and_report(worker, metrics)
    return metrics


def _failure_summary(error: Exception) -> str:
    """The first worker's error in one line, without the tracebacks Ray Train adds."""
    failures = getattr(error, "worker_failures", None) or {}
    cause = next(iter(failures.values()), error)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0] or "Failed" in line.split(":")[0]]
    return (errors or lines or [type(cause).__name__])[-1][:500]


def fit(
    config: TrainingConfig,
    examples: tuple[list[Example], list[Example]],
    storage_dir: str,
    progress: Progress,
) -> tuple[str, dict[str, float]]:
    """Train on Ray Train; (local folder of the saved checkpoint, final metrics)."""
    import ray
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Worker print() would otherwise reach the log twice (Ray Train tees it to its logger).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    res = config.resources
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    if res.memory_bytes:
        per_worker["memory"] = float(res.memory_bytes)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config.model_dump(), "examples": ray.put(examples)},
        scaling_config=ScalingConfig(
            num_workers=res.num_workers,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(storage_path=storage_dir, name="train"),
    )
    progress(PROGRESS_START / 2, f"starting {res.num_workers} Ray Train worker(s)")
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise RuntimeError(f"training failed: {_failure_summary(exc)}") from exc
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    metrics = result.return_value or result.metrics or {}
    return result.checkpoint.path, {k: float(v) for k, v in metrics.items()}
