"""A pipeline file: the stage specs of one run, each in its protobuf's JSON shape.

```yaml
name: distill
synthesis:  {prompts_uri: ..., endpoint: {base_url: ..., model: ...}}
training:   {method: SFT_DISTILL, base: {model: ..., from_config: true}}
conversion: {precision: INT4}
serving:    {name: student}
evaluation: {targets: [{name: teacher, deployment: teacher}], reference: teacher}
```

Any stage may be left out; each present stage takes the previous stage's output
where its own input is left empty (dataset -> training -> conversion -> serving),
and evaluation gets the served student as a target named after the deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from slmops.api.v1 import conversion_pb2, evaluation_pb2, serving_pb2, synthesis_pb2, training_pb2
from slmops.core.errors import InvalidSpec, collect

STAGES: dict[str, type[Message]] = {
    "synthesis": synthesis_pb2.SynthesisSpec,
    "training": training_pb2.TrainingSpec,
    "conversion": conversion_pb2.ConversionSpec,
    "serving": serving_pb2.DeploymentSpec,
    "evaluation": evaluation_pb2.EvaluationSpec,
}


@dataclass
class Definition:
    name: str
    stages: dict[str, Message] = field(default_factory=dict)

    def order(self) -> list[str]:
        return [name for name in STAGES if name in self.stages]


def parse(text: str, field_name: str = "spec.definition_yaml") -> Definition:
    """Parse and check a pipeline file; every problem is reported at once."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidSpec(field_name, f"is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidSpec(field_name, "must be a mapping of stage name to stage spec")
    problems: list[tuple[str, str]] = []
    unknown = sorted(set(data) - set(STAGES) - {"name"})
    if unknown:
        problems.append((field_name, f"unknown keys {unknown}; stages are {list(STAGES)}"))
    definition = Definition(name=str(data.get("name", "pipeline")))
    for stage, message_cls in STAGES.items():
        if stage not in data:
            continue
        body: Any = data[stage] or {}
        try:
            definition.stages[stage] = json_format.ParseDict(body, message_cls())
        except json_format.ParseError as exc:
            problems.append((f"{field_name}.{stage}", str(exc)))
    if not definition.stages and not problems:
        problems.append((field_name, "names no stage"))
    order = definition.order()
    for stage, needs, key in (
        ("training", "synthesis", "dataset_uri"),
        ("conversion", "training", "model_uri"),
        ("serving", "conversion", "model_uri"),
    ):
        if stage in definition.stages and needs not in definition.stages:
            if not getattr(definition.stages[stage], key):
                problems.append((f"{field_name}.{stage}.{key}", f"is required when there is no {needs} stage"))
    if "evaluation" in order and not definition.stages["evaluation"].dataset_uri and "synthesis" not in order:
        problems.append((f"{field_name}.evaluation.dataset_uri", "is required when there is no synthesis stage"))
    collect(problems)
    return definition
