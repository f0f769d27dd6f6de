"""How a stage spec is validated, shared by every service and the pipeline file.

A spec's pydantic model is the spec: its `Field` constraints and validators
state each default and bound once. `proto_dict` turns a message into the dict
the model validates (proto3 leaves zero fields out, so the model's defaults
apply); `problems_from` turns one `ValidationError` into (proto field path,
problem) pairs. The checks that touch files, URLs and secrets (below) are a
second pass that appends to the same list, so `from_proto` reports every
problem of a spec in one InvalidSpec.
"""

from __future__ import annotations

from urllib.parse import urlparse

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, Field, ValidationError

from slmops.api.v1 import common_pb2
from slmops.core import artifacts, secret_refs, settings
from slmops.core.errors import InvalidSpec
from slmops.core.quantities import check_memory

Problems = list[tuple[str, str]]

_KEY_PREFIXES = (
    "sk-",
    "sk_",
    "pk-",
    "rk-",
    "hf_",
    "ghp_",
    "gho_",
    "xox",
    "bearer ",
    "key-",
    "AKIA",
)


class SamplingConfig(BaseModel):
    """Sampling options with the proto defaults applied (0 means the documented default)."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_logprobs: int = 0
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


def proto_dict(message: Message) -> dict:
    """A message as the dict its config model validates: proto field names, fields left at
    proto3's zero omitted (the model's defaults apply), enums by name, 64-bit integers as ints."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True, use_integers_for_enums=False)


def _shown(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return ""
    text = repr(value)
    return f", got {text if len(text) <= 80 else text[:77] + '...'}"


def problems_from(
    error: ValidationError, prefix: str = "spec", renames: dict[str, str] | None = None
) -> Problems:
    """A pydantic error as (proto path, problem) pairs: every problem, each naming its field
    by its full path (`spec.hyperparameters.max_seq_length`, `spec.adapters[0].name`).

    renames maps a model path to the proto path where the two differ
    (`resources.memory_bytes` -> `resources.memory`).
    """
    problems: Problems = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        path = path[1:]
        path = (renames or {}).get(path, path)
        field = f"{prefix}.{path}" if path else prefix
        message = item["msg"]
        if item["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        for old, new in (("Input should", "must"), ("String should", "must"), ("List should", "must")):
            message = message.replace(old, new)
        problems.append(
            (field, message + ("" if item["type"] == "value_error" else _shown(item.get("input"))))
        )
    return problems


def looks_like_key(value: str) -> bool:
    """True when value looks like a secret rather than an environment variable name."""
    if value.lower().startswith(tuple(p.lower() for p in _KEY_PREFIXES)):
        return True
    long_random = len(value) >= 32 and "_" not in value
    return long_random and any(c.islower() for c in value) and any(c.isdigit() for c in value)


def check_api_key_env(value: str, field: str, problems: Problems) -> None:
    """api_key_env must be the NAME of an environment variable the operator allowed
    (core/secret_refs); never echo a secret back."""
    if not value:
        return
    if looks_like_key(value):
        problems.append(
            (
                field,
                (
                    "looks like an API key; give the NAME of the environment variable "
                    "that holds the key (e.g. TEACHER_API_KEY), never the key itself"
                ),
            )
        )
    elif problem := secret_refs.env_name_problem(value):
        problems.append((field, problem))


def check_http_url(value: str, field: str, problems: Problems) -> None:
    """An http(s) URL without credentials in it."""
    if not value:
        problems.append((field, "is required"))
        return
    if problem := secret_refs.url_credentials_problem(value):
        problems.append((field, problem))  # the URL itself is not echoed: it holds a secret
        return
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        problems.append((field, f"must be an http(s) URL like https://api.example.com/v1, not {value!r}"))


def sampling_from_proto(msg: common_pb2.SamplingParams, field: str, problems: Problems) -> SamplingConfig:
    """Range-check sampling parameters and apply the proto defaults."""
    if not 0 <= msg.max_tokens <= 8192:
        problems.append((f"{field}.max_tokens", f"must be in 1..8192 (0 means 64), got {msg.max_tokens}"))
    if not 0.0 <= msg.temperature <= 2.0:
        problems.append((f"{field}.temperature", f"must be in 0..2, got {msg.temperature}"))
    if not 0.0 <= msg.top_p <= 1.0:
        problems.append((f"{field}.top_p", f"must be in 0..1 (0 means 1.0), got {msg.top_p}"))
    if not 0 <= msg.top_logprobs <= 20:
        problems.append((f"{field}.top_logprobs", f"must be in 0..20, got {msg.top_logprobs}"))
    if len(msg.stop) > 4:
        problems.append((f"{field}.stop", f"at most 4 stop strings, got {len(msg.stop)}"))
    if any(not s for s in msg.stop):
        problems.append((f"{field}.stop", "stop strings must not be empty"))
    return SamplingConfig(
        max_tokens=msg.max_tokens or 64,
        temperature=msg.temperature,
        top_p=msg.top_p or 1.0,
        top_logprobs=msg.top_logprobs,
        stop=list(msg.stop),
        seed=msg.seed or None,
    )


def check_local_uri(value: str, field: str, problems: Problems, *, want: str = "any") -> str:
    """Confine a URI (artifacts.confine) and check that a local one exists and, under the
    artifact root, lies in a sealed artifact; a remote URI of an allowed scheme passes as it is.

    want is "file", "dir" or "any". Returns the canonical URI (or value if it failed).
    """
    if not value:
        problems.append((field, "is required"))
        return value
    try:
        uri = artifacts.confine(value, settings.allowed_roots(), field)
    except InvalidSpec as exc:
        problems.extend(exc.problems)
        return value
    if uri.startswith("file://"):
        path = artifacts.local_path(uri)
        if not path.exists():
            problems.append((field, f"{value!r} does not exist"))
        elif want == "file" and not path.is_file():
            problems.append((field, f"{value!r} is not a file"))
        elif want == "dir" and not path.is_dir():
            problems.append((field, f"{value!r} is not a folder"))
        else:
            try:
                artifacts.open_input(uri, field, verify=False)  # the job checks the hashes
            except InvalidSpec as exc:
                problems.extend(exc.problems)
    return uri


def parse_memory(value: str, field: str, problems: Problems) -> int:
    """'4Gi', '512M', '1000' -> bytes; '' -> 0 (unbounded)."""
    return check_memory(value, field, problems)
