"""Hugging Face checkpoint -> ONNX Runtime GenAI folder, with Olive's ModelBuilder pass.

The result is a folder ORT GenAI loads as is: `model.onnx`, `model.onnx.data`,
`genai_config.json` and the tokenizer files. Olive's cache and bookkeeping
live in a scratch folder beside the output and are removed afterwards.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from slmops.conversion.olive_compat import keep_builder_embeddings
from slmops.core.progress import Progress, null_progress

EXECUTION_PROVIDERS = {
    "cpu": ("cpu", "CPUExecutionProvider"),
    "cuda": ("gpu", "CUDAExecutionProvider"),
    "dml": ("gpu", "DmlExecutionProvider"),
}
# Files Olive writes beside the model for its own records.
OLIVE_FILES = {"footprint.json", "output_footprint.json", "run_history.txt", "model_config.json"}
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


class ConversionError(RuntimeError):
    """Olive or the model builder could not convert the model."""


class _ErrorLog(logging.Handler):
    """Keeps the error lines Olive logs (it reports a failed pass by logging, not raising)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line = f"{line} {type(exc).__name__}: {exc}"
        self.lines.append(line)


def workflow_config(
    model_dir: Path,
    work_dir: Path,
    precision: str,
    execution_provider: str,
    extra_options: dict[str, Any],
) -> dict[str, Any]:
    """The Olive workflow: one ModelBuilder pass on the local system."""
    device, provider = EXECUTION_PROVIDERS[execution_provider]
    options = {**extra_options, "hf_remote": False}  # never trust_remote_code
    return {
        "input_model": {"type": "HfModel", "model_path": str(model_dir)},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": device, "execution_providers": [provider]}],
            }
        },
        "passes": {
            "builder": {"type": "ModelBuilder", "precision": precision, "extra_options": options}
        },
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(work_dir / "cache"),
        "output_dir": str(work_dir / "output"),
        "log_severity_level": 1,
    }


def _builder_options(extra_options: dict[str, str], execution_provider: str) -> dict[str, Any]:
    """Option strings typed as the builder's command line types them."""
    from onnxruntime_genai.models.builder import check_extra_options

    options: dict[str, Any] = dict(extra_options)
    check_extra_options(options, execution_provider)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _special_ids(model_dir: Path) -> dict[str, int]:
    """bos/eos/pad ids from the checkpoint: generation_config, config, then the tokenizer."""
    found: dict[str, int] = {}
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            for key in TOKEN_IDS:
                value = data.get(key)
                if isinstance(value, list) and value:
                    value = value[0]
                if isinstance(value, int) and key not in found:
                    found[key] = value
    tok_config, tok_file = model_dir / "tokenizer_config.json", model_dir / "tokenizer.json"
    if tok_config.is_file() and tok_file.is_file():
        config = json.loads(tok_config.read_text(encoding="utf-8"))
        added = json.loads(tok_file.read_text(encoding="utf-8")).get("added_tokens", [])
        ids = {t.get("content"): t.get("id") for t in added}
        for key in TOKEN_IDS:
            token = config.get(key.replace("_id", ""))
            token = token.get("content") if isinstance(token, dict) else token
            if key not in found and isinstance(ids.get(token), int):
                found[key] = ids[token]
    if "pad_token_id" not in found and "eos_token_id" in found:
        found["pad_token_id"] = found["eos_token_id"]
    return found


def fix_genai_config(output_dir: Path, model_dir: Path) -> dict[str, Any]:
    """Fill null special token ids in genai_config.json (ORT GenAI refuses to load nulls)."""
    path = output_dir / "genai_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    model = config.setdefault("model", {})
    missing = [k for k in TOKEN_IDS if model.get(k) is None]
    if missing:
        known = _special_ids(model_dir)
        for key in missing:
            if key in known:
                model[key] = known[key]
        if model.get("eos_token_id") is None:
            raise ConversionError(
                "the checkpoint defines no eos_token_id (config.json, generation_config.json or "
                "tokenizer_config.json eos_token); set it and convert again"
            )
        if model.get("bos_token_id") is None:
            model["bos_token_id"] = model["eos_token_id"]
        path.write_text(json.dumps(config, indent=4), encoding="utf-8")
    return config


def _run_olive(config: dict[str, Any]) -> Path:
    """Run the workflow; the folder of the output model, or ConversionError with Olive's reason."""
    from olive.workflows import run as olive_run

    keep_builder_embeddings()
    errors = _ErrorLog()
    olive_logger = logging.getLogger("olive")
    olive_logger.addHandler(errors)
    try:
        output = olive_run(config)
    finally:
        olive_logger.removeHandler(errors)
    best = output.get_best_candidate() if output is not None else None
    if best is None or not best.model_path:
        reason = errors.lines[-1] if errors.lines else "the ModelBuilder pass produced no model"
        raise ConversionError(f"Olive could not convert the model: {reason}")
    path = Path(best.model_path)
    return path if path.is_dir() else path.parent


def _check_loads(output_dir: Path) -> None:
    """Load the result with ORT GenAI and tokenize a word, so a broken folder fails here."""
    import onnxruntime_genai as og

    model = og.Model(str(output_dir))
    tokenizer = og.Tokenizer(model)
    tokenizer.encode("hello")
    del tokenizer, model


def convert(
    model_dir: str | Path,
    output_dir: str | Path,
    precision: str = "int4",
    execution_provider: str = "cpu",
    extra_options: dict[str, str] | None = None,
    progress: Progress = null_progress,
) -> dict[str, Any]:
    """Convert the checkpoint in model_dir into an ORT GenAI folder at output_dir.

    Returns {"output_dir", "files", "seconds", "size_bytes", "olive_version",
    "builder_version"}. Raises ConversionError when Olive fails.
    """
    started = time.perf_counter()
    source, target = Path(model_dir), Path(output_dir)
    if not (source / "config.json").is_file():
        raise ConversionError(f"{source} has no config.json: not a Hugging Face checkpoint")
    target.mkdir(parents=True, exist_ok=True)
    options = _builder_options(extra_options or {}, execution_provider)
    work = Path(tempfile.mkdtemp(prefix=".olive-", dir=target.parent))
    try:
        progress(0.05, f"building {precision} ONNX model for {execution_provider} with Olive")
        config = workflow_config(source, work, precision, execution_provider, options)
        built = _run_olive(config)
        progress(0.8, "collecting the ONNX Runtime GenAI folder")
        for item in sorted(built.iterdir()):
            if item.name not in OLIVE_FILES and item.is_file():
                shutil.move(str(item), target / item.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fix_genai_config(target, source)
    if execution_provider == "cpu":
        progress(0.9, "checking that ONNX Runtime GenAI loads the model")
        _check_loads(target)
    files = sorted(p.name for p in target.iterdir() if p.is_file())
    return {
        "output_dir": str(target),
        "files": files,
        "seconds": time.perf_counter() - started,
        "size_bytes": sum((target / f).stat().st_size for f in files if f != "manifest.json"),
        "olive_version": metadata.version("olive-ai"),
        "builder_version": metadata.version("onnxruntime-genai"),
    }
