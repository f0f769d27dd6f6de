"""A `TrainingSpec` message into a `TrainingConfig` (training/config.py), checked.

`from_proto` builds the dict the model validates from the message
(`proto_dict`: fields at proto3's zero are left out, so each "0 means ..."
default is the model's own), validates it, runs the chosen recipe's checks
of the spec, then the checks that touch the inputs (confinement, what a
local folder holds, and with `deep` what the base model, datasets and
teacher hold). Every problem comes back at once as one `InvalidSpec` whose
field names are proto paths (`spec.hyperparameters.epochs`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from slmops.api.v1 import training_pb2
from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, collect
from slmops.core.quantities import check_memory
from slmops.core.spec_checks import Problems, problems_from, proto_dict
from slmops.training import chat
from slmops.training.config import METHODS, TrainingConfig, parse_override
from slmops.training.recipes import checks, registry

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Model fields whose proto field has another name or lives elsewhere.
_PROTO_PATHS = {
    "resources.memory_bytes": "resources.memory",
    "distill.temperature": "hyperparameters.distill_temperature",
    "distill.alpha": "hyperparameters.distill_alpha",
}
# Choices the models take in lowercase, and maps kept as the caller wrote them.
_LOWERCASE = ("precision", "loss", "distribution", "mode")
_MAPS = ("labels", "config_overrides")
_ARCHITECTURE_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "num_key_value_heads", "max_position_embeddings", "vocab_size", "head_dim")  # fmt: skip


def _tidy(value: Any, key: str = "") -> Any:
    """Strings stripped (choices lowercased), and a string or section left empty dropped so
    the model's default applies as it does for a field proto3 left out; maps stay as written."""
    if isinstance(value, dict):
        if key in _MAPS:
            return value
        tidy = {k: _tidy(v, k) for k, v in value.items()}
        return {k: v for k, v in tidy.items() if v != "" and v != {}}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    if isinstance(value, str):
        return value.strip().lower() if key in _LOWERCASE else value.strip()
    return value


def _method(spec: training_pb2.TrainingSpec, problems: Problems) -> str:
    if spec.method in METHODS:
        return METHODS[spec.method]
    names = ", ".join(training_pb2.TrainingMethod.Name(m) for m in METHODS)
    if spec.method == training_pb2.TRAINING_METHOD_UNSPECIFIED:
        problems.append(("spec.method", f"is required: one of {names}"))
    else:
        problems.append(("spec.method", f"unknown method {spec.method}; one of {names}"))
    return ""


def _base(base: dict[str, Any], problems: Problems) -> None:
    """The base model is required; config overrides parsed, and only for a new model."""
    base.setdefault("model", "")
    if not base["model"]:
        problems.append(("spec.base.model", "is required: a model folder, artifact URI or hub id"))
    overrides = {}
    for key, text in sorted(base.get("config_overrides", {}).items()):
        field = f"spec.base.config_overrides[{key}]"
        if not _KEY.match(key):
            problems.append((field, "is not a valid config attribute name"))
        elif not text.strip():
            problems.append((field, "has an empty value"))
        else:
            overrides[key] = value = parse_override(text)
            if key in _ARCHITECTURE_INTS and (type(value) is not int or value <= 0):
                problems.append((field, "must be a positive integer"))
    base["config_overrides"] = overrides
    if overrides and not base.get("from_config"):
        problems.append(("spec.base.config_overrides", "apply only with spec.base.from_config (a new model)"))
    if "init_seed" in base and not base.get("from_config"):
        problems.append(
            ("spec.base.init_seed", "seeds fresh weights: it applies only with spec.base.from_config")
        )


def _sections(raw: dict[str, Any], method: str, problems: Problems) -> None:
    """The method-specific sections: present when the spec sets them or the method needs them.

    The distillation's temperature and alpha are proto hyperparameters but live
    in the config's distill section."""
    if method and "lora" in registry.get(method).sections:
        raw.setdefault("lora", {})
    hp = raw["hyperparameters"]
    distill_hp = {
        name: hp.pop(f"distill_{name}") for name in ("temperature", "alpha") if f"distill_{name}" in hp
    }
    if method and method != "logit_distill":
        problems.extend(
            (f"spec.hyperparameters.distill_{name}", f"applies to LOGIT_DISTILL only, not {method.upper()}")
            for name in distill_hp
        )
    if "distill" in raw or method == "logit_distill" or (distill_hp and not method):
        raw["distill"] = {**raw.get("distill", {}), **distill_hp}
    raw["adapters"] = [{"name": "", "dataset_uri": "", **a} for a in raw.get("adapters", [])]


def _is_local(value: str) -> bool:
    """A file:// URI or a path that exists or is spelled as one; anything else is a hub id or remote URI."""
    if value.startswith("file://"):
        return True
    if "://" in value:
        return False
    return value.startswith(("/", ".", "~")) or Path(value).exists()


def check_local_input(value: str, field: str, required_file: str, problems: Problems) -> str:
    """Every URI is confined (artifacts.confine); local inputs must hold what the job will read
    and, under the artifact root, be sealed artifacts.

    Returns a local input as an absolute file:// URI (the job runs in another
    working directory); a remote URI or a hub id as it is.
    """
    if not _is_local(value) and "://" not in value:
        return value  # a hub id
    try:
        uri = artifacts.confine(value, settings.allowed_roots(), field)
        if not uri.startswith("file://"):
            return uri
        artifacts.open_input(uri, field, verify=False)  # the job checks the hashes
    except InvalidSpec as exc:
        problems.extend(exc.problems)
        return value
    from slmops.core.datasets import split_exists

    if not split_exists(uri, required_file):  # a JSONL file, or a split's Parquet shards
        problems.append((field, f"{value!r} has no {required_file}"))
    return uri


def _inputs(raw: dict[str, Any], problems: Problems) -> None:
    """Local inputs confined and made absolute (a chat template file checked too), in place."""
    if raw["base"]["model"]:
        raw["base"]["model"] = check_local_input(
            raw["base"]["model"], "spec.base.model", "config.json", problems
        )
    if raw.get("dataset_uri"):
        raw["dataset_uri"] = check_local_input(
            raw["dataset_uri"], "spec.dataset_uri", "train.jsonl", problems
        )
    for index, adapter in enumerate(raw["adapters"]):
        if adapter["dataset_uri"]:
            adapter["dataset_uri"] = check_local_input(
                adapter["dataset_uri"], f"spec.adapters[{index}].dataset_uri", "train.jsonl", problems
            )
    if raw.get("chat_template"):
        try:
            raw["chat_template"] = chat.check(raw["chat_template"])
        except InvalidSpec as exc:
            problems.extend(exc.problems)
    distill = raw.get("distill")
    if distill and distill.get("teacher"):
        distill["teacher"] = check_local_input(
            distill["teacher"], "spec.distill.teacher", "config.json", problems
        )


def from_proto(spec: training_pb2.TrainingSpec, *, deep: bool = True) -> TrainingConfig:
    """Validate a TrainingSpec and apply its defaults; one InvalidSpec lists every problem.

    With `deep`, the recipe also looks inside the inputs (model config,
    dataset columns, teacher vocabulary) the way the job will.
    """
    problems: Problems = []
    method = _method(spec, problems)
    raw = _tidy(proto_dict(spec))
    raw["method"] = method or "sft_distill"
    raw.setdefault("base", {})
    raw.setdefault("hyperparameters", {})
    resources = raw.setdefault("resources", {})
    resources["memory_bytes"] = check_memory(resources.pop("memory", ""), "spec.resources.memory", problems)
    _base(raw["base"], problems)
    _sections(raw, method, problems)
    _inputs(raw, problems)
    config = None
    try:
        config = TrainingConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(problems_from(exc, "spec", renames=_PROTO_PATHS))
    if method:
        recipe = registry.get(method)
        checks.check_spec(recipe, raw, problems)
        if config is not None and not problems and deep:
            checks.inputs(recipe, config, problems)
    collect(problems)
    assert config is not None
    return config
