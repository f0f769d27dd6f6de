"""The conversion job: a checkpoint (and its LoRA adapters) through Olive into an `onnx-model` artifact.

The driver starts one streaming Ray task with the spec's resources. The task
merges an adapter into the base when asked, runs the Olive workflow
(`olive_convert.convert`), verifies the ORT GenAI folder against its source
(`verify.verify`, for the base and for each adapter against peft), writes the
size report and the Foundry Local package, and yields progress as it goes
(each Olive pass, each verification), so `Watch` shows where it is. A model
that misses its thresholds, a broken checkpoint or a failed pass fails the
job with the reason, and the output folder is removed, so nothing that looks
like an artifact is left behind. The driver seals a verified model with its
manifest, the figures included. Remote model or output URIs go through
fsspec: the task downloads the checkpoint to a scratch folder and uploads
the result.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmops.conversion.config import ConversionConfig, VerifySettings
from slmops.conversion.foundry import foundry_package, size_report
from slmops.conversion.olive_convert import (
    OLIVE_CONFIG,
    ConversionError,
    check_checkpoint,
    convert,
    int4_candidates,
)
from slmops.conversion.verify import thresholds_for, verify
from slmops.core import artifact_cache, artifacts
from slmops.core.datasets import VALIDATION_FILE, read_split, split_exists
from slmops.core.errors import InvalidSpec, NotFound
from slmops.core.progress import Progress, scaled
from slmops.core.stores import filesystem, store_errors


def _is_local(uri: str) -> bool:
    return uri.startswith("file://") or "://" not in uri


def lineage_prompts(model_uri: str, limit: int) -> list[str]:
    """Up to limit validation prompts of the dataset the checkpoint was trained on, if any."""
    try:
        seen, todo = set(), [model_uri]
        while todo and len(seen) < 8:
            uri = todo.pop(0)
            seen.add(uri)
            manifest = artifacts.read_manifest(uri)
            if manifest.kind == "dataset":
                if not split_exists(uri, VALIDATION_FILE):
                    return []
                prompts = [r["prompt"] for r in read_split(uri) if isinstance(r.get("prompt"), str)]
                return [p for p in prompts if p.strip()][:limit]
            todo.extend(p for p in manifest.parents if p not in seen and p.startswith("file://"))
    except (NotFound, OSError, ValueError):
        return []
    return []


def _verify(
    cfg: ConversionConfig, source: Path, target: Path, threads: int, adapters: dict[str, Path],
    progress: Progress,
) -> dict[str, Any]:  # fmt: skip
    """Verify the base and each adapter; ConversionError with the figures when one misses a threshold."""
    settings = cfg.verification or VerifySettings(thresholds=thresholds_for(cfg.precision))
    if cfg.execution_provider != "cpu":
        return {"skipped": f"verification runs on the CPU; this model is for {cfg.execution_provider}"}
    prompts = lineage_prompts(cfg.model_uri, settings.max_prompts)
    runs: list[tuple[str, tuple[str, Path] | None]] = [("the base model", None)]
    runs += [(f"adapter {name!r}", (name, path)) for name, path in adapters.items()]
    summary: dict[str, Any] = {}
    for index, (what, adapter) in enumerate(runs):
        step = scaled(progress, index / len(runs), (index + 1) / len(runs))
        step(0.0, f"verifying {what} against its source")
        result = verify(source, target, prompts or None, settings.thresholds, new_tokens=settings.new_tokens,
                        threads=threads, adapter=adapter, progress=step)  # fmt: skip
        if not result.passed:
            figures = ", ".join(f"{k.removeprefix('verify_')}={v:.4g}" for k, v in result.metrics().items())
            raise VerificationFailed(
                f"the converted model failed verification ({what}): {'; '.join(result.reasons)} ({figures})",
                result.reasons,
            )
        if adapter is None:
            summary = result.as_dict()
            summary["prompt_source"] = "lineage validation prompts" if prompts else "built-in prompts"
        else:
            summary.setdefault("adapters", {})[adapter[0]] = result.as_dict()
    return summary


def merge_adapter(base: Path, adapter: Path, out: Path) -> Path:
    """The base with the peft adapter merged in, saved as a safetensors checkpoint at out."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    for item in base.iterdir():  # tokenizer and generation config, as the base has them
        if item.is_file() and not item.name.endswith((".safetensors", ".bin")) and item.name not in (
            "config.json", "model.safetensors.index.json", artifacts.MANIFEST,
        ):  # fmt: skip
            shutil.copy2(item, out / item.name)
    return out


def _fetch(uri: str, scratch: Path, name: str, field: str = "spec.model_uri") -> Path:
    """A local folder holding uri's files (downloaded into scratch when remote).

    A sealed artifact on an object store is checked file by file against its
    manifest's hashes while it downloads (InvalidSpec naming a file that changed).
    """
    if _is_local(uri):
        return artifacts.local_path(artifacts.to_uri(uri))
    local = scratch / name
    try:
        if artifacts.is_artifact(uri):
            return artifact_cache.download(uri, local, field)
        fs, path = filesystem(uri)
        with store_errors(uri, "fetching"):
            fs.get(path.rstrip("/") + "/", str(local), recursive=True)
    except InvalidSpec as exc:
        raise ConversionError(str(exc)) from None
    return local


class VerificationFailed(ConversionError):
    """The converted model missed a verification threshold."""

    def __init__(self, message: str, reasons: list[str]):
        super().__init__(message)
        self.reasons = reasons

    def __reduce__(self):
        return (VerificationFailed, (str(self), self.reasons))


def _monotonic(progress: Progress) -> Progress:
    """Progress whose fraction never goes back (a retried conversion reports from the start again)."""
    last = [0.0]

    def report(fraction: float, message: str, **metrics: float) -> None:
        last[0] = max(last[0], fraction)
        progress(last[0], message, **metrics)

    return report


def _source_ref(model_uri: str) -> str:
    """How the saved Olive config names the source: a local path, or the remote URI."""
    return str(artifacts.local_path(model_uri)) if model_uri.startswith("file://") else model_uri


def _layout(options: dict[str, str]) -> str:
    symmetric = options.get("int4_is_symmetric") in ("true", "True", "1")
    return f"blocks of {options.get('int4_block_size', '?')}, {'symmetric' if symmetric else 'asymmetric'}"


def _smallest_verified(
    cfg: ConversionConfig, model_dir: Path, target: Path, adapters: dict[str, Path], progress: Progress
) -> dict[str, Any]:
    """Convert and verify; for int4, each candidate layout from the smallest until one passes.

    `olive_convert.int4_candidates` orders the layouts the model's widths allow
    (the spec's own options pin them). A layout that misses verification is
    removed and the next, larger one is built; every miss is recorded in
    result["attempts"]. Only the last miss fails the job.
    """
    candidates: list[dict[str, str]] = [dict(cfg.extra_options)]
    if cfg.precision == "int4":
        candidates = int4_candidates(check_checkpoint(model_dir), cfg.extra_options)
    threads = max(1, int(cfg.resources.num_cpus))
    attempts: list[dict[str, Any]] = []
    for index, options in enumerate(candidates):
        try:
            result = convert(model_dir, target, cfg.precision, cfg.execution_provider, options,
                             progress=scaled(progress, 0.05, 0.7), adapters=adapters or None,
                             source_ref=_source_ref(cfg.model_uri))  # fmt: skip
            result["verification"] = _verify(
                cfg, model_dir, target, threads, adapters, scaled(progress, 0.7, 0.95)
            )
        except VerificationFailed as exc:
            attempts.append({"options": options, "reasons": exc.reasons})
            if index == len(candidates) - 1:
                if len(attempts) > 1:
                    raise VerificationFailed(
                        f"{exc} (after {len(attempts)} int4 layouts, all missed)", exc.reasons
                    ) from None
                raise
            shutil.rmtree(target, ignore_errors=True)
            progress(0.0, f"int4 with {_layout(options)} missed verification ({'; '.join(exc.reasons)}); "
                          f"trying {_layout(candidates[index + 1])}")  # fmt: skip
            continue
        result["attempts"] = attempts
        return result
    raise AssertionError("unreachable: the last candidate returns or raises")


def _check_inputs(cfg: ConversionConfig) -> None:
    """The checkpoint and adapters a sealed artifact holds must match their recorded hashes."""
    inputs = [("spec.model_uri", cfg.model_uri)] + [
        (f"spec.adapter_uris ({ref.name})", ref.uri) for ref in cfg.adapters
    ]
    for field, uri in inputs:
        if not _is_local(uri):
            continue
        try:
            artifacts.open_input(uri, field)
        except InvalidSpec as exc:
            raise ConversionError(str(exc)) from None


def _convert_and_verify(cfg: ConversionConfig, output_uri: str, progress: Progress) -> dict[str, Any]:
    """Fetch, (merge,) convert, verify, package into a staging folder moved into place at the end.

    On any failure the staging folder is removed: nothing that looks like an
    artifact is left at (or beside) the output location.
    """
    import fsspec

    scratch = Path(tempfile.mkdtemp(prefix="slmops-convert-"))
    try:
        _check_inputs(cfg)
        with artifacts.staged(output_uri) as staging:
            target = artifacts.local_path(staging) if _is_local(output_uri) else scratch / "output"
            source = _fetch(cfg.model_uri, scratch, "source")
            adapters = {ref.name: _fetch(ref.uri, scratch, f"adapter-{i}", f"spec.adapter_uris ({ref.name})")
                        for i, ref in enumerate(cfg.adapters)}  # fmt: skip
            model_dir = source
            if cfg.merge_adapters and adapters:
                name, folder = next(iter(adapters.items()))
                progress(0.02, f"merging adapter {name!r} into the base")
                model_dir = merge_adapter(source, folder, scratch / "merged")
                adapters = {}
            result = _smallest_verified(cfg, model_dir, target, adapters, _monotonic(progress))
            result["size_report"] = size_report(target, source)
            if cfg.foundry_local_package:
                progress(0.96, "writing the Foundry Local package")
                name = source.name if source.name not in ("", "source") else "model"
                package = foundry_package(target, target / "foundry", name)
                result["foundry_package"] = str(package.relative_to(target))
            if not _is_local(output_uri):
                fs, path = fsspec.core.url_to_fs(staging)
                fs.put(str(target) + "/", path, recursive=True)
        result["output_dir"] = output_uri
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def convert_task(config: dict[str, Any], output_uri: str) -> Iterator[tuple[Any, ...]]:
    """Runs on a Ray worker as a streaming task: ("progress", fraction, message)..., then ("result", dict).

    The work runs in a thread so each step (an Olive pass, a verification)
    reaches the driver while the next one runs.
    """
    cfg = ConversionConfig.model_validate(config)
    events: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
    outcome: dict[str, Any] = {}

    def report(fraction: float, message: str, **_: float) -> None:
        events.put(("progress", fraction, message))

    def work() -> None:
        try:
            outcome["result"] = _convert_and_verify(cfg, output_uri, report)
        except BaseException as exc:  # re-raised in the task, where Ray hands it to the driver
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=work, name="convert", daemon=True)
    thread.start()
    while (event := events.get()) is not None:
        yield event
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield ("result", outcome["result"])


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
    task = ray.remote(max_retries=0, num_returns="streaming", **resources)(convert_task)
    progress(0.05, "running the Olive workflow and verifying the result on a Ray worker")
    result: dict[str, Any] = {}
    try:
        for ref in task.remote(cfg.model_dump(mode="json"), output_uri):
            event = ray.get(ref)
            if event[0] == "progress":
                progress(0.05 + 0.85 * float(event[1]), str(event[2]))
            else:
                result = event[1]
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, ConversionError) else None
        if cause is not None:
            raise cause from None
        raise
    verification = result["verification"]
    progress(0.9, f"built {len(result['files'])} files; {_verdict(verification)}; sealing the artifact")
    metrics: dict[str, float] = {
        # The model's own files: a Foundry Local package beside them holds links to the same bytes.
        "size_bytes": float(result["size_report"]["total_bytes"]),
        "source_size_bytes": float(artifacts.size_bytes(cfg.model_uri)),
        "seconds": time.perf_counter() - started,
        **_source_metrics(cfg.model_uri),
        **_verify_metrics(verification),
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
            "verification": verification,
            "size_report": result["size_report"],
            "builder_options": result["options"],
            "last_position_logits": bool(result.get("last_logits")),
            "olive_config": OLIVE_CONFIG,
            **({"adapters": result["adapters"]} if result["adapters"] else {}),
            **({"merged_adapter": cfg.adapters[0].name} if cfg.merge_adapters and cfg.adapters else {}),
            **({"int4_layouts_missed": result["attempts"]} if result.get("attempts") else {}),
            **({"foundry_package": result["foundry_package"]} if "foundry_package" in result else {}),
        },
    )
    progress(1.0, f"conversion done; {_verdict(verification)}", **metrics)
    return {
        "output_uri": output_uri,
        "metrics": metrics,
        "artifact_id": manifest.id,
        "verification": verification,
    }


def _verdict(verification: dict[str, Any]) -> str:
    if "skipped" in verification:
        return f"not verified ({verification['skipped']})"
    return (
        f"verified: token agreement {verification['token_agreement']:.3f}, "
        f"logits error {verification['logits_rel_error']:.3g}, KL {verification['mean_kl']:.3g}"
    )


def _verify_metrics(verification: dict[str, Any]) -> dict[str, float]:
    names = ("token_agreement", "exact_match", "logits_rel_error", "mean_kl", "max_kl")
    return {
        f"verify_{name}": float(verification[name])
        for name in names
        if isinstance(verification.get(name), (int, float))
    }
