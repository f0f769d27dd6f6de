"""A SynthesisSpec validated before any work: from_proto.

The models in config.py are the spec (defaults, bounds, rules between
fields); what they cannot know is checked here, as a second pass: the files,
URIs, URLs, secrets and tokenizers the job will read, and the prompts file's
columns. Every problem comes back in one InvalidSpec, each named by its proto
path (`spec.endpoint.base_url`, ...).
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import ValidationError

from slmops.api.v1 import synthesis_pb2
from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, collect
from slmops.core.spec_checks import (
    Problems,
    check_api_key_env,
    check_http_url,
    check_local_uri,
    parse_memory,
    problems_from,
    proto_dict,
)
from slmops.synthesis.config import PROTO_PATHS, SynthesisConfig, oneof_path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _is_local(value: str) -> bool:
    return "://" in value or value.startswith(("/", ".", "~")) or os.path.exists(value)


def _tokenizer(value: str, field: str, problems: Problems) -> str:
    """A local tokenizer folder is confined and loaded now; a hub id is loaded by the job."""
    if not value or not _is_local(value):
        if value and not _HUB_ID.match(value):
            problems.append(
                (field, f"{value!r} is neither a local tokenizer folder nor a hub id like org/name")
            )
        return value
    uri = check_local_uri(value, field, problems, want="dir")
    if "://" in uri and not uri.startswith("file://") and not any(p[0] == field for p in problems):
        problems.append((field, f"{value!r}: a tokenizer is a local folder or a hub id like org/name"))
    if uri.startswith("file://") and artifacts.local_path(uri).is_dir():
        from slmops.synthesis.token_table import load_token_table

        try:
            load_token_table(uri, field)
        except InvalidSpec as exc:
            problems.extend(exc.problems)
    return uri


def _local_model(value: str, field: str, problems: Problems) -> str:
    """A local model folder is confined and must hold config.json; a hub id is loaded by the job."""
    if not value or not _is_local(value):
        if value and not _HUB_ID.match(value):
            problems.append((field, f"{value!r} is neither a model folder nor a hub id like org/name"))
        return value
    uri = check_local_uri(value, field, problems, want="dir")
    folder = artifacts.local_path(uri) if uri.startswith("file://") else None
    if folder and folder.is_dir() and not (folder / "config.json").exists():
        problems.append((field, f"{value!r} is not a Hugging Face model folder (no config.json)"))
    return uri


def _first_prompt(raw: dict[str, Any], problems: Problems) -> dict[str, Any] | None:
    """The prompts file confined, and (when local) its first rows checked now (inputs.check_prompts)."""
    if not raw.get("prompts_uri"):
        return None
    raw["prompts_uri"] = uri = check_local_uri(raw["prompts_uri"], "spec.prompts_uri", problems, want="file")
    if problems or not uri.startswith("file://"):
        return None
    from slmops.synthesis.inputs import check_prompts

    try:
        return check_prompts(uri, raw.get("prompt_template", ""), "spec.prompts_uri")
    except InvalidSpec as exc:
        problems.extend(exc.problems)
    return None


def _columns(raw: dict[str, Any], first: dict[str, Any] | None, problems: Problems) -> None:
    """label_column and filters.reference_column must be fields of the prompts."""
    columns = {"spec.label_column": raw.get("label_column", ""),
               "spec.filters.reference_column": raw.get("filters", {}).get("reference_column", "")}  # fmt: skip
    for field, column in columns.items():
        if column and first is not None and column not in first:
            problems.append(
                (field, f"{column!r} is not a field of the prompts (they have {', '.join(sorted(first))})")
            )


def _teacher(raw: dict[str, Any], problems: Problems) -> None:
    """The teacher's URL (a host jobs may call), key name (one that may go to that host), tokenizer or
    model folder; the oneof becomes `teacher` with its kind."""
    for kind in ("endpoint", "local"):
        if kind in raw:
            raw["teacher"] = {"kind": kind, **raw.pop(kind)}
    teacher = raw.get("teacher", {})
    field = f"spec.{teacher.get('kind')}"
    if teacher.get("base_url"):
        check_http_url(teacher["base_url"], f"{field}.base_url", problems)
    check_api_key_env(teacher.get("api_key_env", ""), f"{field}.api_key_env", problems,
                      base_url=teacher.get("base_url", ""))  # fmt: skip
    if "tokenizer" in teacher:
        teacher["tokenizer"] = _tokenizer(teacher["tokenizer"].strip(), f"{field}.tokenizer", problems)
    if teacher.get("kind") == "local" and "model" in teacher:
        teacher["model"] = _local_model(teacher["model"].strip(), f"{field}.model", problems)


def from_proto(spec: synthesis_pb2.SynthesisSpec) -> SynthesisConfig:
    """Validate a SynthesisSpec completely; raise one InvalidSpec listing every problem."""
    problems: Problems = []
    raw = proto_dict(spec)
    first_prompt = _first_prompt(raw, problems)
    _teacher(raw, problems)
    _columns(raw, first_prompt, problems)
    if raw.get("output_uri"):
        try:
            raw["output_uri"] = artifacts.confine(
                raw["output_uri"], settings.allowed_roots(), "spec.output_uri"
            )
        except InvalidSpec as exc:
            problems.extend(exc.problems)
    resources = raw.setdefault("resources", {})
    resources["memory_bytes"] = parse_memory(resources.pop("memory", ""), "spec.resources.memory", problems)
    try:
        config = SynthesisConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(problems_from(exc, "spec", renames=PROTO_PATHS))
    collect([(oneof_path(field), problem) for field, problem in problems])
    return config
