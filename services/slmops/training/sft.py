"""The supervised recipe (SFT distillation and full fine-tuning) on Ray Train.

`fit` runs `train_loop` on every worker of a `TorchTrainer`: a plain PyTorch
loop (AdamW, linear warm-up then cosine decay, gradient clipping, seeded) on
the tokenized examples the driver put in the object store. Rank 0 prints
progress lines, and at the end saves model and tokenizer as safetensors and
reports them as the run's `ray.train.Checkpoint`.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

from slmops.core.progress import Progress, scaled, stdout_progress
from slmops.training.data import Example, collate
from slmops.training.spec import TrainingConfig

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


def evaluate(model: Any, examples: list[Example], batch_size: int, pad_id: int, device: Any) -> float:
    """Mean loss per completion token over examples, across workers; NaN with none."""
    import torch
    import torch.nn.functional as F

    from slmops.training.data import IGNORE_INDEX

    model.eval()
    loss_sum, tokens = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {
                k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()
            }
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


def train_loop(loop_config: dict[str, Any]) -> dict[str, float]:
    """The per-worker training function run by the TorchTrainer."""
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
    progress = scaled(stdout_progress, PROGRESS_START, PROGRESS_END) if rank == 0 else None
    train_examples, val_examples = ray.get(loop_config["examples"])

    model_dir = model_init.resolve_model(config.base.model)
    tokenizer = model_init.load_tokenizer(model_dir)
    model = model_init.load_model(config.base, model_dir, tokenizer, hp.seed)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    core = getattr(model, "module", model)
    pad_id = tokenizer.pad_token_id

    micro_batch = hp.batch_size // world
    sampler = DistributedSampler(train_examples, num_replicas=world, rank=rank, shuffle=True, seed=hp.seed)
    loader = DataLoader(
        train_examples, batch_size=micro_batch, sampler=sampler, collate_fn=lambda rows: collate(rows, pad_id)
    )
    total_steps = optimizer_steps(len(loader), config)
    warmup_steps = int(hp.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(_param_groups(core, hp.weight_decay), lr=hp.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps)
    )
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(hp.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "fp16")
    log_every = max(1, total_steps // LOG_POINTS)

    torch.manual_seed(hp.seed + rank)
    model.train()
    step, tokens, first_loss, last_loss = 0, 0.0, float("nan"), float("nan")
    window = [0.0, 0.0]  # loss sum and micro-batch count since the last log point
    started = time.perf_counter()
    for epoch in range(hp.epochs):
        sampler.set_epoch(epoch)
        for index, batch in enumerate(loader):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
            ):
                loss = model(**batch).loss
            scaler.scale(loss / hp.gradient_accumulation_steps).backward()
            tokens += float(batch["attention_mask"].sum())
            window = [window[0] + loss.item(), window[1] + 1]
            if (index + 1) % hp.gradient_accumulation_steps and index + 1 < len(loader):
                continue
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step == 1 or step % log_every == 0 or step == total_steps:
                loss_sum, count = _all_sum(window)
                last_loss, window = loss_sum / count, [0.0, 0.0]
                first_loss = last_loss if step == 1 else first_loss
                if progress:
                    progress(
                        step / total_steps,
                        f"epoch {epoch + 1}/{hp.epochs}, step {step}/{total_steps}",
                        train_loss=last_loss,
                        learning_rate=scheduler.get_last_lr()[0],
                    )
            if step >= total_steps:
                break
        if step >= total_steps:
            break
        # One report per epoch: a report waits for the controller's poll (about 2 s).
        ray.train.report({"train_loss": last_loss, "step": step, "epoch": epoch + 1})
    train_seconds = time.perf_counter() - started
    (all_tokens,) = _all_sum([tokens])

    metrics = {
        "train_loss": last_loss,
        "initial_loss": first_loss,
        "steps": float(step),
        "train_seconds": train_seconds,
        "tokens_per_second": all_tokens / train_seconds if train_seconds > 0 else 0.0,
        "parameters": float(sum(p.numel() for p in core.parameters())),
    }
    eval_loss = evaluate(core, val_examples[rank::world], micro_batch, pad_id, device)
    if not math.isnan(eval_loss):
        metrics["eval_loss"] = eval_loss
    if progress:
        progress(1.0, "training done; saving the checkpoint", **metrics)
    with tempfile.TemporaryDirectory(prefix="slmops-ckpt-") as out:
        checkpoint = None
        if rank == 0:
            core.save_pretrained(out)
            tokenizer.save_pretrained(out)
            checkpoint = ray.train.Checkpoint.from_directory(out)
        ray.train.report(metrics, checkpoint=checkpoint)
    return metrics


def fit(
    config: TrainingConfig,
    examples: tuple[list[Example], list[Example]],
    storage_dir: str,
    progress: Progress,
) -> tuple[str, dict[str, float]]:
    """Train on Ray Train; (local folder of the saved checkpoint, final metrics)."""
    import ray
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
            num_workers=res.num_workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=RunConfig(storage_path=storage_dir, name="train"),
    )
    progress(PROGRESS_START / 2, f"starting {res.num_workers} Ray Train worker(s)")
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    metrics = result.return_value or result.metrics or {}
    return result.checkpoint.path, {k: float(v) for k, v in metrics.items()}
