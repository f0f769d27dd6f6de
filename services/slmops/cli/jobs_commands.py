"""`slmops get|cancel|lineage`: a job of any stage service by its id, and an artifact's lineage."""

from __future__ import annotations

import argparse
from typing import Any

from slmops.api.v1 import common_pb2
from slmops.cli import client
from slmops.cli.common import print_job
from slmops.core import artifacts

# A job id starts with its stage's first five letters (core/jobs/stage.py): which service holds it.
JOB_SERVICES = {"synth": ("synthesis", "SynthesisJob"), "train": ("training", "TrainingJob"),
                "conve": ("conversion", "ConversionJob"), "evalu": ("evaluation", "EvaluationJob")}  # fmt: skip


def job_service(job_id: str) -> tuple[str, str]:
    """(service, noun) of the job id."""
    found = JOB_SERVICES.get(job_id.split("-", 1)[0])
    if found is None:
        raise SystemExit(f"slmops: {job_id!r} is not a job id (synth-..., train-..., conve-..., evalu-...)")
    return found


def cmd_get(args: argparse.Namespace) -> int:
    service, noun = job_service(args.job_id)
    stub = client.stub(service)
    return print_job(
        client.call(getattr(stub, f"Get{noun}"), common_pb2.GetJobRequest(id=args.job_id)), args.json
    )


def cmd_cancel(args: argparse.Namespace) -> int:
    service, noun = job_service(args.job_id)
    stub = client.stub(service)
    job = client.call(getattr(stub, f"Cancel{noun}"), common_pb2.CancelJobRequest(id=args.job_id))
    print_job(job, args.json)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    for depth, manifest in enumerate(artifacts.lineage(args.uri)):
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
    p.set_defaults(func=cmd_lineage)
    p = sub.add_parser("get", help="a job's state, output and figures")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_get)
    p = sub.add_parser("cancel", help="stop a job (a synthesis job keeps what was answered)")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cancel)
