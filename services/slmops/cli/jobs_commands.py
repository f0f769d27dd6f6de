"""`slmops get|cancel|logs|watch|lineage`: a job of any stage service, or a pipeline run, by its id;
and an artifact's lineage. `get` also shows a deployment by its name (anything that is not a job id).

`logs` prints a job's progress events from its first (Watch from sequence 0
replays what the service kept): without --follow, what the job reported so far;
with --follow, then what it reports until it ends. It ends with where the job's
Ray log is (the driver's log file of the local stack, or the `ray job logs`
command), when the job ran on Ray; for a pipeline run, its stages' jobs (each
with logs of its own) and the pipeline service's log. `watch` is a live view of the same events
(state, progress bar, latest message) until the job ends, then the job; its
exit status is 0 only when the job SUCCEEDED.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict
from typing import Any

from slmops.api.v1 import common_pb2, serving_pb2
from slmops.cli import client
from slmops.cli.common import job_kind, json_flag, print_deployment, print_job, print_json, ray_log
from slmops.cli.progress import TERMINAL, LiveView, format_event, stream_events
from slmops.core import artifacts

# Without --follow, how long `logs` reads a running job's stream: its kept events come at once.
SETTLE_S = 2.0


def _get(job_id: str) -> Any:
    kind = job_kind(job_id)
    stub = client.stub(kind.service)
    return client.call(getattr(stub, f"Get{kind.noun}"), common_pb2.GetJobRequest(id=job_id))


def _get_deployment(name: str, as_json: bool) -> int:
    """`slmops get NAME` for what is not a job id: the deployment, its URL and each revision's; 0 when READY."""
    request = serving_pb2.GetDeploymentRequest(name=name)
    deployment = client.call(client.stub("serving").GetDeployment, request)
    if as_json:
        print_json(deployment)
    else:
        print_deployment(deployment)
    return 0 if deployment.state == serving_pb2.DEPLOYMENT_READY else 1


def cmd_get(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[a-z]+-[0-9a-f]{12}", args.job_id):  # not a job id: a deployment's name
        return _get_deployment(args.job_id, args.json)
    return print_job(_get(args.job_id), args.json)


def cmd_cancel(args: argparse.Namespace) -> int:
    kind = job_kind(args.job_id)
    stub = client.stub(kind.service)
    job = client.call(getattr(stub, f"Cancel{kind.noun}"), common_pb2.CancelJobRequest(id=args.job_id))
    print_job(job, args.json)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    kind = job_kind(args.job_id)
    stub = client.stub(kind.service)
    job = _get(args.job_id)  # NotFound before anything is printed
    follow = args.follow and job.status.state not in TERMINAL
    events: list[common_pb2.ProgressEvent] = []

    def on_event(event: common_pb2.ProgressEvent) -> None:
        if args.json:
            events.append(event)
        else:
            stamp = f"{event.time.ToDatetime():%Y-%m-%d %H:%M:%S}Z " if event.HasField("time") else ""
            print(stamp + format_event(kind.name, event).strip(), flush=True)

    ended = job.status.state in TERMINAL
    timeout = None if (follow or ended) else SETTLE_S
    stream_events(getattr(stub, f"Watch{kind.noun}"), args.job_id, on_event, timeout=timeout)
    job = _get(args.job_id)
    where = ray_log(job.status.ray_job_id)
    state = common_pb2.JobState.Name(job.status.state)
    stages = {stage.name: stage.job_id for stage in getattr(job, "stages", []) if stage.job_id}
    service_log = client.read_stack().get("services", {}).get(kind.service, {}).get("log", "")
    if args.json:
        print_json({"id": job.id, "state": state, "events": events, "ray_job_id": job.status.ray_job_id,
                    "ray_log": where, "service_log": service_log,
                    **({"stage_jobs": stages} if kind.name == "pipeline" else {})})  # fmt: skip
    else:
        if job.status.state not in TERMINAL:
            state += " (still running: --follow streams until it ends)"
        print(f"{job.id}: {state}" + (f" - {job.status.reason}" if job.status.reason else ""))
        if where:
            print(f"Ray job {job.status.ray_job_id}: {where}")
        if kind.name == "pipeline":  # a run runs in the pipeline service; each stage is a job of its own
            if stages:
                print("stage jobs: " + ", ".join(f"{name} {job_id}" for name, job_id in stages.items()))
            if service_log:
                print(f"pipeline service log: {service_log}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    kind = job_kind(args.job_id)
    stub = client.stub(kind.service)
    with LiveView(f"{kind.name} {args.job_id}", out=sys.stderr) as view:
        stream_events(getattr(stub, f"Watch{kind.noun}"), args.job_id, view.update)
    return print_job(_get(args.job_id), args.json)


def cmd_lineage(args: argparse.Namespace) -> int:
    chain = artifacts.lineage(args.uri)
    if args.json:
        print_json([asdict(manifest) for manifest in chain])
        return 0
    for depth, manifest in enumerate(chain):
        arrow = "  " * depth + ("└─ " if depth else "")
        if manifest.kind == "file":
            print(f"{arrow}{manifest.uri}  (source file)")
            continue
        extra = f" trace={manifest.trace_id}" if manifest.trace_id else ""
        print(f"{arrow}{manifest.kind:<11} {manifest.id}  {manifest.uri}{extra}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("lineage", help="print the chain from an artifact back to its source")
    p.add_argument("uri")
    json_flag(p, "the manifests, the artifact's first")
    p.set_defaults(func=cmd_lineage)
    ids = "synth-..., train-..., conve-..., evalu-... (bench) or pipe-... (a pipeline run)"
    p = sub.add_parser("get", help="a job's or pipeline run's state, output and figures; or a deployment's "
                       "URLs and revisions")  # fmt: skip
    p.add_argument("job_id", help=f"{ids}; or a deployment's name")
    json_flag(p, "the job")
    p.set_defaults(func=cmd_get)
    p = sub.add_parser(
        "cancel", help="stop a job or a pipeline run (a synthesis job keeps what was answered)"
    )
    p.add_argument("job_id", help=ids)
    json_flag(p, "the job")
    p.set_defaults(func=cmd_cancel)
    p = sub.add_parser("logs", help="a job's progress events from its start, and where its Ray log is")
    p.add_argument("job_id", help=ids)
    p.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
    json_flag(p, "the job's id, state, events and Ray log")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("watch", help="a live view of a job until it ends; exit status 0 when it succeeded")
    p.add_argument("job_id", help=ids)
    json_flag(p, "the job once it ended")
    p.set_defaults(func=cmd_watch)
