"""`slmops pipeline run|validate|schema|get`: pipeline files, their live stage view and their report.

Relative paths of input stages (prompts, dataset, model) are taken from the
pipeline file's folder. A local input outside the folders the services may
read is copied first into `<data dir>/inputs/<content hash>/`, so that the
same content always has the same URI and a rerun can reuse every stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from slmops.api.v1 import common_pb2, pipeline_pb2
from slmops.cli import client
from slmops.core import artifacts, settings

INPUT_KINDS = ("prompts", "dataset", "model")
GATE_FAILED = 3


def _within(path: Path, roots: list[str]) -> bool:
    return any(path == Path(r).resolve() or Path(r).resolve() in path.parents for r in roots)


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def import_inputs(text: str, base_dir: Path, say: Any = None) -> str:
    """The pipeline file with its input stages' local paths made absolute, and copied under the
    data dir when the services could not read them where they are."""
    data = yaml.safe_load(text)
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        return text  # the service names what is wrong
    roots = settings.allowed_roots()
    changed = False
    for name, stage in stages.items():
        if (
            not isinstance(stage, dict)
            or stage.get("kind") not in INPUT_KINDS
            or not isinstance(stage.get("uri"), str)
        ):
            continue
        uri = stage["uri"]
        if "://" in uri:
            continue
        path = (base_dir / uri).resolve() if not Path(uri).is_absolute() else Path(uri)
        if not path.exists():
            if stage["kind"] == "model" and not uri.startswith((".", "/")):
                continue  # a hub id
            raise SystemExit(f"error: stages.{name}.uri: {uri!r} does not exist (looked for {path})")
        if not _within(path, roots):
            target = settings.data_dir() / "inputs" / _content_hash(path) / path.name
            if not target.exists():
                tmp = target.with_name(f".{target.name}.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(path, tmp) if path.is_dir() else shutil.copy2(path, tmp)
                tmp.rename(target)
            if say:
                say(f"input {name}: {uri} -> {target}")
            path = target
        stage["uri"] = artifacts.to_uri(str(path))
        changed = True
    return yaml.safe_dump(data, sort_keys=False) if changed else text


def pipeline_spec(file: str, say: Any = None) -> pipeline_pb2.PipelineSpec:
    path = Path(file)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {file}: {exc}") from None
    base_dir = path.resolve().parent
    text = import_inputs(text, base_dir, say)
    return pipeline_pb2.PipelineSpec(
        name=path.stem, definition_yaml=text, parameters={"base_dir": str(base_dir)}
    )


# -- the live view -----------------------------------------------------------------------

_MARK = {common_pb2.SUCCEEDED: "done", common_pb2.FAILED: "FAILED", common_pb2.RUNNING: "running",
         common_pb2.CANCELLED: "cancelled"}  # fmt: skip


def stage_rows(run: pipeline_pb2.PipelineRun, pending: list[tuple[str, str]]) -> list[str]:
    """One line per stage: state (reused or done), seconds, and what it did or is doing."""
    seen = {s.name for s in run.stages}
    lines = []
    for s in run.stages:
        state = "reused" if s.reused else _MARK.get(s.state, "?")
        took = f"{s.seconds:6.1f}s" if s.state != common_pb2.RUNNING else "       "
        text = (s.reason or s.message).replace("\n", " ")
        lines.append(f"  {s.name:<18} {s.kind:<10} {state:<9} {took}  {text[:110]}")
    for name, kind in pending:
        if name not in seen:
            lines.append(f"  {name:<18} {kind:<10} {'waiting':<9}")
    return lines


def stages_of(text: str) -> list[tuple[str, str]]:
    try:
        stages = yaml.safe_load(text).get("stages", {})
        return [(str(n), str(s.get("kind", "?"))) for n, s in stages.items()]
    except (AttributeError, yaml.YAMLError):
        return []


def follow(run_id: str, pending: list[tuple[str, str]], out: Any = None) -> pipeline_pb2.PipelineRun:
    """Poll the run until it ends, redrawing the stage table in place on a terminal (line changes
    otherwise). out: sys.stderr as it is at the call."""
    out = out if out is not None else sys.stderr
    stub = client.stub("pipeline")
    live = out.isatty()
    drawn = 0
    last: dict[str, str] = {}
    while True:
        run = client.call(stub.GetPipelineRun, common_pb2.GetJobRequest(id=run_id))
        rows = stage_rows(run, pending)
        if live:
            if drawn:
                out.write(f"\x1b[{drawn}F\x1b[J")
            out.write("\n".join(rows) + "\n")
            out.flush()
            drawn = len(rows)
        else:
            for s in run.stages:
                line = f"{_MARK.get(s.state, '?')}|{s.message}|{s.reason}"
                if last.get(s.name) != line:
                    last[s.name] = line
                    text = s.reason or s.message
                    if s.state == common_pb2.RUNNING:
                        text = f"running: {text}" if text else "running"
                    print(f"  {s.name}: {text}", file=out, flush=True)
        if run.status.state in (common_pb2.SUCCEEDED, common_pb2.FAILED, common_pb2.CANCELLED):
            return run
        time.sleep(1.0)


def report_tables(report_uri: str) -> str:
    """The report's tables (report.md up to its sections), for the terminal."""
    if not report_uri.startswith("file://"):
        return ""
    path = artifacts.local_path(report_uri) / "report.md"
    try:
        text = path.read_text()
    except OSError:
        return ""
    lines = []
    for line in text.splitlines()[2:]:
        if line.startswith("## Against"):
            break
        lines.append(line)
    return "\n".join(lines).strip()


def summary(run: pipeline_pb2.PipelineRun) -> str:
    state = common_pb2.JobState.Name(run.status.state)
    reused = sum(1 for s in run.stages if s.reused)
    took = sum(s.seconds for s in run.stages)
    lines = [
        f"{run.id}: {state}" + (f" - {run.status.reason}" if run.status.reason else ""),
        f"stages: {len(run.stages)}, reused {reused}, ran {len(run.stages) - reused} ({took:.0f} s in stages)",
    ]
    tables = report_tables(run.report_uri)
    if tables:
        lines += ["", tables, ""]
    if run.report_uri:
        html = (
            artifacts.local_path(run.report_uri) / "report.html"
            if run.report_uri.startswith("file://")
            else None
        )
        lines.append(f"report: {html or run.report_uri + '/report.html'}")
    if run.lineage:
        lines.append("lineage of the served revision:")
        lines += [f"{'  ' * (i + 1)}- {ref.kind}: {ref.uri}" for i, ref in enumerate(run.lineage)]
    return "\n".join(lines)


def exit_code(run: pipeline_pb2.PipelineRun) -> int:
    if run.status.state == common_pb2.SUCCEEDED:
        return 0
    gates = [s for s in run.stages if s.kind == "gate" and s.detail.get("passed") == "false"]
    return GATE_FAILED if gates else 1


# -- commands ------------------------------------------------------------------------------


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    spec = pipeline_spec(args.file, _say)
    stub = client.stub("pipeline")
    run = client.call(stub.CreatePipelineRun, pipeline_pb2.CreatePipelineRunRequest(spec=spec), timeout=120.0)
    _say(f"created {run.id} (stages checked by their services)")
    if args.no_wait:
        print(run.id)
        return 0
    run = follow(run.id, stages_of(spec.definition_yaml))
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(run, preserving_proto_field_name=True))
    else:
        print(summary(run))
    return exit_code(run)


def cmd_validate(args: argparse.Namespace) -> int:
    spec = pipeline_spec(args.file)
    request = pipeline_pb2.CreatePipelineRunRequest(spec=spec, validate_only=True)
    client.call(client.stub("pipeline").CreatePipelineRun, request, timeout=120.0)
    print(f"{args.file}: valid ({len(stages_of(spec.definition_yaml))} stages, each checked by its service)")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    run = client.call(client.stub("pipeline").GetPipelineRun, common_pb2.GetJobRequest(id=args.run_id))
    print("\n".join(stage_rows(run, [])))
    print(summary(run))
    return exit_code(run)


def cmd_schema(args: argparse.Namespace) -> int:
    from slmops.pipeline.definition import schema

    print(json.dumps(schema(), indent=2))
    return 0


def add_pipeline_command(sub: Any) -> None:
    p = sub.add_parser("pipeline", help="run a pipeline file: teacher to endpoint in one command")
    psub = p.add_subparsers(dest="pipeline_command", required=True)
    run = psub.add_parser("run", help="check every stage, then run them; unchanged stages are reused")
    run.add_argument("file")
    run.add_argument("--no-wait", action="store_true", help="print the run id and return")
    run.add_argument("--json", action="store_true", help="print the finished run as JSON")
    run.set_defaults(func=cmd_run)
    validate = psub.add_parser("validate", help="check the file and every stage's spec; run nothing")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_validate)
    get = psub.add_parser("get", help="a run's stages and report")
    get.add_argument("run_id")
    get.set_defaults(func=cmd_get)
    schema_cmd = psub.add_parser("schema", help="print the pipeline file's JSON schema")
    schema_cmd.set_defaults(func=cmd_schema)
