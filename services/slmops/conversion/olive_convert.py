"""Hugging Face checkpoint -> ONNX Runtime GenAI folder, with Olive's ModelBuilder pass.

The result is a folder ORT GenAI loads as is: `model.onnx`, `model.onnx.data`,
`genai_config.json`, the tokenizer files, and `olive_config.json`, the
workflow that ran (`olive run --config olive_config.json` builds it again).
Olive's cache and bookkeeping live in a scratch folder beside the output and
are removed afterwards.

- int4: the builder's MatMulNBits, with the options that give the smallest
  model that still answers like its source (`default_options`).
- int8: the builder's fp32 graph, then Olive's block-wise RTN quantization
  at 8 bits (the builder has no int8 of its own).
- fp32/fp16/bf16: the builder alone.
- Every build: the LM head runs on each sequence's last real token only
  (`conversion/last_logits`), so the graph returns logits [batch, 1, vocab].
- With LoRA adapters, the first adapter goes into the build (Olive's
  `adapter_path`), its branches kept float, and `conversion/onnx_adapters` turns
  its weights into inputs that each `.onnx_adapter` file fills.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from slmops.conversion import onnx_adapters
from slmops.conversion.last_logits import keep_last_logits_in
from slmops.conversion.olive_compat import keep_builder_embeddings, no_telemetry
from slmops.core.progress import Progress, null_progress

EXECUTION_PROVIDERS = {
    "cpu": ("cpu", "CPUExecutionProvider"),
    "cuda": ("gpu", "CUDAExecutionProvider"),
    "dml": ("gpu", "DmlExecutionProvider"),
}
# Files Olive writes beside the model for its own records.
OLIVE_FILES = {"footprint.json", "output_footprint.json", "run_history.txt", "model_config.json"}
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
OLIVE_CONFIG = "olive_config.json"
INT8_BLOCK_SIZE = 32
# Where a pass's progress starts and ends within convert()'s 0..1.
PASS_SPAN = (0.05, 0.8)


class ConversionError(RuntimeError):
    """Olive or the model builder could not convert the model."""


class _OliveLog(logging.Handler):
    """Keeps Olive's error lines (it reports a failed pass by logging) and reports each pass it starts."""

    def __init__(self, progress: Progress, passes: dict[str, str]) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.progress, self.passes = progress, passes  # {name: type}

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            line = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                line = f"{line} {type(exc).__name__}: {exc}"
            self.lines.append(line)
        elif record.msg == "Running pass %s:%s" and isinstance(record.args, tuple) and len(record.args) >= 2:
            name = str(record.args[0])
            kind = self.passes.get(name, str(record.args[1]))
            index = list(self.passes).index(name) if name in self.passes else 0
            start, end = PASS_SPAN
            fraction = start + (end - start) * index / max(len(self.passes), 1)
            self.progress(fraction, f"Olive pass {index + 1}/{len(self.passes)}: {name} ({kind})")


# int4 weight layouts from smallest to largest: (block size, symmetric). Per weight, 4 bits
# plus a float scale per block, plus a 4-bit zero point per block when asymmetric.
INT4_LAYOUTS = ((128, True), (128, False), (64, True), (64, False), (32, True), (32, False),
                (16, True), (16, False))  # fmt: skip
INT4_LAYOUT_KEYS = ("int4_block_size", "int4_is_symmetric")


def _input_widths(config: Mapping[str, Any]) -> list[int]:
    """The input widths of a decoder layer's projections: hidden, MLP and attention output."""
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    return [hidden, int(config.get("intermediate_size") or 4 * hidden), heads * head_dim]


def _fits(widths: list[int], block: int, symmetric: bool) -> bool:
    """Blocks must divide each row; asymmetric packing needs an even count of them."""
    return all(width % (block if symmetric else 2 * block) == 0 for width in widths)


def int4_candidates(
    config: Mapping[str, Any], pinned: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """int4 builder options from the smallest model to the largest, for the conversion to verify in turn.

    - A tied embedding (`tie_word_embeddings: true`) is quantized once and
      shared by the input lookup and the LM head (RTN, shared_embeddings): in
      the Qwen2.5-0.5B shape that is 0.27-0.29x of the fp16 checkpoint, where
      the builder's default keeps it in float beside a quantized copy (0.87x).
    - An untied model (or one whose config does not say) has its embedding
      quantized separately (MatMul/Gather); sharing would be silently wrong.
    - Then every block layout the model's widths allow, smallest first
      (INT4_LAYOUTS): larger blocks and symmetric ones are smaller and decode
      faster; smaller asymmetric ones keep more accuracy on small models.
    pinned: options the spec sets. They are kept in every candidate, and a
    pinned block size or symmetry leaves only the layouts that match it.
    """
    pinned = dict(pinned or {})
    tied = config.get("tie_word_embeddings") is True
    base = (
        {"int4_algo_config": "rtn", "shared_embeddings": "true"}
        if tied
        else {"int4_op_types_to_quantize": "MatMul/Gather"}
    )
    try:
        widths = _input_widths(config)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return [{**base, **pinned}]  # a shape this does not know: the builder's layout
    want_block = pinned.get("int4_block_size")
    want_sym = pinned.get("int4_is_symmetric")
    candidates = []
    for block, symmetric in INT4_LAYOUTS:
        if want_block is not None and str(block) != want_block:
            continue
        if want_sym is not None and symmetric != (want_sym in ("true", "True", "1")):
            continue
        if _fits(widths, block, symmetric):
            layout = {"int4_block_size": str(block), "int4_is_symmetric": "true" if symmetric else "false"}
            candidates.append({**base, **layout, **pinned})
    return candidates or [{**base, **pinned}]


def default_options(config: Mapping[str, Any], precision: str) -> dict[str, str]:
    """The builder options `convert` starts from.

    int4: the smallest candidate (`int4_candidates`). int8: the fp32 graph
    with the embedding and the LM head as separate initializers, so the 8-bit
    pass quantizes both (a shared one feeds the LM head through a Transpose,
    which the pass skips: the model would stay larger than fp16).
    """
    if precision == "int4":
        return int4_candidates(config)[0]
    if precision == "int8":
        return {"shared_embeddings": "false"}
    return {}


def workflow_config(
    model_dir: Path,
    work_dir: Path,
    precision: str,
    execution_provider: str,
    extra_options: dict[str, Any],
    adapter_path: Path | None = None,
    int8_block_size: int = INT8_BLOCK_SIZE,
) -> dict[str, Any]:
    """The Olive workflow: the ModelBuilder pass (then 8-bit RTN for int8) on the local system."""
    device, provider = EXECUTION_PROVIDERS[execution_provider]
    options = {**extra_options, "hf_remote": False}  # never trust_remote_code
    input_model: dict[str, Any] = {"type": "HfModel", "model_path": str(model_dir)}
    if adapter_path is not None:
        input_model["adapter_path"] = str(adapter_path)
    builder_precision = "fp32" if precision == "int8" else precision
    passes: dict[str, Any] = {
        "builder": {"type": "ModelBuilder", "precision": builder_precision, "extra_options": options}
    }
    if precision == "int8":
        passes["quantize_int8"] = {
            "type": "OnnxBlockWiseRtnQuantization",
            "bits": 8,
            "block_size": int8_block_size,
            "is_symmetric": False,
        }
    return {
        "input_model": input_model,
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": device, "execution_providers": [provider]}],
            }
        },
        "passes": passes,
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(work_dir / "cache"),
        "output_dir": str(work_dir / "output"),
        "log_severity_level": 1,
    }


def portable_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """The workflow as saved with the artifact: the source named, Olive's folders relative."""
    saved = json.loads(json.dumps(config))
    saved["input_model"]["model_path"] = source
    saved["cache_dir"], saved["output_dir"] = "olive-cache", "olive-output"
    if "adapter_path" in saved["input_model"]:
        saved["input_model"]["adapter_path"] = Path(saved["input_model"]["adapter_path"]).name
    return saved


def _builder_options(extra_options: Mapping[str, str], execution_provider: str) -> dict[str, Any]:
    """Option strings typed as the builder's command line types them."""
    from onnxruntime_genai.models.builder import check_extra_options

    options: dict[str, Any] = dict(extra_options)
    check_extra_options(options, execution_provider)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def check_checkpoint(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's config; ConversionError naming what is missing, unreadable or truncated."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise ConversionError(f"{model_dir} has no config.json: not a Hugging Face checkpoint")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConversionError("config.json is not a JSON object")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ConversionError(f"model.safetensors.index.json is unreadable: {exc}") from None
        missing = [name for name in shards if not (model_dir / name).is_file()]
        if missing:
            raise ConversionError(
                f"weight shards named by model.safetensors.index.json are missing: {missing}"
            )
        files = [model_dir / name for name in shards]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in model_dir.glob("*.bin"))
        hint = f" (found {pickled}: pickled weights are not loaded; save with safetensors)" if pickled else ""
        raise ConversionError(f"{model_dir} has no .safetensors weights{hint}")
    for file in files:
        _check_safetensors(file)
    return config


def _check_safetensors(path: Path) -> None:
    """ConversionError unless the file's header parses and its data is all there."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ConversionError(f"{path.name} is truncated: {size} bytes, no safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > 100 * 2**20:
            raise ConversionError(f"{path.name} is not a safetensors file (a header of {length} bytes)")
        if length > size - 8:
            raise ConversionError(
                f"{path.name} is truncated: {size} bytes, its header alone needs {8 + length}"
            )
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConversionError(f"{path.name} has an unreadable safetensors header") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        raise ConversionError(f"{path.name} is truncated: {size} bytes of the {needed} its header describes")


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


def _generation_eos(model_dir: Path) -> list[int]:
    """Every eos id of the checkpoint's generation_config.json (a chat model's end-of-turn token too)."""
    path = model_dir / "generation_config.json"
    value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.is_file() else None
    ids = value if isinstance(value, list) else [value]
    return [i for i in ids if isinstance(i, int)]


def fix_genai_config(output_dir: Path, model_dir: Path) -> dict[str, Any]:
    """Make genai_config.json loadable: fill null special token ids (ORT GenAI refuses nulls), stop on
    every eos id generation_config lists, and name the logits output the graph really has (Olive's
    8-bit RTN renames it `logits_Q8`)."""
    path = output_dir / "genai_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    model = config.setdefault("model", {})
    changed = False
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
        changed = True
    eos = model["eos_token_id"] if isinstance(model["eos_token_id"], list) else [model["eos_token_id"]]
    if more := [i for i in _generation_eos(model_dir) if i not in eos]:
        model["eos_token_id"], changed = [*eos, *more], True
    decoder = model.get("decoder", {})
    outputs = decoder.get("outputs", {})
    graph = output_dir / decoder.get("filename", "model.onnx")
    if outputs.get("logits") and graph.is_file():
        import onnx

        names = [o.name for o in onnx.load(str(graph), load_external_data=False).graph.output]
        if outputs["logits"] not in names:
            renamed = [n for n in names if n.startswith(outputs["logits"] + "_")]
            if len(renamed) != 1:
                raise ConversionError(f"the model has no logits output (outputs: {names[:4]})")
            outputs["logits"], changed = renamed[0], True
    if changed:
        path.write_text(json.dumps(config, indent=4), encoding="utf-8")
    return config


def fix_tokenizer_config(output_dir: Path) -> None:
    """Name the tokenizer class ORT GenAI's tokenizer knows, and keep the chat template in it.

    transformers 5 saves a tokenizer defined by tokenizer.json alone as
    `TokenizersBackend`, which ORT GenAI 0.13.2 refuses for Llama models
    ("Unsupported tokenizer class"); transformers 4 called the same thing
    `PreTrainedTokenizerFast`, which both read. transformers 5 also saves the
    chat template as `chat_template.jinja` only; runtimes that read
    tokenizer_config.json's `chat_template` alone (ORT GenAI before it read the
    .jinja file, tools of transformers 4) get the same text there.
    """
    path = output_dir / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    if config.get("tokenizer_class") == "TokenizersBackend" and (output_dir / "tokenizer.json").is_file():
        config["tokenizer_class"], changed = "PreTrainedTokenizerFast", True
    jinja = output_dir / "chat_template.jinja"
    if jinja.is_file() and not config.get("chat_template"):
        config["chat_template"], changed = jinja.read_text(encoding="utf-8"), True
    if changed:
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _run_olive(config: dict[str, Any], progress: Progress) -> Path:
    """Run the workflow; the folder of the output model, or ConversionError with Olive's reason."""
    from olive.workflows import run as olive_run

    no_telemetry()
    keep_builder_embeddings()
    log = _OliveLog(progress, {name: spec["type"] for name, spec in config["passes"].items()})
    olive_logger = logging.getLogger("olive")
    olive_logger.addHandler(log)
    try:
        output = olive_run(config)
    except Exception as exc:  # the builder raises for what it cannot read (a broken checkpoint)
        raise ConversionError(f"Olive could not convert the model: {type(exc).__name__}: {exc}") from None
    finally:
        olive_logger.removeHandler(log)
    best = output.get_best_candidate() if output is not None else None
    if best is None or not best.model_path:
        reason = log.lines[-1] if log.lines else "the workflow produced no model"
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
    extra_options: Mapping[str, str] | None = None,
    progress: Progress = null_progress,
    adapters: Mapping[str, str | Path] | None = None,
    source_ref: str = "",
) -> dict[str, Any]:
    """Convert the checkpoint in model_dir into an ORT GenAI folder at output_dir.

    extra_options (builder option strings) override `default_options`.
    adapters: {name: peft LoRA folder}, each written as
    `adapters/<name>.onnx_adapter` beside one base model that takes them.
    source_ref names the source in the saved `olive_config.json` (default: model_dir).
    Returns {"output_dir", "files", "seconds", "size_bytes", "olive_version",
    "builder_version", "options", "adapters", "last_logits"} (last_logits: the
    graph returns only each row's last position, `last_logits.keep_last_logits`).
    Raises ConversionError when the checkpoint is broken or Olive fails;
    output_dir then holds nothing new.
    """
    started = time.perf_counter()
    source, target = Path(model_dir), Path(output_dir)
    progress(0.0, "checking the checkpoint")
    model_config = check_checkpoint(source)
    chosen = {**default_options(model_config, precision), **(extra_options or {})}
    options = _builder_options(chosen, execution_provider)
    plan = None
    if adapters:
        try:
            plan = onnx_adapters.plan(adapters, precision)
        except onnx_adapters.AdapterBuildError as exc:
            raise ConversionError(str(exc)) from None
        if precision == "int4":  # the LoRA branches stay float, so any adapter's weights fit
            options["int4_nodes_to_exclude"] = [*options.get("int4_nodes_to_exclude", []), *plan.lora_nodes]
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".olive-", dir=target.parent))
    try:
        config = workflow_config(source, work, precision, execution_provider, options,
                                 adapter_path=plan.template if plan else None)  # fmt: skip
        saved = portable_config(config, source_ref or str(source))  # Olive's run edits config in place
        progress(PASS_SPAN[0], f"building the {precision} ONNX model for {execution_provider} with Olive")
        built = _run_olive(config, progress)
        progress(PASS_SPAN[1], "collecting the ONNX Runtime GenAI folder")
        target.mkdir(parents=True, exist_ok=True)
        if plan is not None:
            try:
                onnx_adapters.install(plan, built, target, skip=OLIVE_FILES)
            except onnx_adapters.AdapterBuildError as exc:
                raise ConversionError(str(exc)) from None
        else:
            for item in sorted(built.iterdir()):
                if item.name not in OLIVE_FILES and item.is_file():
                    shutil.move(str(item), target / item.name)
        (target / OLIVE_CONFIG).write_text(json.dumps(saved, indent=2), encoding="utf-8")
        fix_genai_config(target, source)
        fix_tokenizer_config(target)
        last_logits = keep_last_logits_in(target)  # the LM head on each row's last token only
        if execution_provider == "cpu":
            progress(0.9, "checking that ONNX Runtime GenAI loads the model")
            _check_loads(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    return {
        "output_dir": str(target),
        "files": files,
        "seconds": time.perf_counter() - started,
        "size_bytes": sum((target / f).stat().st_size for f in files if f != "manifest.json"),
        "olive_version": metadata.version("olive-ai"),
        "builder_version": metadata.version("onnxruntime-genai"),
        "options": chosen,
        "adapters": sorted(adapters or {}),
        "last_logits": last_logits,
    }
