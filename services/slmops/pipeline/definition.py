"""A pipeline file: named stages, each of a kind, wired to earlier stages by name.

```yaml
name: distill
stages:
  prompts:  {kind: prompts, uri: prompts.jsonl}
  answers:  {kind: synthesize, prompts: prompts, spec: {endpoint: {base_url: ..., model: ...}}}
  student:  {kind: train, dataset: answers, spec: {method: SFT_DISTILL, base: {model: Qwen/Qwen2.5-0.5B}}}
  int4:     {kind: convert, model: student, spec: {precision: INT4}}
  serve:    {kind: deploy, model: int4, spec: {name: student}}
```

A stage's `spec` is its service's protobuf spec in JSON form; the fields its
references fill (a dataset_uri, a model_uri, ...) are left out. The file is
checked in two passes before any stage runs: here, its shape (pydantic: an
unknown key, a wrong type, a reference to a missing or later stage, each named
by its path in the file); then in the pipeline service, every stage's spec by
its own service (`validate_only`). `schema()` is the file's JSON schema
(published as docs/pipeline.schema.json).

The text is at most MAX_DEFINITION_BYTES and plain YAML: anchors and aliases
(`&x`, `*x`, merge keys) are refused, so a small file cannot expand into a
huge value, and a value quoted in a problem is cut short.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from slmops.api.v1 import conversion_pb2, evaluation_pb2, serving_pb2, synthesis_pb2, training_pb2
from slmops.core.errors import InvalidSpec, collect
from slmops.core.spec_checks import problems_from

FIELD = "spec.definition_yaml"
MAX_DEFINITION_BYTES = 1 << 20  # 1 MiB: far more than any real pipeline file
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_QUOTED = 200  # characters of a value quoted in a problem
MAX_STAGES = 500
MAX_PROBLEMS = 100  # problems reported at once; the rest are counted
_STAGE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptsStage(_Stage):
    """A prompts file (JSONL, Parquet or CSV): synthesis asks the teacher these."""

    kind: Literal["prompts"]
    uri: str = Field(description="file path (relative to the pipeline file) or URI")


class DatasetStage(_Stage):
    """An existing dataset: a folder with train/validation splits, or a JSONL file of prompt/answer."""

    kind: Literal["dataset"]
    uri: str


class ModelStage(_Stage):
    """An existing model: a Hugging Face folder, an artifact URI, or a hub id."""

    kind: Literal["model"]
    uri: str


class SynthesizeStage(_Stage):
    """The teacher answers the prompts; the answers become a dataset."""

    kind: Literal["synthesize"]
    prompts: str = Field("", description="a prompts stage; else spec.prompts_uri")
    teacher: str = Field(
        "", description="a deploy stage serving the teacher; else spec.endpoint or spec.local"
    )
    spec: dict[str, Any] = Field(default_factory=dict, description="SynthesisSpec")


class TrainStage(_Stage):
    """Training, any recipe (a search included): its output is a checkpoint or an adapter."""

    kind: Literal["train"]
    dataset: str = Field("", description="a synthesize or dataset stage; else spec.dataset_uri")
    base: str = Field("", description="a model or train stage: the base model; else spec.base.model")
    spec: dict[str, Any] = Field(default_factory=dict, description="TrainingSpec")


class ConvertStage(_Stage):
    """Export to ONNX Runtime GenAI and quantize, LoRA adapters included."""

    kind: Literal["convert"]
    model: str = Field("", description="a train or model stage; else spec.model_uri")
    adapters: list[str] = Field(default_factory=list, description="train stages whose output is an adapter")
    spec: dict[str, Any] = Field(default_factory=dict, description="ConversionSpec")


class DeployStage(_Stage):
    """Serve a model: a new deployment (or a new revision taking all traffic when it exists), or with
    `canary_of` a canary revision of an earlier deploy stage's deployment."""

    kind: Literal["deploy"]
    model: str = Field("", description="a convert, train or model stage; else spec.model_uri")
    canary_of: str = Field(
        "", description="a deploy stage: this stage adds a canary revision to its deployment"
    )
    canary_percent: int = Field(20, ge=1, le=99, description="the canary's share of traffic")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="served model name -> a train stage's adapter or a URI"
    )
    spec: dict[str, Any] = Field(
        default_factory=dict, description="DeploymentSpec (name required unless canary_of)"
    )


class EvalTargetRef(_Stage):
    name: str
    deploy: str = Field("", description="a deploy stage: the revision it rolled out")
    base_url: str = Field("", description="else any OpenAI-compatible endpoint")
    model: str = ""
    model_uri: str = ""
    api_key_env: str = ""
    chat: bool = False


class EvaluateStage(_Stage):
    """Measure quality and speed of several targets on the same held-out prompts."""

    kind: Literal["evaluate"]
    dataset: str = Field("", description="a dataset, prompts or synthesize stage; else spec.dataset_uri")
    targets: list[EvalTargetRef] = Field(default_factory=list)
    spec: dict[str, Any] = Field(default_factory=dict, description="EvaluationSpec, targets left out")


class GateStage(_Stage):
    """The evaluation's gate verdict (thresholds are the evaluate stage's spec.gate)."""

    kind: Literal["gate"]
    evaluation: str


class RolloutStage(_Stage):
    """Promote the canary when the gate passed, roll it back when it failed."""

    kind: Literal["rollout"]
    canary: str = Field(description="a deploy stage with canary_of")
    gate: str


Stage = Annotated[
    PromptsStage
    | DatasetStage
    | ModelStage
    | SynthesizeStage
    | TrainStage
    | ConvertStage
    | DeployStage
    | EvaluateStage
    | GateStage
    | RolloutStage,
    Field(discriminator="kind"),
]
STAGE_MODELS: dict[str, type[_Stage]] = {
    "prompts": PromptsStage,
    "dataset": DatasetStage,
    "model": ModelStage,
    "synthesize": SynthesizeStage,
    "train": TrainStage,
    "convert": ConvertStage,
    "deploy": DeployStage,
    "evaluate": EvaluateStage,
    "gate": GateStage,
    "rollout": RolloutStage,
}
KINDS = tuple(STAGE_MODELS)


class PipelineFile(BaseModel):
    model_config = ConfigDict(extra="forbid", title="slmops pipeline")

    name: str = Field("pipeline", description="the run's name")
    stages: dict[str, Stage] = Field(description="stage name -> stage, in the order they run")


SPECS: dict[str, type[Message]] = {
    "synthesize": synthesis_pb2.SynthesisSpec,
    "train": training_pb2.TrainingSpec,
    "convert": conversion_pb2.ConversionSpec,
    "deploy": serving_pb2.DeploymentSpec,
    "evaluate": evaluation_pb2.EvaluationSpec,
}
# The kinds each reference may name: field -> kinds.
REFS: dict[str, dict[str, tuple[str, ...]]] = {
    "synthesize": {"prompts": ("prompts", "dataset"), "teacher": ("deploy",)},
    "train": {"dataset": ("synthesize", "dataset"), "base": ("model", "train")},
    "convert": {"model": ("train", "model"), "adapters": ("train",)},
    "deploy": {
        "model": ("convert", "train", "model"),
        "canary_of": ("deploy",),
        "adapters": ("train", "convert"),
    },
    "evaluate": {"dataset": ("dataset", "prompts", "synthesize")},
    "gate": {"evaluation": ("evaluate",)},
    "rollout": {"canary": ("deploy",), "gate": ("gate",)},
}
# A spec field a reference fills, so it is left out of the file: (kind, reference) -> proto path.
FILLS: dict[tuple[str, str], str] = {
    ("synthesize", "prompts"): "spec.prompts_uri",
    ("synthesize", "teacher"): "spec.endpoint",
    ("train", "dataset"): "spec.dataset_uri",
    ("train", "base"): "spec.base.model",
    ("convert", "model"): "spec.model_uri",
    ("convert", "adapters"): "spec.adapter_uris",
    ("deploy", "model"): "spec.model_uri",
    ("deploy", "adapters"): "spec.adapters",
    ("evaluate", "dataset"): "spec.dataset_uri",
}


class Definition:
    """A checked pipeline file: its stages in order, each with its parsed protobuf spec."""

    def __init__(self, file: PipelineFile, specs: dict[str, Message]):
        self.name = file.name
        self.stages = file.stages
        self.specs = specs

    def order(self) -> list[str]:
        return list(self.stages)

    def refs(self, name: str) -> dict[str, list[str]]:
        """The stages a stage names, by field."""
        stage = self.stages[name]
        out: dict[str, list[str]] = {}
        for field in REFS.get(stage.kind, {}):
            value = getattr(stage, field)
            names = (
                list(value.values())
                if isinstance(value, dict)
                else value
                if isinstance(value, list)
                else [value]
            )
            out[field] = [n for n in names if n and n in self.stages]
        if stage.kind == "evaluate":
            out["targets"] = [t.deploy for t in stage.targets if t.deploy]
        return out

    def pending_fields(self, name: str) -> list[str]:
        """Spec fields this stage's references fill when it runs (validate_only leaves them)."""
        stage = self.stages[name]
        pending = [
            path for (kind, field), path in FILLS.items() if kind == stage.kind and getattr(stage, field)
        ]
        if stage.kind == "synthesize" and stage.teacher:
            pending += ["spec.teacher", "spec.endpoint"]  # the teacher's deployment fills the endpoint
        if stage.kind == "deploy" and stage.canary_of:
            pending.append("spec.name")
        if stage.kind == "evaluate":
            pending += [f"spec.targets[{i}]" for i, t in enumerate(stage.targets) if t.deploy]
        return pending


def _check_refs(file: PipelineFile, names: list[str], problems: list[tuple[str, str]]) -> None:
    """References name earlier stages of the right kinds (names: every stage, checked or not)."""
    positions = {n: i for i, n in enumerate(names)}
    listed = quoted(", ".join(names))
    for name, stage in file.stages.items():
        where = f"stages.{shown(name)}"
        if not _STAGE_NAME.match(name):
            problems.append((where, "a stage name is lowercase letters, digits and '-' (at most 63)"))
        fields: list[tuple[str, str, tuple[str, ...]]] = []
        for field, kinds in REFS.get(stage.kind, {}).items():
            value = getattr(stage, field)
            if isinstance(value, dict):
                fields += [(f"{field}.{key}", v, kinds) for key, v in value.items()]
            elif isinstance(value, list):
                fields += [(f"{field}[{i}]", v, kinds) for i, v in enumerate(value)]
            elif value:
                fields.append((field, value, kinds))
        if stage.kind == "evaluate":
            fields += [(f"targets[{i}].deploy", t.deploy, ("deploy",)) for i, t in enumerate(stage.targets)
                       if t.deploy]  # fmt: skip
        for field, ref, kinds in fields:
            if stage.kind == "deploy" and field.startswith("adapters.") and ":" in ref:
                continue  # an adapter URI, not a stage
            if ref in positions and ref not in file.stages:
                continue  # that stage has problems of its own
            if ref not in positions:
                problems.append((f"{where}.{field}", f"names no stage ({quoted(ref)}); stages: {listed}"))
            elif positions[ref] >= positions[name]:
                problems.append(
                    (f"{where}.{field}", f"{quoted(ref)} must come before {quoted(name)} in the file")
                )
            elif file.stages[ref].kind not in kinds:
                problems.append((f"{where}.{field}", f"{quoted(ref)} is a {file.stages[ref].kind} stage; want "
                                                     f"{' or '.join(kinds)}"))  # fmt: skip
        if stage.kind == "rollout" and stage.canary in file.stages:
            canary = file.stages[stage.canary]
            if canary.kind == "deploy" and not canary.canary_of:
                problems.append(
                    (f"{where}.canary", f"{quoted(stage.canary)} deploys no canary (set its canary_of)")
                )
        if stage.kind == "evaluate":
            for i, target in enumerate(stage.targets):
                if bool(target.deploy) == bool(target.base_url):
                    problems.append(
                        (f"{where}.targets[{i}]", "set one of deploy (a deploy stage) or base_url")
                    )


def _check_inputs(file: PipelineFile, specs: dict[str, Message], problems: list[tuple[str, str]]) -> None:
    """A stage without a reference needs the spec field that reference would fill."""
    needs = {("synthesize", "prompts"), ("train", "dataset"), ("convert", "model"), ("deploy", "model"),
             ("evaluate", "dataset")}  # fmt: skip
    for name, stage in file.stages.items():
        for kind, field in needs:
            if stage.kind != kind or getattr(stage, field) or name not in specs:
                continue
            path = FILLS[(kind, field)].removeprefix("spec.")
            spec = specs[name]
            if kind == "train" and (spec.adapters or spec.dataset_uri):
                continue
            if not getattr(spec, path.split(".")[0]):
                problems.append((f"stages.{name}.{field}", f"name a stage, or set spec.{path}"))
        if stage.kind == "deploy" and not stage.canary_of and not stage.spec.get("name"):
            problems.append((f"stages.{name}.spec.name", "is required (the deployment's name)"))
        if stage.kind == "synthesize" and not stage.teacher and name in specs:
            if not specs[name].HasField("endpoint") and not specs[name].HasField("local"):
                problems.append(
                    (f"stages.{name}.teacher", "name a deploy stage, or set spec.endpoint or spec.local")
                )


_STAGE = TypeAdapter(Stage)


def _stage(body: Any) -> _Stage:
    """One stage checked by the model of its kind (so a problem's path is the stage's own field),
    or by the union when the kind is missing or unknown."""
    kind = body.get("kind") if isinstance(body, dict) else None
    if isinstance(kind, str) and kind in STAGE_MODELS:
        return STAGE_MODELS[kind].model_validate(body)
    return _STAGE.validate_python(body)


def load(data: Any) -> Definition:
    """Check a parsed pipeline file; one InvalidSpec naming every problem by its path.

    Each stage is checked on its own, so that one stage's wrong type does not hide another's
    missing reference, nor a wrong top-level key the stages' problems."""
    problems: list[tuple[str, str]] = []
    raw_stages = data.get("stages") if isinstance(data, dict) else None
    if isinstance(raw_stages, dict) and len(raw_stages) > MAX_STAGES:
        raise InvalidSpec(
            f"{FIELD}.stages", f"has {len(raw_stages)} stages; at most {MAX_STAGES} are accepted"
        )
    shell = None
    try:
        shell = PipelineFile.model_validate({**data, "stages": {}} if isinstance(raw_stages, dict) else data)
    except ValidationError as exc:
        problems.extend(problems_from(exc, FIELD))
        if not isinstance(raw_stages, dict):
            collect(problems)
    stages: dict[str, Any] = {}
    for name, body in (raw_stages or {}).items():
        try:
            stages[str(name)] = _stage(body)
        except ValidationError as exc:
            problems.extend(problems_from(exc, f"{FIELD}.stages.{shown(str(name))}"))
            stages[str(name)] = None  # known by name, so references to it are not reported missing
    if not stages:
        problems.append((f"{FIELD}.stages", "names no stage"))
    checked = {k: v for k, v in stages.items() if v is not None}
    file = PipelineFile.model_construct(stages=checked, **({"name": shell.name} if shell else {}))
    specs: dict[str, Message] = {}
    for name, stage in file.stages.items():
        if stage.kind in SPECS:
            try:
                specs[name] = json_format.ParseDict(stage.spec, SPECS[stage.kind]())
            except json_format.ParseError as exc:
                problems.append((f"stages.{name}.spec", cut(str(exc))))
    _check_refs(file, list(stages), problems)
    _check_inputs(file, specs, problems)
    collect(_bounded([(p if p.startswith(FIELD) else f"{FIELD}.{p}", m) for p, m in problems]))
    return Definition(file, specs)


def cut(text: str, limit: int = 500) -> str:
    """text, cut short when longer than limit characters."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def quoted(value: str) -> str:
    """A value from the file quoted in a problem, cut short."""
    return cut(repr(value), MAX_QUOTED)


def shown(name: str) -> str:
    """A stage name as a problem's path shows it (a long, and so invalid, name is cut short)."""
    return cut(name, 80)


def _bounded(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """At most MAX_PROBLEMS problems, each cut short: an error message stays small whatever the file."""
    kept = [(cut(p, 300), cut(m)) for p, m in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        kept.append((FIELD, f"and {len(problems) - MAX_PROBLEMS} more problems"))
    return kept


class _PlainLoader(yaml.SafeLoader):
    """A safe loader that refuses anchors and aliases (a few lines of aliases nest into a value of
    gigabytes) and nesting deeper than MAX_DEPTH."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise InvalidSpec(FIELD, f"line {event.start_mark.line + 1}: YAML anchors and aliases "
                                     "(&name, *name, <<) are not accepted; write each value out")  # fmt: skip
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise InvalidSpec(
                FIELD, f"line {event.start_mark.line + 1}: nests deeper than {MAX_DEPTH} levels"
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml(text: str) -> Any:
    """The data of a pipeline file's text: plain YAML of at most MAX_DEFINITION_BYTES."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DEFINITION_BYTES:
        raise InvalidSpec(
            FIELD, f"is {size} bytes; at most {MAX_DEFINITION_BYTES} bytes (1 MiB) are accepted"
        )
    loader = _PlainLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise InvalidSpec(FIELD, f"is not valid YAML: {cut(str(exc))}") from None
    finally:
        loader.dispose()


def parse(text: str) -> Definition:
    """Parse and check a pipeline file's text (CPU-bound on a large file: call it off the event loop)."""
    data = read_yaml(text)
    if not isinstance(data, dict):
        raise InvalidSpec(FIELD, "must be a mapping with name and stages")
    return load(data)


def schema() -> dict[str, Any]:
    """The pipeline file's JSON schema."""
    out = PipelineFile.model_json_schema()
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["$id"] = "https://slmops.dev/schemas/pipeline.schema.json"
    return out


if __name__ == "__main__":  # the schema `slmops pipeline schema` prints
    import json

    print(json.dumps(schema(), indent=2))
