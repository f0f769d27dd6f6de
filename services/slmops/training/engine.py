"""Runs a recipe on Ray Train: a `TorchTrainer` whose workers run `train_loop`.

Checkpoints go to the run's storage under the job's output folder (any
fsspec/pyarrow URI in a cluster), and a `FailureConfig` restarts a failed
worker group from the last one. DDP runs over gloo on CPU and nccl on GPU
(Ray Train's defaults for the device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from slmops.core.errors import SlmopsError
from slmops.core.progress import Progress, scaled, stdout_progress
from slmops.training.config import TrainingConfig

PROGRESS_START, PROGRESS_END = 0.1, 0.9  # share of the job's progress training covers
RUN_NAME = "train"


class WorkerFailed(RuntimeError):
    """A training worker could not do its work; the message says why."""


@dataclass
class FitResult:
    model_dir: str  # local folder of the final output (model or adapters)
    metrics: dict[str, float]
    storage_dir: str  # the run's checkpoints
    checkpoint_path: str = ""  # the final Ray checkpoint, in the run's storage


def train_loop(loop_config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: validate the config again, restore, run the recipe."""
    import ray

    from slmops.training import trainer_kit
    from slmops.training.recipes import registry

    try:
        config = TrainingConfig.model_validate(loop_config["config"])
        progress = scaled(stdout_progress, loop_config.get("progress_start", PROGRESS_START), PROGRESS_END)
        ctx = trainer_kit.worker_context(config, progress)
        registry.get(config.method).train(ctx, ray.get(loop_config["data"]))
    except SlmopsError as exc:
        # Domain errors do not survive pickling across Ray; their message does.
        raise WorkerFailed(str(exc)) from None


def scaling(config: TrainingConfig) -> Any:
    from ray.train import ScalingConfig

    res = config.resources
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    if res.memory_bytes:
        per_worker["memory"] = float(res.memory_bytes)
    return ScalingConfig(
        num_workers=res.num_workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
    )


def failure_summary(error: Exception) -> str:
    """The first worker's error in one line, without the tracebacks Ray Train adds."""
    failures = getattr(error, "worker_failures", None) or {}
    cause = next(iter(failures.values()), error)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0] or "Failed" in line.split(":")[0]]
    return (errors or lines or [type(cause).__name__])[-1][:500]


def storage_path(output_uri: str) -> str:
    """Ray Train's storage for a run whose output goes to output_uri: `<output>.checkpoints`."""
    target = output_uri.rstrip("/") + ".checkpoints"
    return target[len("file://") :] if target.startswith("file://") else target


def fit(
    config: TrainingConfig,
    data_ref: Any,
    storage: str,
    progress: Progress,
    *,
    run_callbacks: list[Any] | None = None,
    loop_extra: dict[str, Any] | None = None,
) -> FitResult:
    """Train on Ray Train; the final output's local folder and the run's metrics."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from slmops.training.trainer_kit import MODEL_DIR

    # Worker print() would otherwise reach the log twice (Ray Train tees it to its logger).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "data": data_ref, **(loop_extra or {})},
        scaling_config=scaling(config),
        run_config=RunConfig(
            storage_path=storage,
            name=RUN_NAME,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=run_callbacks or [],
        ),
    )
    progress(PROGRESS_START / 2, f"starting {config.resources.num_workers} Ray Train worker(s)")
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise RuntimeError(f"training failed: {failure_summary(exc)}") from exc
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    folder = result.checkpoint.to_directory()
    return FitResult(os.path.join(folder, MODEL_DIR), metrics, storage, result.checkpoint.path)


def materialize(checkpoint_path: str) -> str:
    """A local folder holding the final output of the Ray checkpoint at checkpoint_path."""
    import ray.train

    from slmops.training.trainer_kit import MODEL_DIR

    return os.path.join(ray.train.Checkpoint(checkpoint_path).to_directory(), MODEL_DIR)
