"""`slmops pipeline run|validate|schema|get`: pipeline files, their live stage table and their report.

Relative paths of input stages (prompts, dataset, model) are taken from the
pipeline file's folder. A local input outside the folders the services may
read is copied first into `<data dir>/inputs/<content hash>/`, so that the
same content always has the same URI and a rerun can reuse every stage.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from rich.console import Console
from rich.live import Live
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from slmops.api.v1 import common_pb2, pipeline_pb2
from slmops.cli import client
from slmops.cli.common import cell, json_flag, print_json, render, say, show, table
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


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by several keys out each time: the service accepts no anchors or aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def import_inputs(text: str, base_dir: Path, say: Any = None) -> str:
    """The pipeline file with its input stages' local paths made absolute, and copied under the
    data dir when the services could not read them where they are; its anchors and aliases, if
    any, written out."""
    data = yaml.safe_load(text)
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        return text  # the service names what is wrong
    roots = settings.allowed_roots()
    changed = any(isinstance(event, yaml.NodeEvent) and event.anchor for event in yaml.parse(text))
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
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False) if changed else text


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


def stage_table(run: pipeline_pb2.PipelineRun, pending: list[tuple[str, str]]) -> Table:
    """One row per stage: state (reused or done), seconds, and what it did or is doing."""
    seen = {s.name for s in run.stages}
    out = table("stage", "kind", "state", "took", "what", right=("took",))
    for s in run.stages:
        state = "reused" if s.reused else _MARK.get(s.state, "?")
        took = f"{s.seconds:.1f}s" if s.state != common_pb2.RUNNING else ""
        out.add_row(s.name, s.kind, cell(state), took, Text((s.reason or s.message).replace("\n", " ")[:110]))
    for name, kind in pending:
        if name not in seen:
            out.add_row(name, kind, "waiting", "", "")
    return out


def stages_of(text: str) -> list[tuple[str, str]]:
    try:
        stages = yaml.safe_load(text).get("stages", {})
        return [(str(n), str(s.get("kind", "?"))) for n, s in stages.items()]
    except (AttributeError, yaml.YAMLError):
        return []


def _changes(run: pipeline_pb2.PipelineRun, last: dict[str, str]) -> list[str]:
    """A line for each stage whose state or message changed since `last` (which is updated)."""
    lines = []
    for s in run.stages:
        line = f"{_MARK.get(s.state, '?')}|{s.message}|{s.reason}"
        if last.get(s.name) != line:
            last[s.name] = line
            text = s.reason or s.message
            if s.state == common_pb2.RUNNING:
                text = f"running: {text}" if text else "running"
            lines.append(f"  {s.name}: {text}")
    return lines


def follow(run_id: str, pending: list[tuple[str, str]], out: Any = None) -> pipeline_pb2.PipelineRun:
    """Poll the run until it ends: on a terminal, its stage table redrawn in place; otherwise a line
    per change. out: sys.stderr as it is at the call."""
    out = out if out is not None else sys.stderr
    stub = client.stub("pipeline")
    last: dict[str, str] = {}
    live = Live(console=Console(file=out, highlight=False, markup=False, emoji=False), auto_refresh=False)
    if out.isatty():
        live.start()
    try:
        while True:
            run = client.call(stub.GetPipelineRun, common_pb2.GetJobRequest(id=run_id))
            if live.is_started:
                live.update(Padding(stage_table(run, pending), (0, 0, 0, 2)), refresh=True)
            else:
                for line in _changes(run, last):
                    print(line, file=out, flush=True)
            if run.status.state in (common_pb2.SUCCEEDED, common_pb2.FAILED, common_pb2.CANCELLED):
                return run
            time.sleep(1.0)
    finally:
        if live.is_started:
            live.stop()


def report_tables(report_uri: str) -> str:
    """The report's tables, as the markdown of report.md up to its sections (for another report)."""
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


def markdown_tables(markdown: str) -> list[Any]:
    """report_tables' markdown for the terminal: its tables as tables, its other lines as text."""
    items: list[Any] = []
    rows: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if rows:
            header, rule, body = rows[0], rows[1] if len(rows) > 1 else [], rows[2:]
            right = tuple(name for name, mark in zip(header, rule, strict=False) if mark.endswith(":"))
            drawn = table(*header, right=right)
            for row in body:
                drawn.add_row(*row)
            items.append(drawn)
            rows = []
        items.append(Text(line))
    return items[:-1]


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
        lines += ["", render(*markdown_tables(tables)), ""]
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


def cmd_run(args: argparse.Namespace) -> int:
    spec = pipeline_spec(args.file, say)
    stub = client.stub("pipeline")
    run = client.call(stub.CreatePipelineRun, pipeline_pb2.CreatePipelineRunRequest(spec=spec), timeout=120.0)
    say(f"created {run.id} (stages checked by their services)")
    if args.no_wait:
        print_json(run) if args.json else print(run.id)
        return 0
    run = follow(run.id, stages_of(spec.definition_yaml))
    if args.json:
        print(json_format.MessageToJson(run, preserving_proto_field_name=True))
    else:
        print(summary(run))
    return exit_code(run)


def cmd_validate(args: argparse.Namespace) -> int:
    spec = pipeline_spec(args.file)
    request = pipeline_pb2.CreatePipelineRunRequest(spec=spec, validate_only=True)
    client.call(client.stub("pipeline").CreatePipelineRun, request, timeout=120.0)
    stages = stages_of(spec.definition_yaml)
    if args.json:
        print_json({"file": args.file, "valid": True, "stages": [{"name": n, "kind": k} for n, k in stages]})
        return 0
    print(f"{args.file}: valid ({len(stages)} stages, each checked by its service)")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    run = client.call(client.stub("pipeline").GetPipelineRun, common_pb2.GetJobRequest(id=args.run_id))
    if args.json:
        print_json(run)
        return exit_code(run)
    show(stage_table(run, []), indent=2)
    print(summary(run))
    return exit_code(run)


def cmd_schema(args: argparse.Namespace) -> int:
    """The schema belongs to the pipeline service's definition module: the CLI runs that module, as
    `slmops serve` runs the predictor, and imports no service code."""
    done = subprocess.run(
        [sys.executable, "-m", "slmops.pipeline.definition"], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"error: the pipeline schema could not be made:\n{done.stderr.strip()}")
    print(done.stdout, end="")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("pipeline", help="run a pipeline file: teacher to endpoint in one command")
    psub = p.add_subparsers(dest="pipeline_command", required=True)
    run = psub.add_parser("run", help="check every stage, then run them; unchanged stages are reused")
    run.add_argument("file")
    run.add_argument("--no-wait", action="store_true", help="print the run id and return")
    run.add_argument("--json", action="store_true", help="print the finished run as JSON")
    run.set_defaults(func=cmd_run)
    validate = psub.add_parser("validate", help="check the file and every stage's spec; run nothing")
    validate.add_argument("file")
    json_flag(validate, "the verdict and the stages")
    validate.set_defaults(func=cmd_validate)
    get = psub.add_parser("get", help="a run's stages and report")
    get.add_argument("run_id")
    json_flag(get, "the run")
    get.set_defaults(func=cmd_get)
    schema_cmd = psub.add_parser("schema", help="print the pipeline file's JSON schema")
    json_flag(schema_cmd, "the schema (it is JSON either way)")
    schema_cmd.set_defaults(func=cmd_schema)
