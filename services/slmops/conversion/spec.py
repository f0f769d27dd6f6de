"""The conversion job's configuration: a validated, JSON-serialisable domain object.

`from_proto` turns a `ConversionSpec` into a `ConversionConfig`, applying the
proto's defaults (INT4, CPU) and reporting every problem at once as one
`InvalidSpec` whose field names are proto paths (`spec.precision`).

What the conversion makes, by execution provider (ONNX Runtime GenAI 0.13.2
through Olive 0.13): CPU: INT4, INT8, FP32; CUDA: INT4, FP16, BF16, FP32;
DML: INT4, FP16, FP32. INT8 is the builder's FP32 graph quantized by Olive's
8-bit RTN pass (the builder has no INT8 of its own); it is checked on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from slmops.api.v1 import conversion_pb2
from slmops.conversion.adapters import ADAPTER_ARCHITECTURES, AdapterRef, resolve
from slmops.conversion.verify import Thresholds, thresholds_for
from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, collect
from slmops.core.quantities import check_memory

PRECISIONS = {
    conversion_pb2.PRECISION_UNSPECIFIED: "int4",
    conversion_pb2.INT4: "int4",
    conversion_pb2.INT8: "int8",
    conversion_pb2.FP16: "fp16",
    conversion_pb2.FP32: "fp32",
    conversion_pb2.BF16: "bf16",
}
PROVIDERS = {
    conversion_pb2.EXECUTION_PROVIDER_UNSPECIFIED: "cpu",
    conversion_pb2.CPU: "cpu",
    conversion_pb2.CUDA: "cuda",
    conversion_pb2.DML: "dml",
}
SUPPORTED = {
    "cpu": ("int4", "int8", "fp32"),
    "cuda": ("int4", "fp16", "bf16", "fp32"),
    "dml": ("int4", "fp16", "fp32"),
}
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
# Why a precision is not offered for a provider, as measured (FACTS.md).
UNSUPPORTED = {
    ("cpu", "fp16"): "ONNX Runtime GenAI 0.13.2 loads the builder's FP16 CPU graph but fails its "
    'second decode step ("Shape mismatch attempting to re-use buffer")',
    ("cpu", "bf16"): "ONNX Runtime has no BF16 kernels for these operators on the CPU",
    ("cuda", "int8"): "the 8-bit path is built and verified on the CPU only",
    ("dml", "int8"): "the 8-bit path is built and verified on the CPU only",
    ("dml", "bf16"): "the model builder makes BF16 for CUDA only",
}
# Text decoders the ONNX Runtime GenAI 0.13.2 model builder converts (its create_model).
ARCHITECTURES = (
    "ChatGLMForConditionalGeneration", "ChatGLMModel", "Ernie4_5ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GptOssForCausalLM", "GraniteForCausalLM",
    "InternLM2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "NemotronForCausalLM",
    "OlmoForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "Phi3SmallForCausalLM", "PhiMoEForCausalLM",
    "Qwen2ForCausalLM", "Qwen3ForCausalLM", "SmolLM3ForCausalLM",
)  # fmt: skip


class Resources(BaseModel):
    """What the conversion's Ray task reserves."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int = 0


class VerifySettings(BaseModel):
    """How the converted model is checked against its source (see conversion/verify.py)."""

    thresholds: Thresholds
    new_tokens: int = Field(default=16, ge=1, le=256)
    max_prompts: int = Field(default=8, ge=1, le=256)


class ConversionConfig(BaseModel):
    """Everything a conversion job needs, after validation and defaults."""

    model_uri: str
    precision: Literal["int4", "int8", "fp16", "fp32", "bf16"] = "int4"
    execution_provider: Literal["cpu", "cuda", "dml"] = "cpu"
    extra_options: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    output_uri: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    verification: VerifySettings | None = None  # None: the precision's defaults
    foundry_local_package: bool = False  # also write foundry/<publisher>/<name>/ for Foundry Local
    adapters: list[AdapterRef] = Field(default_factory=list)
    merge_adapters: bool = False  # merge the one adapter into the base before converting


def _verification(
    spec: conversion_pb2.ConversionSpec, precision: str, problems: list[tuple[str, str]]
) -> VerifySettings:
    """The precision's default thresholds with the spec's overrides (0 keeps a default)."""
    msg, field = spec.verification, "spec.verification"
    base = thresholds_for(precision)
    if not 0 <= msg.min_token_agreement <= 1:
        problems.append((f"{field}.min_token_agreement", "must be between 0 and 1"))
    for name in ("max_logits_rel_error", "max_kl"):
        if getattr(msg, name) < 0:
            problems.append((f"{field}.{name}", "must not be negative"))
    for name, top in (("new_tokens", 256), ("max_prompts", 256)):
        if not 0 <= getattr(msg, name) <= top:
            problems.append((f"{field}.{name}", f"must be between 1 and {top} (0: the default)"))
    thresholds = Thresholds(
        min_token_agreement=msg.min_token_agreement or base.min_token_agreement
        if 0 <= msg.min_token_agreement <= 1 else base.min_token_agreement,
        max_logits_rel_error=max(msg.max_logits_rel_error, 0) or base.max_logits_rel_error,
        max_kl=max(msg.max_kl, 0) or base.max_kl,
    )  # fmt: skip
    return VerifySettings(
        thresholds=thresholds,
        new_tokens=msg.new_tokens if 0 < msg.new_tokens <= 256 else 16,
        max_prompts=msg.max_prompts if 0 < msg.max_prompts <= 256 else 8,
    )


def _foundry_problem(folder: Path | None, problems: list[tuple[str, str]]) -> None:
    """A Foundry Local package needs a chat template Foundry's PromptTemplate can express."""
    if folder is None or not folder.is_dir():
        return
    from slmops.conversion.foundry import prompt_template

    try:
        prompt_template(folder)
    except InvalidSpec as exc:
        reason = "; ".join(f"{f}: {m}" for f, m in exc.problems)
        problems.append(("spec.foundry_local_package", f"cannot package for Foundry Local: {reason}"))


def _model_uri(spec: conversion_pb2.ConversionSpec, problems: list[tuple[str, str]]) -> str:
    uri = spec.model_uri.strip()
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


def _read_config(path: Path, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
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


def _precision(spec: conversion_pb2.ConversionSpec, problems: list[tuple[str, str]]) -> str:
    if spec.precision not in PRECISIONS:
        problems.append(("spec.precision", f"unknown precision {spec.precision}"))
    return PRECISIONS.get(spec.precision, "int4")


def _provider(spec: conversion_pb2.ConversionSpec, problems: list[tuple[str, str]]) -> str:
    if spec.execution_provider not in PROVIDERS:
        problems.append(("spec.execution_provider", f"unknown execution provider {spec.execution_provider}"))
    return PROVIDERS.get(spec.execution_provider, "cpu")


def _extra_options(spec: conversion_pb2.ConversionSpec, problems: list[tuple[str, str]]) -> dict[str, str]:
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


def _resources(spec: conversion_pb2.ConversionSpec, problems: list[tuple[str, str]]) -> Resources:
    res = spec.resources
    if res.num_workers not in (0, 1):
        problems.append(("spec.resources.num_workers", "must be 0 or 1: a conversion is one task"))
    if not 0 <= res.cpus_per_worker <= 1024:
        problems.append(("spec.resources.cpus_per_worker", "must be between 0 and 1024"))
    if not 0 <= res.gpus_per_worker <= 64:
        problems.append(("spec.resources.gpus_per_worker", "must be between 0 and 64"))
    memory = check_memory(res.memory, "spec.resources.memory", problems)
    return Resources(
        num_cpus=res.cpus_per_worker if res.cpus_per_worker > 0 else 1.0,
        num_gpus=max(res.gpus_per_worker, 0.0),
        memory_bytes=memory,
    )


def from_proto(spec: conversion_pb2.ConversionSpec) -> ConversionConfig:
    """Validate a ConversionSpec and apply its defaults; one InvalidSpec lists every problem."""
    problems: list[tuple[str, str]] = []
    model_uri = _model_uri(spec, problems)
    precision = _precision(spec, problems)
    provider = _provider(spec, problems)
    if precision not in SUPPORTED[provider]:
        choices = ", ".join(p.upper() for p in SUPPORTED[provider])
        why = UNSUPPORTED.get((provider, precision), "not one of its builds")
        problem = f"{precision.upper()} is not available for {provider.upper()} ({why}); use one of {choices}"
        problems.append(("spec.precision", problem))
    extra_options = _extra_options(spec, problems)
    adapters = _adapters(spec, model_uri, precision, provider, problems)
    if spec.foundry_local_package and model_uri:
        _foundry_problem(
            artifacts.local_path(model_uri) if model_uri.startswith("file://") else None, problems
        )
    resources = _resources(spec, problems)
    if provider == "cuda" and resources.num_gpus == 0:
        resources.num_gpus = 1.0  # the builder and the check run where the GPU is
    verification = _verification(spec, precision, problems)
    output_uri = spec.output_uri.strip()
    if output_uri and model_uri and artifacts.to_uri(output_uri) == model_uri:
        problems.append(("spec.output_uri", "must differ from spec.model_uri"))
    collect(problems)
    return ConversionConfig(
        model_uri=model_uri,
        precision=precision,
        execution_provider=provider,
        extra_options=extra_options,
        resources=resources,
        output_uri=output_uri,
        labels=dict(spec.labels),
        verification=verification,
        foundry_local_package=spec.foundry_local_package,
        adapters=adapters,
        merge_adapters=spec.merge_adapters,
    )


def _adapters(
    spec: conversion_pb2.ConversionSpec, model_uri: str, precision: str, provider: str,
    problems: list[tuple[str, str]],
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
