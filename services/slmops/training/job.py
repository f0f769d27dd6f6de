"""The training job: what a Ray job's driver runs for one TrainingSpec.

It validates the config again with the same models and checks as the service,
tokenizes every dataset once, runs the recipe on Ray Train (or a Ray Tune
search over it), copies the output to the output URI and seals it as a
`checkpoint` or `adapter` artifact whose manifest names the method, the final
losses and the lineage.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec

from slmops.core import artifacts, tracing
from slmops.core.errors import InvalidSpec, collect
from slmops.core.model_files import count_parameters
from slmops.core.progress import Progress
from slmops.training import chat, data, engine, model_init
from slmops.training.config import TrainingConfig
from slmops.training.recipes import checks, registry

Split = tuple[list[data.Example], list[data.Example]]


def _tokenize(cfg: TrainingConfig, tokenizer: Any, uri: str, field: str) -> tuple[Split, dict[str, float]]:
    recipe = registry.get(cfg.method)
    max_len = cfg.hyperparameters.max_seq_length
    use_topk = cfg.method == "logit_distill" and cfg.distill is not None and not cfg.distill.teacher
    allow_text = recipe.accepts_text

    def split(name: str) -> data.TokenizedSplit:
        records = data.read_records(uri, name, field, allow_text=allow_text)
        return data.tokenize_records(tokenizer, records, max_len, data.Labels.COMPLETION, use_topk)

    train = split(data.TRAIN_FILE)
    validation = (
        split(data.VALIDATION_FILE) if data.split_exists(uri, data.VALIDATION_FILE) else data.TokenizedSplit()
    )
    if not train.examples:
        problem = f"{data.TRAIN_FILE} has no usable records"
        if train.dropped:
            problem += f" ({train.dropped} prompts are longer than max_seq_length {max_len})"
        raise InvalidSpec(field, problem)
    counts = {
        "train_examples": float(len(train.examples)),
        "validation_examples": float(len(validation.examples)),
        "dropped_examples": float(train.dropped + validation.dropped),
        "truncated_examples": float(train.truncated + validation.truncated),
    }
    return (train.examples, validation.examples), counts


def prepare_data(cfg: TrainingConfig, tokenizer: Any) -> tuple[dict[str, Split], dict[str, float]]:
    """Tokenized (train, validation) of every dataset by name, and counts worth reporting."""
    prepared: dict[str, Split] = {}
    totals: dict[str, float] = {}
    names = list(cfg.datasets())
    for name, uri in cfg.datasets().items():
        field = "spec.dataset_uri" if name == "train" else f"spec.adapters[{names.index(name)}].dataset_uri"
        prepared[name], counts = _tokenize(cfg, tokenizer, uri, field)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0.0) + value
    return prepared, totals


def prepare_examples(
    cfg: TrainingConfig, tokenizer: Any
) -> tuple[list[data.Example], list[data.Example], dict[str, float]]:
    """Tokenized train and validation examples of a single-dataset config, and counts."""
    prepared, counts = prepare_data(cfg, tokenizer)
    train, validation = prepared["train"]
    return train, validation, counts


def copy_folder(local_dir: str, uri: str) -> None:
    """Copy every file of local_dir to the folder at uri (any fsspec URI)."""
    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(root, exist_ok=True)
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            target = f"{root.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), target)


def _lineage(cfg: TrainingConfig) -> list[str]:
    parents = list(cfg.datasets().values())
    for source in (cfg.base.model, cfg.distill.teacher if cfg.distill else ""):
        if source and artifacts.is_artifact(source):
            parents.append(source)
    return parents


def _check_inputs(cfg: TrainingConfig) -> None:
    """The base, datasets and teacher the job reads: sealed artifacts must match their hashes."""
    inputs = {
        "spec.base.model": cfg.base.model,
        "spec.distill.teacher": cfg.distill.teacher if cfg.distill else "",
    }
    if cfg.method == "multi_adapter":
        inputs.update({f"spec.adapters[{i}].dataset_uri": a.dataset_uri for i, a in enumerate(cfg.adapters)})
    else:
        inputs["spec.dataset_uri"] = cfg.dataset_uri
    for field, uri in inputs.items():
        if "://" in uri:  # not a hub id
            artifacts.open_input(uri, field)


def _remove(uri: str) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def run(config: dict[str, Any], output_uri: str, progress: Progress, trace_id: str = "") -> dict[str, Any]:
    """Train per config, write the artifact at output_uri, return its URI, kind and metrics."""
    import ray

    cfg = TrainingConfig.model_validate(config)
    recipe = registry.get(cfg.method)
    output_uri = artifacts.to_uri(output_uri)
    with tracing.span_from_env("training.run", {"method": cfg.method, "output_uri": output_uri}):
        progress(0.0, "checking the base model and the datasets")
        problems: list[tuple[str, str]] = []
        checks.check_spec(recipe, cfg.model_dump(), problems)  # the recipe's rules, as at Create
        if not problems:
            checks.inputs(recipe, cfg, problems)
        collect(problems)
        _check_inputs(cfg)
        work = tempfile.mkdtemp(prefix="slmops-train-")
        try:
            model_dir = model_init.resolve_model(cfg.base.model, cache_dir=work)
            tokenizer = model_init.load_tokenizer(model_dir)
            model_init.check_model(
                model_init.model_config(cfg.base, model_dir), tokenizer, cfg.hyperparameters.max_seq_length
            )
            chat.apply(tokenizer, cfg.chat_template)
            prepared, counts = prepare_data(cfg, tokenizer)
            sizes = ", ".join(f"{name}: {len(t)}+{len(v)}" for name, (t, v) in prepared.items())
            progress(0.02, f"training and validation examples ({sizes})", **counts)

            if not ray.is_initialized():
                ray.init()
            storage = engine.storage_path(output_uri)
            if cfg.search is not None:
                from slmops.training.recipes import hpo

                fitted = hpo.search(cfg, ray.put(prepared), storage, progress)
            else:
                fitted = engine.fit(cfg, ray.put(prepared), storage, progress)
            progress(0.92, "copying the output to the artifact store")
            metrics = dict(fitted.metrics)
            if Path(fitted.model_dir, "model.safetensors").exists() or list(
                Path(fitted.model_dir).glob("*.safetensors")
            ):
                if not Path(fitted.model_dir, "adapter_config.json").exists():
                    metrics["parameters"] = float(count_parameters(fitted.model_dir))
            with artifacts.staged(output_uri) as staging:
                copy_folder(fitted.model_dir, staging)
            extra = getattr(fitted, "trials", None)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        metrics.update(counts)
        kind = registry.output_kind(cfg)
        manifest = artifacts.finalize(
            output_uri,
            kind,
            spec=cfg.model_dump(mode="json"),
            parents=_lineage(cfg),
            metrics=metrics,
            trace_id=trace_id,
            extra={"method": cfg.method, **({"search": extra} if extra else {})},
        )
        _remove(storage)  # the run's checkpoints are not needed once the artifact is sealed
        progress(1.0, f"{kind} ready", **metrics)
    result: dict[str, Any] = {
        "output_uri": output_uri,
        "artifact_id": manifest.id,
        "kind": kind,
        "metrics": metrics,
    }
    if extra:
        result["search"] = extra
    return result
