"""The kit of every command module: URIs, the shared flags, tables, JSON, printing a job or a
deployment, the kinds of job, and running a job while following its progress.

Tables are drawn with rich: in colour and at the terminal's width on a terminal,
as plain text (no colour, no wrapping, no trailing blanks) otherwise, so that
pipes and tests read clean lines.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from slmops.api.v1 import common_pb2, serving_pb2
from slmops.cli import client
from slmops.cli.progress import watch_job
from slmops.core import predictor_key, settings
from slmops.core.artifacts import to_uri

PLAIN_WIDTH = 1000  # plain text is not wrapped: a line is as long as its row
STYLES = {"SUCCEEDED": "green", "READY": "green", "SERVING": "green", "done": "green", "reused": "cyan",
          "RUNNING": "yellow", "DEPLOYING": "yellow", "running": "yellow", "FAILED": "red", "DOWN": "red",
          "NOT_SERVING": "red", "CANCELLED": "magenta", "cancelled": "magenta"}  # fmt: skip


# -- values -------------------------------------------------------------------------------


def uri(value: str) -> str:
    """Local paths become file:// URIs; hub ids and URIs are left alone."""
    return to_uri(value) if Path(value).exists() else value


def overrides(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE flags (--override, --option) as a dict."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --override expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def enum_choices(enum: EnumTypeWrapper) -> list[str]:
    """A contract enum's values as flag choices: lower case, without the UNSPECIFIED zero."""
    return [name.lower() for name, number in enum.items() if number != 0]


def labels(pairs: list[str], flag: str = "--label") -> dict[str, str]:
    """KEY=VALUE label flags as a dict (a key without a value is refused)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {flag} expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def json_flag(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as one JSON document on stdout")


def job_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that creates a job."""
    parser.add_argument(
        "--output", default=None, help="artifact URI to write (default: under the artifact root)"
    )
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("--json", action="store_true", help="print the final job as JSON")


def to_json(value: Any) -> Any:
    """A protobuf message as a dict with the contract's field names; lists and dicts of them likewise."""
    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


def print_json(value: Any) -> None:
    """One JSON document on stdout: a message, or plain data holding messages."""
    print(json.dumps(to_json(value), indent=2, default=str))


# -- tables -------------------------------------------------------------------------------


def table(*headers: str, right: tuple[str, ...] = (), header: bool = True) -> Table:
    """A borderless table with a rule under its header; the columns named in `right` right-aligned."""
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, show_header=header, header_style="bold")
    for name in headers:
        out.add_column(name, justify="right" if name in right else "left")
    return out


def cell(value: Any) -> Text:
    """A table cell as literal text (never markup), coloured by what it says on a terminal."""
    text = str(value)
    return Text(text, style=STYLES.get(text.split(" ", 1)[0], ""))


def render(*items: Any) -> str:
    """Tables and text as plain text: no colour, no wrapping, no trailing blanks."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=PLAIN_WIDTH, color_system=None, highlight=False, markup=False,
                      emoji=False)  # fmt: skip
    for item in items:
        console.print(item)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def show(*items: Any, file: TextIO | None = None, indent: int = 0) -> None:
    """Print tables and text to stdout (or `file`): rich on a terminal, render()'s plain text otherwise."""
    out = file if file is not None else sys.stdout
    items = tuple(Padding(item, (0, 0, 0, indent)) if indent else item for item in items)
    if out.isatty():
        console = Console(file=out, highlight=False, markup=False, emoji=False)
        for item in items:
            console.print(item)
    else:
        print(render(*items), file=out)


def say(line: str) -> None:
    """A progress line, on stderr."""
    print(line, file=sys.stderr, flush=True)


# -- jobs and deployments -----------------------------------------------------------------

# A synthesis job's figures (metric, label), in the order a glance wants them.
SYNTH_FIGURES = (
    ("num_prompts", "prompts"), ("answered", "answered"), ("rejected", "rejected"),
    ("not_asked", "not asked (cancelled)"), ("accepted", "accepted"),
    ("retries", "retries"),
    ("num_train", "train records"), ("num_validation", "validation records"),
    ("prompt_tokens", "teacher prompt tokens"), ("teacher_completion_tokens", "teacher completion tokens"),
    ("cost", "cost"), ("teacher_seconds", "teacher seconds"),
)  # fmt: skip


def synth_figures(metrics: Mapping[str, float]) -> Table:
    """A synthesis job's figures: counts, tokens and cost, then what each filter dropped."""
    rows = [(label, metrics[key]) for key, label in SYNTH_FIGURES if key in metrics]
    rows += [(f"filtered: {key.removeprefix('filtered_')}", value) for key, value in sorted(metrics.items())
             if key.startswith("filtered_")]  # fmt: skip
    out = table("figure", "value", right=("value",), header=False)
    for label, value in rows:
        out.add_row(label, f"{value:,.4f}" if label == "cost" else f"{value:,.0f}")
    return out


def figures(metrics: Mapping[str, float]) -> Table:
    """Any job's figures, by name."""
    out = table("figure", "value", right=("value",), header=False)
    for key, value in sorted(metrics.items()):
        out.add_row(key, f"{value:.6g}")
    return out


def print_job(job: Any, as_json: bool) -> int:
    """The job (or pipeline run) as JSON, or its state, output, stages and figures; 0 when it succeeded."""
    status = job.status
    if as_json:
        print(json_format.MessageToJson(job, preserving_proto_field_name=True))
    else:
        state = common_pb2.JobState.Name(status.state)
        print(f"{job.id}: {state}" + (f" - {status.reason}" if status.reason else ""))
        if status.output.uri:
            print(f"output: {status.output.uri}")
        if job.DESCRIPTOR.name == "PipelineRun" and job.stages:
            stages = table("stage", "kind", "job", "state", "what")
            for stage in job.stages:
                mark = "reused" if stage.reused else common_pb2.JobState.Name(stage.state)
                what = (stage.reason or stage.message).replace("\n", " ")[:110]
                stages.add_row(stage.name, stage.kind, stage.job_id, cell(mark), Text(what))
            show(stages, indent=2)
        if status.metrics:
            metrics = dict(status.metrics)
            show(
                synth_figures(metrics) if job.DESCRIPTOR.name == "SynthesisJob" else figures(metrics),
                indent=2,
            )
    return 0 if status.state == common_pb2.SUCCEEDED else 1


@dataclass(frozen=True)
class JobKind:
    """A kind of job: its name in `slmops list`, the prefix of its ids, its service and its RPCs."""

    name: str
    prefix: str  # a stage's job id starts with the stage's first five letters (core/jobs/stage.py)
    service: str
    noun: str  # Get<noun>, Watch<noun>, Cancel<noun>
    listing: str  # List<listing>
    field: str  # the repeated field of the List response


JOB_KINDS = (
    JobKind("synth", "synth", "synthesis", "SynthesisJob", "SynthesisJobs", "jobs"),
    JobKind("train", "train", "training", "TrainingJob", "TrainingJobs", "jobs"),
    JobKind("convert", "conve", "conversion", "ConversionJob", "ConversionJobs", "jobs"),
    JobKind("bench", "evalu", "evaluation", "EvaluationJob", "EvaluationJobs", "jobs"),
    JobKind("pipeline", "pipe", "pipeline", "PipelineRun", "PipelineRuns", "runs"),
)


def job_kind(job_id: str) -> JobKind:
    """The kind of job an id names, by its prefix; a one-line error for anything else."""
    prefix = job_id.split("-", 1)[0]
    for kind in JOB_KINDS:
        if prefix == kind.prefix:
            return kind
    known = ", ".join(f"{kind.prefix}-..." for kind in JOB_KINDS)
    raise SystemExit(f"error: {job_id!r} is not a job id ({known})")


def ray_log(ray_job_id: str) -> str:
    """Where a job's Ray log is: the driver log file of the local stack's Ray head when it is on this
    machine, else the command that prints it from the Ray Jobs API; empty for no Ray job (a pipeline
    run runs in the pipeline service: its handle is `in-process:<run id>`)."""
    if not ray_job_id or ray_job_id.startswith("in-process:"):
        return ""
    ray = client.read_stack().get("ray", {})
    if ray.get("temp_dir"):
        found = sorted(Path(ray["temp_dir"]).glob(f"session_2*/logs/job-driver-{ray_job_id}.log"))
        if found:
            return str(found[-1])
    return f"ray job logs {ray_job_id} --address {ray.get('address') or settings.ray_address()}"


def run_job(service: str, noun: str, request: Any, args: argparse.Namespace) -> tuple[Any, int]:
    """Create the job and, unless --no-wait, follow its progress to its end; print it.
    The job and the exit status (0: it succeeded)."""
    stub = client.stub(service)
    job = client.call(getattr(stub, f"Create{noun}"), request)
    print(f"created {job.id}", file=sys.stderr)
    if not args.no_wait:
        job = watch_job(service, getattr(stub, f"Watch{noun}"), getattr(stub, f"Get{noun}"), job.id)
    return job, print_job(job, args.json)


def _state(value: int) -> str:
    return serving_pb2.DeploymentState.Name(value).removeprefix("DEPLOYMENT_")


def print_deployment(deployment: serving_pb2.Deployment, as_json: bool = False) -> None:
    """The deployment, its URL, and its revisions with their traffic (newest first); or its JSON."""
    if as_json:
        print_json(deployment)
        return
    print(
        f"{deployment.name}: {_state(deployment.state)}"
        + (f" - {deployment.reason}" if deployment.reason else "")
    )
    if deployment.url:
        print(f"  OpenAI base URL: {deployment.url}/openai/v1")
        key_file = predictor_key.configured_file() or client.read_stack().get("auth", {}).get(
            "predictor_key_file"
        )
        if key_file:
            print(f"  API key: the one in {key_file} (Authorization: Bearer)")
    for rev in deployment.revisions:  # each revision alone, e.g. to evaluate the canary (docs/rollouts.md)
        if rev.url and rev.state == serving_pb2.DEPLOYMENT_READY:
            print(f"  {rev.name} alone: {rev.url}/openai/v1")
    revisions = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1, 0, 0))
    revisions.add_column("revision", min_width=24)
    revisions.add_column("traffic", justify="right", min_width=4)
    revisions.add_column("state", min_width=9)
    revisions.add_column("model")
    for rev in deployment.revisions:
        if rev.state == serving_pb2.DEPLOYMENT_RETIRED and rev.number < deployment.latest_revision - 2:
            continue  # old history: `slmops status` is a glance
        role = " (serving)" if rev.number == deployment.serving_revision else (
            " (canary)" if rev.number == deployment.latest_revision and rev.traffic_percent else "")  # fmt: skip
        why = f"  {rev.reason.splitlines()[0]}" if rev.reason else ""
        revisions.add_row(
            rev.name, f"{rev.traffic_percent}%", cell(_state(rev.state)), f"{rev.model_uri}{role}{why}"
        )
    if revisions.row_count:
        show(revisions, indent=2)
