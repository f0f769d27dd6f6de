"""Every spec path README.md and docs/*.md name is a field of the message it belongs to.

A path counts when it is inline code made of snake_case segments and is one of:
`spec.a.b` (a stage spec's field path), `a.b` whose first segment is a top-level field
(or oneof) of a stage spec (`endpoint.tokenizer`), `Message.a.b` for a message of
slmops.v1 (`DeploymentSpec.resources`), `slmops.v1.Name` (a message or a service), or a
single field written right after the word "spec" (spec `filters`). A path resolves
against the spec of the README section it stands in (SynthesisSpec under "Synthesis"),
or, outside those sections, against any stage spec. Paths of other objects (Helm values,
Kubernetes resources, file names) are camelCase, are not under a stage spec's fields, or
are listed in NOT_SPEC_PATHS with the reason.
"""

from __future__ import annotations

import re

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import Default

from slmops.api.v1 import (
    conversion_pb2,
    evaluation_pb2,
    pipeline_pb2,
    serving_pb2,
    synthesis_pb2,
    training_pb2,
)
from tests.unit.test_docs_commands import DOCS, ROOT, doc_lines, inline_spans

STAGE_SPECS = {
    m.DESCRIPTOR.name: m.DESCRIPTOR
    for m in (
        synthesis_pb2.SynthesisSpec,
        training_pb2.TrainingSpec,
        conversion_pb2.ConversionSpec,
        serving_pb2.DeploymentSpec,
        evaluation_pb2.EvaluationSpec,
        pipeline_pb2.PipelineSpec,
    )
}
# The spec a README section's paths belong to.
SECTION_SPECS = {
    ("README.md", "Synthesis"): "SynthesisSpec",
    ("README.md", "Training methods"): "TrainingSpec",
    ("README.md", "Conversion"): "ConversionSpec",
    ("README.md", "The predictor"): "DeploymentSpec",
    ("README.md", "Evaluation"): "EvaluationSpec",
}
# Spans that look like spec paths and are not, with the reason.
NOT_SPEC_PATHS = {
    "targets[].deploy": "a pipeline file's evaluate stage field (pipeline/definition.py EvalTargetRef)",
    "grpc.health.v1.Health": "gRPC's own health service, not a slmops.v1 name",
}
FILE_SUFFIXES = {"py", "json", "jsonl", "yaml", "yml", "md", "txt", "html", "jinja", "parquet", "csv", "log"}
_SEGMENT = r"[a-z_][a-z0-9_]*(?:\[[^\]]*\])?"
_SNAKE_PATH = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT})+$")
_MESSAGE_PATH = re.compile(rf"^([A-Z][A-Za-z0-9]*)((?:\.{_SEGMENT})+)$")
_FULL_NAME = re.compile(r"^slmops\.v1\.[A-Z][A-Za-z0-9]*$")


def _top_level_names() -> set[str]:
    names = set()
    for descriptor in STAGE_SPECS.values():
        names |= set(descriptor.fields_by_name) | set(descriptor.oneofs_by_name)
    return names


def resolve(descriptor: Descriptor, path: str) -> str:
    """'' when path (dotted, `[...]` for an element or a map key) names a field of descriptor,
    else why not."""
    current: Descriptor | None = descriptor
    for segment in path.split("."):
        name = segment.split("[", 1)[0]
        if current is None:
            return f"{name!r}: the field before it is not a message"
        field = current.fields_by_name.get(name)
        if field is None:
            if name in current.oneofs_by_name:
                members = ", ".join(f.name for f in current.oneofs_by_name[name].fields)
                return f"{name!r} is a oneof of {current.name}, not a field: name its member ({members})"
            return f"{current.name} has no field {name!r} (fields: {', '.join(current.fields_by_name)})"
        current = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
        if current is not None and current.GetOptions().map_entry:
            value = current.fields_by_name["value"]
            current = value.message_type if value.type == FieldDescriptor.TYPE_MESSAGE else None
    return ""


def spec_paths() -> list[tuple[str, int, str, str]]:
    """(file, line, path, README section) of every spec path the docs name."""
    top = _top_level_names()
    found = []
    for doc in DOCS:
        name = doc.relative_to(ROOT).as_posix()
        text = doc.read_text()
        for number, code, section in inline_spans(doc):
            path = code.split("=", 1)[0]
            if path in NOT_SPEC_PATHS or path.rsplit(".", 1)[-1] in FILE_SUFFIXES:
                continue
            snake = _SNAKE_PATH.match(path)
            if (
                (snake and (path.startswith("spec.") or path.split(".")[0].split("[")[0] in top))
                or _MESSAGE_PATH.match(path)
                or _FULL_NAME.match(path)
            ):
                found.append((name, number, path, section))
        headings = [(n, line.lstrip("#").strip()) for n, line, fenced in doc_lines(doc)
                    if not fenced and line.startswith("#")]  # fmt: skip
        for match in re.finditer(r"\bspec `([a-z_][a-z0-9_.]*)`", text):
            number = text.count("\n", 0, match.start()) + 1
            section = ([s for n, s in headings if n < number] or [""])[-1]
            found.append((name, number, f"spec.{match.group(1)}", section))
    return found


def problem(file: str, path: str, section: str) -> str:
    """'' when the path resolves where it stands, else why not."""
    if _FULL_NAME.match(path):
        pool = Default()
        for find in (pool.FindMessageTypeByName, pool.FindServiceByName):
            try:
                find(path)
                return ""
            except KeyError:
                pass
        return f"no message or service {path}"
    if message := _MESSAGE_PATH.match(path):
        try:
            descriptor = Default().FindMessageTypeByName(f"slmops.v1.{message.group(1)}")
        except KeyError:
            return f"no message slmops.v1.{message.group(1)}"
        return resolve(descriptor, message.group(2)[1:])
    path = path.removeprefix("spec.")
    owner = SECTION_SPECS.get((file, section))
    if owner:
        return resolve(STAGE_SPECS[owner], path)
    why = [resolve(d, path) for d in STAGE_SPECS.values()]
    return "" if "" in why else f"no stage spec has it ({'; '.join(why)})"


def test_every_documented_spec_path_is_a_field():
    found = spec_paths()
    paths = {path for _, _, path, _ in found}
    # The extraction finds the kinds of path the docs use.
    assert {"DeploymentSpec.resources", "spec.gate", "slmops.v1.SynthesisService"} <= paths, paths
    assert "spec.filters" in paths  # "(spec `filters`)" in the README's synthesis section
    problems = [
        f"{file}:{line}: `{path}` ({section}): {why}"
        for file, line, path, section in found
        if (why := problem(file, path, section))
    ]
    assert not problems, "spec paths the docs name that the protos do not have:\n" + "\n".join(problems)


def test_a_wrong_path_is_caught():
    """The check itself: the oneof name is not a field, a misspelt field is named, a right one passes."""
    synthesis = STAGE_SPECS["SynthesisSpec"]
    assert "oneof" in resolve(synthesis, "teacher.endpoint.tokenizer")
    assert "endpoint, local" in resolve(synthesis, "teacher.endpoint.tokenizer")
    assert resolve(synthesis, "endpoint.tokenizer") == ""
    assert "no field 'tokeniser'" in resolve(synthesis, "endpoint.tokeniser")
    assert resolve(STAGE_SPECS["EvaluationSpec"], 'gate.min_retention_by_metric["rouge_l"]') == ""
    assert resolve(STAGE_SPECS["EvaluationSpec"], "targets[0].chat") == ""
    assert problem("README.md", "spec.endpoint.tokenizer", "Evaluation")  # the section's spec decides
    assert problem("README.md", "DeploymentSpec.limits.max_queue", "") == ""
    assert problem("README.md", "slmops.v1.NoSuchService", "")
