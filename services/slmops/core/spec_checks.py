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

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar
from urllib.parse import urlparse

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from slmops.core import artifacts, egress, secret_refs, settings
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


class SpecModel(BaseModel):
    """A config model that reports every problem of its input in one ValidationError.

    `cross_checks` (rules between fields) run on the input even when a field
    fails, so their problems come with the fields' own; `required` words the
    problem of a missing field (proto3 leaves an empty string or list out).
    """

    required: ClassVar[dict[str, str]] = {}

    @classmethod
    def cross_checks(cls, data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """(location in the input, problem) pairs; data is the input, unvalidated."""
        return []

    @classmethod
    def value(cls, data: dict[str, Any], name: str) -> Any:
        """A field of the input, or the field's default when the input leaves it out."""
        if name in data:
            return data[name]
        return cls.model_fields[name].get_default(call_default_factory=True)

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: Any) -> Any:
        errors: list[Any] = []
        model = None
        try:
            model = handler(data)
        except ValidationError as exc:
            for item in exc.errors(include_url=False):
                name = item["loc"][0] if len(item["loc"]) == 1 else None
                if item["type"] == "missing" and name in cls.required:
                    errors.append(_problem(item["loc"], cls.required[name]))
                elif item["type"] == "value_error":  # rebuilt: its context is not kept by errors()
                    errors.append(_problem(item["loc"], item["msg"].removeprefix("Value error, ")))
                else:
                    errors.append(item)
        if isinstance(data, dict):
            errors += [_problem(loc, message) for loc, message in cls.cross_checks(data)]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return model


def _problem(loc: tuple[str | int, ...], message: str) -> Any:
    return {"type": PydanticCustomError("value_error", message), "loc": loc, "input": None}


class SamplingConfig(SpecModel):
    """How the teacher or the target decodes (common.proto's SamplingParams)."""

    max_tokens: int = Field(64, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0)  # 0: greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_logprobs: int = Field(0, ge=0, le=20)  # 0: none
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=4)
    seed: int | None = None  # None: unseeded


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


def check_api_key_env(value: str, field: str, problems: Problems, *, base_url: str = "") -> None:
    """api_key_env must be the NAME of an environment variable the operator allowed
    (core/secret_refs), and, given the base_url it goes with, one the operator allows to go
    there (SLMOPS_SECRET_HOSTS, SLMOPS_PLAIN_HTTP_HOSTS); never echo a secret back."""
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
    elif base_url and not _url_problem(base_url):
        if problem := secret_refs.destination_problem(value, base_url):
            problems.append((field, problem))


def _url_problem(value: str) -> str:
    if problem := secret_refs.url_credentials_problem(value):
        return problem  # the URL itself is not echoed: it holds a secret
    try:
        parsed = urlparse(value)
        _ = parsed.port  # a port that is not a number fails here
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"must be an http(s) URL like https://api.example.com/v1, not {value!r}"
    return ""


def check_http_url(value: str, field: str, problems: Problems) -> None:
    """An http(s) URL without credentials in it, to a host jobs may call (core/egress)."""
    if not value:
        problems.append((field, "is required"))
        return
    if problem := _url_problem(value) or egress.url_problem(value):
        problems.append((field, problem))


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


# Labels a request gives a job, deployment or pipeline run (or filters a List by): a few short,
# Kubernetes-like pairs, so that no one record can make every List answer too large to send.
LABELS_MAX = 32
LABEL_KEY_MAX = 63
LABEL_VALUE_MAX = 256
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?")


def check_labels(labels: Mapping[str, Any], field: str = "spec.labels") -> Problems:
    """The problems of a request's labels: at most LABELS_MAX pairs; each key 1-63 letters, digits,
    '.', '_', '-' or '/' that starts and ends with a letter or digit (`team`, `slmops.io/deployment`);
    each value text of at most 256 characters without control characters. A problem names its label
    (`spec.labels["team"]`, a long key cut short); too many labels is one problem."""
    if len(labels) > LABELS_MAX:
        return [(field, f"has {len(labels)} labels; at most {LABELS_MAX} are allowed")]
    problems: Problems = []
    for key, value in labels.items():
        where = f"{field}[{json.dumps(key if len(key) <= LABEL_KEY_MAX else key[:40] + '...')}]"
        if len(key) > LABEL_KEY_MAX:
            problems.append((where, f"the label key is {len(key)} characters long; at most {LABEL_KEY_MAX}"))
        elif not _LABEL_KEY.fullmatch(key):
            problems.append((where, "the label key must be letters, digits, '.', '_', '-' or '/', "
                                    "starting and ending with a letter or digit"))  # fmt: skip
        if not isinstance(value, str):
            problems.append((where, "the label value must be text"))
        elif len(value) > LABEL_VALUE_MAX:
            problems.append(
                (where, f"the label value is {len(value)} characters long; at most {LABEL_VALUE_MAX}")
            )
        elif any(ord(c) < 32 or ord(c) == 127 for c in value):
            problems.append((where, "the label value must not hold control characters"))
    return problems


def parse_memory(value: str, field: str, problems: Problems) -> int:
    """'4Gi', '512M', '1000' -> bytes; '' -> 0 (unbounded)."""
    return check_memory(value, field, problems)
