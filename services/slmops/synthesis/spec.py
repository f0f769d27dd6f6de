"""What a synthesis job does, validated before any work: SynthesisConfig and from_proto.

`from_proto` checks every field of a `SynthesisSpec`, applies the defaults the
proto comments document, and raises one InvalidSpec listing every problem,
each named by its proto path (`spec.teacher.endpoint.base_url`, ...).
"""

from __future__ import annotations

import json
import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from slmops.api.v1 import synthesis_pb2
from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, collect
from slmops.core.spec_checks import (
    Problems,
    SamplingConfig,
    check_api_key_env,
    check_http_url,
    check_local_uri,
    parse_memory,
    sampling_from_proto,
)
from slmops.synthesis.filters import DEFAULT_REFUSALS, FiltersConfig

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class EndpointTeacherConfig(BaseModel):
    kind: Literal["endpoint"] = "endpoint"
    base_url: str
    model: str
    api_key_env: str = ""
    chat: bool = False
    max_concurrency: int = 4
    timeout_s: float = 60.0
    # The teacher's tokenizer (file:// URI or hub id): top-k log-probabilities get token ids.
    tokenizer: str = ""
    # Retries of 429, 500, 502, 503, 504, timeouts and connection errors (endpoint_teacher.py).
    max_attempts: int = 6
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0
    # Rate limits of the whole job (0: none); prices in money per million tokens (0: unknown).
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    price_prompt_per_million: float = 0.0
    price_completion_per_million: float = 0.0


class LocalTeacherConfig(BaseModel):
    kind: Literal["local"] = "local"
    model: str
    device: str = "cpu"
    chat: bool = False  # prompts (and the system prompt) through the model's chat template
    batch_size: int = 8  # prompts generated together


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
    # The job fails when more than this share of the prompts is rejected (what was answered is kept).
    max_reject_fraction: float = 0.5
    prompt_template: str = ""
    samples_per_prompt: int = 1
    label_column: str = ""  # the split keeps this field's values in proportion
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    labels: dict[str, str] = Field(default_factory=dict)


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
    if not 0 <= msg.max_attempts <= 100:
        problems.append((f"{field}.max_attempts", f"must be in 1..100 (0 means 6), got {msg.max_attempts}"))
    for name in ("backoff_s", "backoff_max_s", "retry_after_max_s", "requests_per_minute", "tokens_per_minute",
                 "price_prompt_per_million", "price_completion_per_million"):  # fmt: skip
        if getattr(msg, name) < 0:
            problems.append((f"{field}.{name}", f"must not be negative, got {getattr(msg, name)}"))
    default = {name: f.default for name, f in EndpointTeacherConfig.model_fields.items()}
    return EndpointTeacherConfig(
        base_url=msg.base_url.rstrip("/"),
        model=msg.model.strip(),
        api_key_env=msg.api_key_env,
        chat=msg.chat,
        max_concurrency=msg.max_concurrency or 4,
        timeout_s=msg.timeout_s or 60.0,
        tokenizer=_tokenizer(msg.tokenizer.strip(), f"{field}.tokenizer", problems),
        max_attempts=msg.max_attempts or default["max_attempts"],
        backoff_s=msg.backoff_s or default["backoff_s"],
        backoff_max_s=msg.backoff_max_s or default["backoff_max_s"],
        retry_after_max_s=msg.retry_after_max_s or default["retry_after_max_s"],
        requests_per_minute=msg.requests_per_minute,
        tokens_per_minute=msg.tokens_per_minute,
        price_prompt_per_million=msg.price_prompt_per_million,
        price_completion_per_million=msg.price_completion_per_million,
    )


def _tokenizer(value: str, field: str, problems: Problems) -> str:
    """A local tokenizer folder is confined and loaded now; a hub id is loaded by the job."""
    if not value:
        return ""
    if "://" in value or value.startswith(("/", ".", "~")) or os.path.exists(value):
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
    if not _HUB_ID.match(value):
        problems.append((field, f"{value!r} is neither a local tokenizer folder nor a hub id like org/name"))
    return value


def _local(msg: synthesis_pb2.LocalTeacher, problems: Problems) -> LocalTeacherConfig:
    field = "spec.teacher.local"
    model = msg.model.strip()
    if not model:
        problems.append((f"{field}.model", "is required (a model folder or a hub id)"))
    elif "://" in model or model.startswith(("/", ".", "~")) or os.path.exists(model):
        model = check_local_uri(model, f"{field}.model", problems, want="dir")
        folder = artifacts.local_path(model) if model.startswith("file://") else None
        if folder and folder.is_dir() and not (folder / "config.json").exists():
            problems.append(
                (
                    f"{field}.model",
                    f"{msg.model!r} is not a Hugging Face model folder (no config.json)",
                )
            )
    elif not _HUB_ID.match(model):
        problems.append((f"{field}.model", f"{model!r} is neither a model folder nor a hub id like org/name"))
    device = msg.device.strip() or "cpu"
    if not re.match(r"^(cpu|cuda(:\d+)?)$", device):
        problems.append((f"{field}.device", f"must be cpu or cuda[:N], got {msg.device!r}"))
    if not 0 <= msg.batch_size <= 1024:
        problems.append((f"{field}.batch_size", f"must be in 1..1024 (0 means 8), got {msg.batch_size}"))
    return LocalTeacherConfig(model=model, device=device, chat=msg.chat, batch_size=msg.batch_size or 8)


def _filters(msg: synthesis_pb2.AnswerFilters, first_prompt: dict[str, Any] | None,
             problems: Problems) -> FiltersConfig:  # fmt: skip
    field = "spec.filters"
    patterns = list(msg.refusal_patterns) or list(DEFAULT_REFUSALS)
    for i, pattern in enumerate(msg.refusal_patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append((f"{field}.refusal_patterns[{i}]", f"is not a regular expression: {exc}"))
    if msg.min_chars < 0 or msg.max_chars < 0:
        problems.append((f"{field}.min_chars", "min_chars and max_chars must not be negative"))
    elif msg.max_chars and msg.min_chars > msg.max_chars:
        problems.append((f"{field}.max_chars", f"is below min_chars ({msg.max_chars} < {msg.min_chars})"))
    schema = None
    if msg.json_schema:
        try:
            import jsonschema

            schema = json.loads(msg.json_schema)
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except ValueError as exc:
            problems.append((f"{field}.json_schema", f"is not JSON: {exc}"))
        except jsonschema.SchemaError as exc:
            problems.append((f"{field}.json_schema", f"is not a valid JSON Schema: {exc.message}"))
    if msg.reference_match not in ("", "exact", "normalized", "contains"):
        problems.append(
            (
                f"{field}.reference_match",
                f"must be exact, normalized or contains, not {msg.reference_match!r}",
            )
        )
    if msg.duplicates not in ("", "keep", "exact", "near"):
        problems.append((f"{field}.duplicates", f"must be keep, exact or near, not {msg.duplicates!r}"))
    if msg.reference_column and first_prompt is not None and msg.reference_column not in first_prompt:
        problems.append((f"{field}.reference_column", f"{msg.reference_column!r} is not a field of the prompts "
                                                      f"(they have {', '.join(sorted(first_prompt))})"))  # fmt: skip
    return FiltersConfig(
        keep_empty=msg.keep_empty, drop_truncated=msg.drop_truncated, refusal_patterns=patterns,
        keep_refusals=msg.keep_refusals, min_chars=max(msg.min_chars, 0), max_chars=max(msg.max_chars, 0),
        json_schema=schema if isinstance(schema, dict) else None, reference_column=msg.reference_column,
        reference_match=msg.reference_match if msg.reference_match in ("exact", "contains") else "normalized",
        duplicates=msg.duplicates if msg.duplicates in ("exact", "near") else "keep",
    )  # fmt: skip


def from_proto(spec: synthesis_pb2.SynthesisSpec) -> SynthesisConfig:
    """Validate a SynthesisSpec completely; raise one InvalidSpec listing every problem."""
    problems: Problems = []
    first_prompt: dict[str, Any] | None = None
    prompts_uri = check_local_uri(spec.prompts_uri, "spec.prompts_uri", problems, want="file")
    if not problems and prompts_uri.startswith("file://"):
        # A local file is cheap to check now: bad rows and columns are reported before any work.
        from slmops.synthesis.inputs import read_inputs

        try:
            first_prompt = read_inputs(prompts_uri, spec.prompt_template, "spec.prompts_uri")[0].fields
        except InvalidSpec as exc:
            problems.extend(exc.problems)
        except IndexError:
            pass

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
        problems.append(("spec.num_shards", f"must be in 1..1024 (0 means 2), got {spec.num_shards}"))
    if spec.system_prompt and not (teacher is not None and getattr(teacher, "chat", False)):
        problems.append(
            (
                "spec.system_prompt",
                "is only used by chat teachers: set spec.teacher.endpoint.chat (or local.chat) or leave it empty",
            )
        )
    if not 0 <= spec.samples_per_prompt <= 16:
        problems.append(
            ("spec.samples_per_prompt", f"must be in 1..16 (0 means 1), got {spec.samples_per_prompt}")
        )
    elif spec.samples_per_prompt > 1 and sampling.temperature == 0:
        problems.append(("spec.samples_per_prompt", "more than one answer per prompt needs sampling: "
                                                    "set spec.sampling.temperature above 0"))  # fmt: skip
    if spec.label_column and first_prompt is not None and spec.label_column not in first_prompt:
        problems.append(("spec.label_column", f"{spec.label_column!r} is not a field of the prompts "
                                              f"(they have {', '.join(sorted(first_prompt))})"))  # fmt: skip
    endpoint = teacher if isinstance(teacher, EndpointTeacherConfig) else None
    if endpoint and endpoint.tokenizer and not sampling.top_logprobs:
        problems.append(
            (
                "spec.teacher.endpoint.tokenizer",
                "maps top-k log-probabilities to token ids: set spec.sampling.top_logprobs or leave it empty",
            )
        )
    output_uri = ""
    if spec.output_uri:
        try:
            output_uri = artifacts.confine(spec.output_uri, settings.allowed_roots(), "spec.output_uri")
        except InvalidSpec as exc:
            problems.extend(exc.problems)

    res = spec.resources
    if res.num_workers < 0:
        problems.append(("spec.resources.num_workers", "must not be negative"))
    if res.cpus_per_worker < 0:
        problems.append(("spec.resources.cpus_per_worker", "must not be negative"))
    if res.gpus_per_worker < 0:
        problems.append(("spec.resources.gpus_per_worker", "must not be negative"))
    if res.gpus_per_worker > 0 and isinstance(teacher, LocalTeacherConfig) and teacher.device == "cpu":
        problems.append(
            ("spec.resources.gpus_per_worker", "asks for GPUs but spec.teacher.local.device is cpu")
        )
    memory = parse_memory(res.memory, "spec.resources.memory", problems)
    filters = _filters(spec.filters, first_prompt, problems)
    if not 0 <= spec.max_reject_fraction <= 1:
        problems.append(("spec.max_reject_fraction", f"must be in [0, 1] (0 means 0.5), got "
                                                     f"{spec.max_reject_fraction}"))  # fmt: skip

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
        max_reject_fraction=spec.max_reject_fraction or 0.5,
        filters=filters,
        prompt_template=spec.prompt_template,
        samples_per_prompt=spec.samples_per_prompt or 1,
        label_column=spec.label_column,
        resources=ResourcesConfig(
            num_workers=res.num_workers or 1,
            cpus_per_worker=res.cpus_per_worker,
            gpus_per_worker=res.gpus_per_worker,
            memory_bytes=memory,
        ),
        labels=dict(spec.labels),
    )
