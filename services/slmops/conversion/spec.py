"""A `ConversionSpec` message into a `ConversionConfig` (conversion/config.py), checked.

`from_proto` builds the dict the model validates from the message
(`proto_dict`: fields at proto3's zero are left out, so the model's defaults
apply: INT4, CPU, the precision's verification thresholds), checks the
builder options, then in a second pass what touches files and URIs (the
model folder, the adapters, a Foundry Local template, the output URI), and
reports every problem at once as one `InvalidSpec` whose field names are
proto paths (`spec.precision`, `spec.verification.max_kl`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from slmops.api.v1 import conversion_pb2
from slmops.conversion.adapters import ADAPTER_ARCHITECTURES, AdapterRef, resolve
from slmops.conversion.config import ConversionConfig
from slmops.conversion.verify import Thresholds, thresholds_for
from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, collect
from slmops.core.quantities import check_memory
from slmops.core.spec_checks import Problems, problems_from, proto_dict

# Builder options a user may set (values as on the builder's command line).
EXTRA_OPTIONS = frozenset(
    {
        "int4_accuracy_level", "int4_algo_config", "int4_block_size", "int4_is_symmetric",
        "int4_nodes_to_exclude", "int4_op_types_to_quantize", "qmoe_block_size",
        "num_hidden_layers", "exclude_embeds", "exclude_lm_head", "include_hidden_states",
        "enable_cuda_graph", "use_8bits_moe", "use_qdq", "use_cuda_bf16", "shared_embeddings",
        "prune_lm_head", "disable_qkv_fusion",
    }
)  # fmt: skip
# The boolean ones (the builder's check_extra_options parses these).
BOOL_OPTIONS = frozenset(
    {
        "int4_is_symmetric", "exclude_embeds", "exclude_lm_head", "include_hidden_states",
        "enable_cuda_graph", "use_8bits_moe", "use_qdq", "use_cuda_bf16", "shared_embeddings",
        "disable_qkv_fusion", "prune_lm_head",
    }
)  # fmt: skip
CHOICE_OPTIONS = {
    "int4_block_size": ("16", "32", "64", "128", "256"),
    "qmoe_block_size": ("16", "32", "64", "128", "256"),
    "int4_accuracy_level": ("0", "1", "2", "3", "4"),
}
# Options this stage sets itself.
RESERVED_OPTIONS = {
    "hf_remote": "is always false: models run without trust_remote_code",
    "hf_token": "does not apply: the input is a local model folder",
    "filename": "is fixed: the model is written as model.onnx",
    "config_only": "does not apply: conversion always writes the model",
    "adapter_path": "is set by the conversion: name adapters in spec.adapter_uris",
}
# Text decoders the ONNX Runtime GenAI 0.13.2 model builder converts (its create_model).
ARCHITECTURES = (
    "ChatGLMForConditionalGeneration", "ChatGLMModel", "Ernie4_5ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GptOssForCausalLM", "GraniteForCausalLM",
    "InternLM2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "NemotronForCausalLM",
    "OlmoForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "Phi3SmallForCausalLM", "PhiMoEForCausalLM",
    "Qwen2ForCausalLM", "Qwen3ForCausalLM", "SmolLM3ForCausalLM",
)  # fmt: skip


# Model fields whose proto field has another name or lives elsewhere.
_PROTO_PATHS = {
    "resources.num_cpus": "resources.cpus_per_worker",
    "resources.num_gpus": "resources.gpus_per_worker",
    "resources.memory_bytes": "resources.memory",
    **{f"verification.thresholds.{name}": f"verification.{name}" for name in Thresholds.model_fields},
}


def _unchecked(raw: dict[str, Any]) -> ConversionConfig:
    """raw unvalidated, with the model's defaults for what it leaves out (checks that need
    the precision or provider run whether or not the model accepts the rest)."""
    return ConversionConfig.model_construct(**raw)


def _shaped(spec: conversion_pb2.ConversionSpec, problems: Problems) -> dict[str, Any]:
    """The message as the dict ConversionConfig validates: enums by their lowercase names,
    the resource request as the Ray task's, the verification overrides over the precision's
    default thresholds (a threshold left at 0 keeps its default)."""
    raw = proto_dict(spec)
    raw["model_uri"] = raw.get("model_uri", "").strip()
    raw["output_uri"] = raw.get("output_uri", "").strip()
    for name in ("precision", "execution_provider"):
        if isinstance(raw.get(name), str):
            raw[name] = raw[name].lower()
    raw["extra_options"] = _extra_options(spec, problems)
    request = raw.pop("resources", {})
    if request.get("num_workers", 0) not in (0, 1):
        problems.append(("spec.resources.num_workers", "must be 0 or 1: a conversion is one task"))
    resources = {"memory_bytes": check_memory(request.get("memory", ""), "spec.resources.memory", problems)}
    for proto_name, name in (("cpus_per_worker", "num_cpus"), ("gpus_per_worker", "num_gpus")):
        if proto_name in request:
            resources[name] = request[proto_name]
    raw["resources"] = resources
    overrides = raw.pop("verification", {})
    try:
        defaults = thresholds_for(_unchecked(raw).precision)
    except InvalidSpec:  # a precision the model refuses; its thresholds do not matter
        defaults = thresholds_for(ConversionConfig.model_fields["precision"].default)
    given = {name: overrides.pop(name) for name in Thresholds.model_fields if name in overrides}
    raw["verification"] = {"thresholds": {**defaults.model_dump(), **given}, **overrides}
    raw.pop("adapter_uris", None)
    return raw


def _extra_options(spec: conversion_pb2.ConversionSpec, problems: Problems) -> dict[str, str]:
    options: dict[str, str] = {}
    for key in sorted(spec.extra_options):
        value = spec.extra_options[key].strip()
        field = f"spec.extra_options[{key}]"
        if key in RESERVED_OPTIONS:
            problems.append((field, RESERVED_OPTIONS[key]))
        elif key not in EXTRA_OPTIONS:
            problems.append(
                (field, f"is not a model builder option; known: {', '.join(sorted(EXTRA_OPTIONS))}")
            )
        elif not value:
            problems.append((field, "has an empty value"))
        else:
            options[key] = value
    for key, value in options.items():
        field = f"spec.extra_options[{key}]"
        if key in BOOL_OPTIONS and value not in ("true", "True", "1", "false", "False", "0"):
            problems.append((field, "must be true/True/1 or false/False/0"))
        elif key in CHOICE_OPTIONS and value not in CHOICE_OPTIONS[key]:
            problems.append((field, f"must be one of {', '.join(CHOICE_OPTIONS[key])}"))
        elif key == "num_hidden_layers" and not (value.isdigit() and int(value) > 0):
            problems.append((field, "must be a positive integer"))
    if {"exclude_lm_head", "include_hidden_states"} <= options.keys():
        problems.append(
            (
                "spec.extra_options",
                "exclude_lm_head and include_hidden_states cannot be used together",
            )
        )
    return options


def _files(spec: conversion_pb2.ConversionSpec, raw: dict[str, Any], problems: Problems) -> None:
    """The second pass, over what touches files and URIs: the model folder, the adapters,
    a Foundry Local template and the output URI; canonical URIs are written into raw."""
    raw["model_uri"] = model_uri = _model_uri(raw["model_uri"], problems)
    shape = _unchecked(raw)
    raw["adapters"] = _adapters(
        spec, model_uri, str(shape.precision), str(shape.execution_provider), problems
    )
    if spec.foundry_local_package and model_uri:
        _foundry_problem(
            artifacts.local_path(model_uri) if model_uri.startswith("file://") else None, problems
        )
    output_uri = raw["output_uri"]
    if output_uri and model_uri and artifacts.to_uri(output_uri) == model_uri:
        problems.append(("spec.output_uri", "must differ from spec.model_uri"))


def from_proto(spec: conversion_pb2.ConversionSpec) -> ConversionConfig:
    """Validate a ConversionSpec and apply its defaults; one InvalidSpec lists every problem."""
    problems: Problems = []
    raw = _shaped(spec, problems)
    _files(spec, raw, problems)
    config = None
    try:
        config = ConversionConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(problems_from(exc, "spec", renames=_PROTO_PATHS))
    collect(problems)
    assert config is not None
    return config


def _foundry_problem(folder: Path | None, problems: Problems) -> None:
    """A Foundry Local package needs a chat template Foundry's PromptTemplate can express."""
    if folder is None or not folder.is_dir():
        return
    from slmops.conversion.foundry import prompt_template

    try:
        prompt_template(folder)
    except InvalidSpec as exc:
        reason = "; ".join(f"{f}: {m}" for f, m in exc.problems)
        problems.append(("spec.foundry_local_package", f"cannot package for Foundry Local: {reason}"))


def _model_uri(uri: str, problems: Problems) -> str:
    if not uri:
        problems.append(("spec.model_uri", "is required: a checkpoint artifact or model folder"))
        return ""
    try:
        uri = artifacts.confine(uri, settings.allowed_roots(), "spec.model_uri")
        if not uri.startswith("file://"):
            return uri  # remote: read by the job through fsspec
        artifacts.open_input(uri, "spec.model_uri", verify=False)
    except InvalidSpec as exc:
        problems.extend(exc.problems)
        return uri
    folder = artifacts.local_path(uri)
    if not folder.is_dir():
        problems.append(("spec.model_uri", f"{uri!r} is not a folder"))
    elif not (folder / "config.json").is_file():
        problems.append(("spec.model_uri", f"{uri!r} has no config.json: not a Hugging Face checkpoint"))
    else:
        config = _read_config(folder / "config.json", problems)
        if config is not None:
            problem = _architecture_problem(config) or _head_size_problem(config)
            if problem:
                problems.append(("spec.model_uri", problem))
    return uri


def _read_config(path: Path, problems: Problems) -> dict[str, Any] | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(("spec.model_uri", f"config.json is not valid JSON: {exc}"))
        return None
    if not isinstance(config, dict):
        problems.append(("spec.model_uri", "config.json is not a JSON object"))
        return None
    return config


def _architecture_problem(config: dict[str, Any]) -> str:
    names = config.get("architectures") or []
    name = names[0] if isinstance(names, list) and names else None
    if name in ARCHITECTURES:
        return ""
    what = f"architecture {name!r}" if name else "config.json names no architecture"
    return f"{what} is not one the converter supports; supported: {', '.join(ARCHITECTURES)}"


def _head_size_problem(config: dict[str, Any]) -> str:
    """ONNX Runtime's attention kernels need a head size that is a multiple of 16."""
    try:
        heads = int(config["num_attention_heads"])
        head_size = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        return ""  # not a shape this check knows; the builder will judge
    if head_size % 16:
        return (
            f"attention head size {head_size} (hidden_size / num_attention_heads) is not a multiple "
            "of 16, which ONNX Runtime's attention kernels require"
        )
    return ""


def _adapters(
    spec: conversion_pb2.ConversionSpec, model_uri: str, precision: str, provider: str,
    problems: Problems,
) -> list[AdapterRef]:  # fmt: skip
    """The spec's adapters, resolved and checked against the base (see conversion/adapters.py)."""
    if not spec.adapter_uris:
        if spec.merge_adapters:
            problems.append(("spec.merge_adapters", "needs an adapter in spec.adapter_uris"))
        return []
    base_config = None
    if model_uri.startswith("file://") and (artifacts.local_path(model_uri) / "config.json").is_file():
        base_config = _read_config(artifacts.local_path(model_uri) / "config.json", [])
    elif model_uri:
        problems.append(("spec.adapter_uris", "adapters need a local spec.model_uri to be checked against"))
    refs = resolve(list(spec.adapter_uris), model_uri, base_config, spec.merge_adapters, problems)
    if spec.merge_adapters:
        if len(refs) > 1:
            problems.append(
                ("spec.merge_adapters", f"merges one adapter into the base; {len(refs)} were given")
            )
        return refs
    architecture = ((base_config or {}).get("architectures") or [None])[0]
    if base_config is not None and architecture not in ADAPTER_ARCHITECTURES:
        problems.append(("spec.adapter_uris", f"run-time adapters are built for {', '.join(ADAPTER_ARCHITECTURES)}, "
                                              f"not {architecture}; merge the adapter instead (spec.merge_adapters)"))  # fmt: skip
    if (provider, precision) not in (("cpu", "fp32"), ("cpu", "int4")):
        problems.append(("spec.adapter_uris", f"run-time adapters are built for CPU INT4 or FP32, not "
                                              f"{provider.upper()} {precision.upper()}; merge the adapter instead"))  # fmt: skip
    if "int4_nodes_to_exclude" in spec.extra_options:
        problems.append(
            ("spec.extra_options[int4_nodes_to_exclude]", "is set by the conversion when adapters are given")
        )
    return refs
