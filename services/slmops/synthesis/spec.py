"""What a synthesis job does, validated before any work: SynthesisConfig and from_proto.

`from_proto` checks every field of a `SynthesisSpec`, applies the defaults the
proto comments document, and raises one InvalidSpec listing every problem,
each named by its proto path (`spec.teacher.endpoint.base_url`, ...).
The sampling and API-key checks here are shared with the evaluation stage.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field

from slmops.api.v1 import common_pb2, synthesis_pb2
from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, collect

Problems = list[tuple[str, str]]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
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
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_MEMORY_UNITS = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


class SamplingConfig(BaseModel):
    """Sampling options with the proto defaults applied (0 means the documented default)."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_logprobs: int = 0
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class EndpointTeacherConfig(BaseModel):
    kind: Literal["endpoint"] = "endpoint"
    base_url: str
    model: str
    api_key_env: str = ""
    chat: bool = False
    max_concurrency: int = 4
    timeout_s: float = 60.0
    # Retries of 429/503/connection errors: attempts = max_retries + 1.
    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0


class LocalTeacherConfig(BaseModel):
    kind: Literal["local"] = "local"
    model: str
    device: str = "cpu"


TeacherConfig = Annotated[EndpointTeacherConfig | LocalTeacherConfig, Field(discriminator="kind")]


class ResourcesConfig(BaseModel):
    num_workers: int = 1
    cpus_per_worker: float = 0.0  # 0: the teacher kind's default
    gpus_per_worker: float = 0.0
    memory_bytes: int = 0  # 0: unbounded


class SynthesisConfig(BaseModel):
    prompts_uri: str
    teacher: TeacherConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    validation_fraction: float = 0.1
    seed: int = 0
    output_uri: str = ""
    system_prompt: str = ""
    num_shards: int = 2
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    labels: dict[str, str] = Field(default_factory=dict)


# -- checks shared with the evaluation stage ------------------------------------------


def looks_like_key(value: str) -> bool:
    """True when value looks like a secret rather than an environment variable name."""
    if value.lower().startswith(tuple(p.lower() for p in _KEY_PREFIXES)):
        return True
    long_random = len(value) >= 32 and "_" not in value
    return long_random and any(c.islower() for c in value) and any(c.isdigit() for c in value)


def check_api_key_env(value: str, field: str, problems: Problems) -> None:
    """api_key_env must be the NAME of an environment variable; never echo a secret back."""
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
    elif not _ENV_NAME.match(value):
        problems.append(
            (field, "must be an environment variable name (letters, digits, underscore)")
        )


def check_http_url(value: str, field: str, problems: Problems) -> None:
    if not value:
        problems.append((field, "is required"))
        return
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        problems.append(
            (field, f"must be an http(s) URL like https://api.example.com/v1, not {value!r}")
        )


def sampling_from_proto(
    msg: common_pb2.SamplingParams, field: str, problems: Problems
) -> SamplingConfig:
    """Range-check sampling parameters and apply the proto defaults."""
    if not 0 <= msg.max_tokens <= 8192:
        problems.append(
            (f"{field}.max_tokens", f"must be in 1..8192 (0 means 64), got {msg.max_tokens}")
        )
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
    """Confine a local URI to the allowed roots and check it exists; remote URIs pass as they are.

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
    return uri


def parse_memory(value: str, field: str, problems: Problems) -> int:
    """'4Gi', '512M', '1000' -> bytes; '' -> 0 (unbounded)."""
    if not value:
        return 0
    match = _MEMORY.match(value.strip())
    if not match:
        problems.append((field, f"must be a quantity like 4Gi or 512Mi, not {value!r}"))
        return 0
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])


# -- the synthesis spec -------------------------------------------------------------


def _endpoint(msg: synthesis_pb2.TeacherEndpoint, problems: Problems) -> EndpointTeacherConfig:
    field = "spec.teacher.endpoint"
    check_http_url(msg.base_url, f"{field}.base_url", problems)
    if not msg.model.strip():
        problems.append((f"{field}.model", "is required (the model name the endpoint serves)"))
    check_api_key_env(msg.api_key_env, f"{field}.api_key_env", problems)
    if not 0 <= msg.max_concurrency <= 256:
        problems.append(
            (
                f"{field}.max_concurrency",
                f"must be in 1..256 (0 means 4), got {msg.max_concurrency}",
            )
        )
    if not 0 <= msg.timeout_s <= 3600:
        problems.append(
            (
                f"{field}.timeout_s",
                f"must be in (0, 3600] seconds (0 means 60), got {msg.timeout_s}",
            )
        )
    return EndpointTeacherConfig(
        base_url=msg.base_url.rstrip("/"),
        model=msg.model.strip(),
        api_key_env=msg.api_key_env,
        chat=msg.chat,
        max_concurrency=msg.max_concurrency or 4,
        timeout_s=msg.timeout_s or 60.0,
    )


def _local(msg: synthesis_pb2.LocalTeacher, problems: Problems) -> LocalTeacherConfig:
    field = "spec.teacher.local"
    model = msg.model.strip()
    if not model:
        problems.append((f"{field}.model", "is required (a model folder or a hub id)"))
    elif model.startswith(("file://", "/", ".", "~")) or os.path.exists(model):
        model = check_local_uri(model, f"{field}.model", problems, want="dir")
        folder = artifacts.local_path(model) if model.startswith("file://") else None
        if folder and folder.is_dir() and not (folder / "config.json").exists():
            problems.append(
                (
                    f"{field}.model",
                    f"{msg.model!r} is not a Hugging Face model folder (no config.json)",
                )
            )
    elif "://" not in model and not _HUB_ID.match(model):
        problems.append(
            (f"{field}.model", f"{model!r} is neither a model folder nor a hub id like org/name")
        )
    device = msg.device.strip() or "cpu"
    if not re.match(r"^(cpu|cuda(:\d+)?)$", device):
        problems.append((f"{field}.device", f"must be cpu or cuda[:N], got {msg.device!r}"))
    return LocalTeacherConfig(model=model, device=device)


def from_proto(spec: synthesis_pb2.SynthesisSpec) -> SynthesisConfig:
    """Validate a SynthesisSpec completely; raise one InvalidSpec listing every problem."""
    problems: Problems = []
    prompts_uri = check_local_uri(spec.prompts_uri, "spec.prompts_uri", problems, want="file")
    if not problems and prompts_uri.startswith("file://"):
        # A local file is cheap to check now: bad lines are reported before any work.
        from slmops.synthesis.dataset import read_prompts

        try:
            read_prompts(prompts_uri, "spec.prompts_uri")
        except InvalidSpec as exc:
            problems.extend(exc.problems)

    which = spec.WhichOneof("teacher")
    teacher: EndpointTeacherConfig | LocalTeacherConfig | None = None
    if which == "endpoint":
        teacher = _endpoint(spec.endpoint, problems)
    elif which == "local":
        teacher = _local(spec.local, problems)
    else:
        problems.append(
            (
                "spec.teacher",
                "set exactly one teacher: endpoint (an OpenAI-compatible URL) or local",
            )
        )

    sampling = sampling_from_proto(spec.sampling, "spec.sampling", problems)
    if not 0.0 <= spec.validation_fraction <= 0.9:
        problems.append(
            (
                "spec.validation_fraction",
                f"must be in [0, 0.9] (0 means 0.1), got {spec.validation_fraction}",
            )
        )
    if not 0 <= spec.num_shards <= 1024:
        problems.append(
            ("spec.num_shards", f"must be in 1..1024 (0 means 2), got {spec.num_shards}")
        )
    if spec.system_prompt and not (isinstance(teacher, EndpointTeacherConfig) and teacher.chat):
        problems.append(
            (
                "spec.system_prompt",
                "is only used by chat teachers: set spec.teacher.endpoint.chat or leave it empty",
            )
        )
    output_uri = ""
    if spec.output_uri:
        try:
            output_uri = artifacts.confine(
                spec.output_uri, settings.allowed_roots(), "spec.output_uri"
            )
        except InvalidSpec as exc:
            problems.extend(exc.problems)

    res = spec.resources
    if res.num_workers < 0:
        problems.append(("spec.resources.num_workers", "must not be negative"))
    if res.cpus_per_worker < 0:
        problems.append(("spec.resources.cpus_per_worker", "must not be negative"))
    if res.gpus_per_worker < 0:
        problems.append(("spec.resources.gpus_per_worker", "must not be negative"))
    if (
        res.gpus_per_worker > 0
        and isinstance(teacher, LocalTeacherConfig)
        and teacher.device == "cpu"
    ):
        problems.append(
            ("spec.resources.gpus_per_worker", "asks for GPUs but spec.teacher.local.device is cpu")
        )
    memory = parse_memory(res.memory, "spec.resources.memory", problems)

    collect(problems)
    assert teacher is not None
    return SynthesisConfig(
        prompts_uri=prompts_uri,
        teacher=teacher,
        sampling=sampling,
        validation_fraction=spec.validation_fraction or 0.1,
        seed=spec.seed,
        output_uri=output_uri,
        system_prompt=spec.system_prompt,
        num_shards=spec.num_shards or 2,
        resources=ResourcesConfig(
            num_workers=res.num_workers or 1,
            cpus_per_worker=res.cpus_per_worker,
            gpus_per_worker=res.gpus_per_worker,
            memory_bytes=memory,
        ),
        labels=dict(spec.labels),
    )
