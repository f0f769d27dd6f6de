"""The conversion job: a checkpoint through Olive into an `onnx-model` artifact.

The driver reserves a Ray task with the spec's resources, which runs the Olive
workflow (`olive_convert.convert`) and writes the ORT GenAI folder; the driver
then seals the artifact with its manifest. Remote model or output URIs go
through fsspec: the task downloads the checkpoint to a scratch folder and
uploads the result.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from slmops.conversion.olive_convert import convert
from slmops.conversion.spec import ConversionConfig
from slmops.core import artifacts
from slmops.core.errors import NotFound
from slmops.core.progress import Progress


def _is_local(uri: str) -> bool:
    return uri.startswith("file://") or "://" not in uri


def convert_task(config: dict[str, Any], output_uri: str) -> dict[str, Any]:
    """Runs on a Ray worker: fetch the checkpoint if remote, convert, upload if remote."""
    import fsspec

    cfg = ConversionConfig.model_validate(config)
    scratch = Path(tempfile.mkdtemp(prefix="slmops-convert-"))
    try:
        if _is_local(cfg.model_uri):
            source = artifacts.local_path(artifacts.to_uri(cfg.model_uri))
        else:
            fs, path = fsspec.core.url_to_fs(cfg.model_uri)
            source = scratch / "source"
            fs.get(path.rstrip("/") + "/", str(source), recursive=True)
        if _is_local(output_uri):
            target = artifacts.local_path(artifacts.to_uri(output_uri))
        else:
            target = scratch / "output"
        result = convert(source, target, cfg.precision, cfg.execution_provider, cfg.extra_options)
        if not _is_local(output_uri):
            fs, path = fsspec.core.url_to_fs(output_uri)
            fs.put(str(target) + "/", path, recursive=True)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _source_metrics(model_uri: str) -> dict[str, float]:
    """The parameter count recorded by the checkpoint's manifest, when it is an artifact."""
    try:
        manifest = artifacts.read_manifest(model_uri)
    except (NotFound, OSError, ValueError):
        return {}
    value = manifest.metrics.get("parameters")
    return {"parameters": float(value)} if isinstance(value, (int, float)) else {}


def run(config: dict, output_uri: str, progress: Progress, trace_id: str = "") -> dict:
    """Convert config's model into output_uri and seal it as an onnx-model artifact."""
    import ray

    cfg = ConversionConfig.model_validate(config)
    started = time.perf_counter()
    output_uri = artifacts.to_uri(output_uri)
    progress(0.0, f"converting {cfg.model_uri} to {cfg.precision} for {cfg.execution_provider}")
    if not ray.is_initialized():
        ray.init()
    resources: dict[str, Any] = {"num_cpus": cfg.resources.num_cpus}
    if cfg.resources.num_gpus:
        resources["num_gpus"] = cfg.resources.num_gpus
    if cfg.resources.memory_bytes:
        resources["memory"] = cfg.resources.memory_bytes
    task = ray.remote(max_retries=0, **resources)(convert_task)
    progress(0.05, "running the Olive workflow on a Ray worker")
    result = ray.get(task.remote(cfg.model_dump(mode="json"), output_uri))
    progress(0.9, f"built {len(result['files'])} files; sealing the artifact")
    metrics: dict[str, float] = {
        "size_bytes": float(artifacts.size_bytes(output_uri)),
        "source_size_bytes": float(artifacts.size_bytes(cfg.model_uri)),
        "seconds": time.perf_counter() - started,
        **_source_metrics(cfg.model_uri),
    }
    manifest = artifacts.finalize(
        output_uri,
        "onnx-model",
        spec=cfg.model_dump(mode="json"),
        parents=[cfg.model_uri],
        metrics=metrics,
        trace_id=trace_id,
        extra={
            "precision": cfg.precision,
            "execution_provider": cfg.execution_provider,
            "olive_version": result["olive_version"],
            "onnxruntime_genai_version": result["builder_version"],
            "files": result["files"],
        },
    )
    progress(1.0, "conversion done", **metrics)
    return {"output_uri": output_uri, "metrics": metrics, "artifact_id": manifest.id}
