"""The training job: what a Ray job's driver runs for one TrainingSpec.

It checks the base model and the dataset before any work, tokenizes the
dataset once, trains with the supervised recipe on Ray Train, copies the
checkpoint to the output URI and seals it as a `checkpoint` artifact.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec

from slmops.core import artifacts, tracing
from slmops.core.errors import InvalidSpec
from slmops.core.progress import Progress
from slmops.models.tiny import count_parameters
from slmops.training import data, model_init, sft
from slmops.training.spec import TrainingConfig

KIND = "checkpoint"


def prepare_examples(
    config: TrainingConfig, tokenizer: Any
) -> tuple[list[data.Example], list[data.Example], dict[str, float]]:
    """Tokenized train and validation examples, and counts worth reporting."""
    uri = config.dataset_uri
    if not data.split_exists(uri, data.TRAIN_FILE):
        raise InvalidSpec("spec.dataset_uri", f"{uri!r} has no {data.TRAIN_FILE}")
    max_len = config.hyperparameters.max_seq_length
    train = data.tokenize_records(tokenizer, data.read_records(uri, data.TRAIN_FILE), max_len)
    validation = data.TokenizedSplit()
    if data.split_exists(uri, data.VALIDATION_FILE):
        validation = data.tokenize_records(tokenizer, data.read_records(uri, data.VALIDATION_FILE), max_len)
    if not train.examples:
        problem = f"{data.TRAIN_FILE} has no usable records"
        if train.dropped:
            problem += f" ({train.dropped} prompts are longer than max_seq_length {max_len})"
        raise InvalidSpec("spec.dataset_uri", problem)
    counts = {
        "train_examples": float(len(train.examples)),
        "validation_examples": float(len(validation.examples)),
        "dropped_examples": float(train.dropped + validation.dropped),
        "truncated_examples": float(train.truncated + validation.truncated),
    }
    return train.examples, validation.examples, counts


def copy_folder(local_dir: str, uri: str) -> None:
    """Copy every file of local_dir to the folder at uri (any fsspec URI)."""
    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(root, exist_ok=True)
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            target = f"{root.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), target)


def run(config: dict[str, Any], output_uri: str, progress: Progress, trace_id: str = "") -> dict[str, Any]:
    """Train per config, write the checkpoint artifact at output_uri, return its URI and metrics."""
    import ray

    cfg = TrainingConfig.model_validate(config)
    output_uri = artifacts.to_uri(output_uri)
    with tracing.span_from_env("training.run", {"method": cfg.method, "output_uri": output_uri}):
        progress(0.0, "checking the base model and the dataset")
        work = tempfile.mkdtemp(prefix="slmops-train-")
        try:
            model_dir = model_init.resolve_model(cfg.base.model, cache_dir=work)
            tokenizer = model_init.load_tokenizer(model_dir)
            model_config = model_init.model_config(cfg.base, model_dir)
            model_init.check_model(model_config, tokenizer, cfg.hyperparameters.max_seq_length)
            train, validation, counts = prepare_examples(cfg, tokenizer)
            progress(0.02, f"{len(train)} training and {len(validation)} validation examples", **counts)

            if not ray.is_initialized():
                ray.init()
            checkpoint_dir, metrics = sft.fit(cfg, (train, validation), f"{work}/ray", progress)

            progress(0.92, "copying the checkpoint to the output")
            metrics["parameters"] = float(count_parameters(checkpoint_dir))
            copy_folder(checkpoint_dir, output_uri)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        metrics.update(counts)
        parents = [cfg.dataset_uri]
        if artifacts.is_artifact(cfg.base.model):
            parents.append(cfg.base.model)
        manifest = artifacts.finalize(
            output_uri, KIND, spec=cfg.model_dump(), parents=parents, metrics=metrics, trace_id=trace_id
        )
        progress(1.0, "checkpoint ready", **metrics)
    return {"output_uri": output_uri, "artifact_id": manifest.id, "metrics": metrics}
