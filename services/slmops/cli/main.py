"""The `slmops` command: a gRPC client of the services, as kubectl is of an API server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from slmops.core import settings, tracing


def _print_job(job: Any, as_json: bool) -> int:
    from slmops.api.v1 import common_pb2

    if as_json:
        print(json_format.MessageToJson(job, preserving_proto_field_name=True))
    status = job.status
    state = common_pb2.JobState.Name(status.state)
    if not as_json:
        print(f"{job.id}: {state}" + (f" - {status.reason}" if status.reason else ""))
        if status.output.uri:
            print(f"output: {status.output.uri}")
        if job.DESCRIPTOR.name == "SynthesisJob":
            from slmops.cli.synth_commands import synth_summary

            print(synth_summary(dict(status.metrics)))
        else:
            for key, value in sorted(status.metrics.items()):
                print(f"  {key} = {value:.6g}")
    return 0 if status.state == common_pb2.SUCCEEDED else 1


def _cmd_up(args: argparse.Namespace) -> int:
    from slmops.cli import stack

    stack.up(
        settings.data_dir(args.data_dir),
        free_ports=args.free_ports,
        num_cpus=args.num_cpus,
        token=not args.no_token,
    )
    print("stack is up; `slmops status` shows its health, `slmops down` stops it")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from slmops.cli import stack

    count = stack.down(settings.data_dir(args.data_dir))
    print(f"stopped {count} process group(s)" if count else "nothing was running")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from slmops.cli import stack

    rows = stack.status(settings.data_dir(args.data_dir))
    width = max(len(r[1]) for r in rows)
    for name, addr, health in rows:
        print(f"{name:<11} {addr:<{width}}  {health}")
    if all(r[2] == "SERVING" for r in rows if r[0] == "serving"):
        _print_deployments()
    if args.settings:
        print()
        from slmops.core.secret_refs import redact

        for env, value, help_text in settings.describe():
            print(f"{env}={redact(str(value)):<30} # {help_text}")
    return 0 if all(r[2] == "SERVING" for r in rows) else 1


def _print_deployments() -> None:
    """Deployments with their revisions and traffic, after the services' health."""
    from slmops.api.v1 import serving_pb2
    from slmops.cli import client, jobs_commands

    try:
        reply = client.call(
            client.stub("serving").ListDeployments, serving_pb2.ListDeploymentsRequest(page_size=100)
        )
    except (grpc.RpcError, SystemExit) as exc:
        print(f"\ndeployments: cannot be listed ({exc})")
        return
    live = [d for d in reply.deployments if d.state != serving_pb2.DEPLOYMENT_DELETED]
    if live:
        print()
    for deployment in live:
        jobs_commands.print_deployment(deployment)


def _cmd_lineage(args: argparse.Namespace) -> int:
    from slmops.core import artifacts

    chain = artifacts.lineage(args.uri)
    for depth, manifest in enumerate(chain):
        arrow = "  " * depth + ("└─ " if depth else "")
        if manifest.kind == "file":
            print(f"{arrow}{manifest.uri}  (source file)")
            continue
        extra = f" trace={manifest.trace_id}" if manifest.trace_id else ""
        print(f"{arrow}{manifest.kind:<11} {manifest.id}  {manifest.uri}{extra}")
    return 0


# A job id starts with its stage's first five letters (core/jobs/stage.py): which service holds it.
JOB_SERVICES = {"synth": ("synthesis", "SynthesisJob"), "train": ("training", "TrainingJob"),
                "conve": ("conversion", "ConversionJob"), "evalu": ("evaluation", "EvaluationJob")}  # fmt: skip


def _job_service(job_id: str) -> tuple[str, str]:
    found = JOB_SERVICES.get(job_id.split("-", 1)[0])
    if found is None:
        raise SystemExit(f"slmops: {job_id!r} is not a job id (synth-..., train-..., conve-..., evalu-...)")
    return found


def _cmd_cancel(args: argparse.Namespace) -> int:
    from slmops.api.v1 import common_pb2
    from slmops.cli import client

    service, noun = _job_service(args.job_id)
    stub = client.stub(service)
    job = client.call(getattr(stub, f"Cancel{noun}"), common_pb2.CancelJobRequest(id=args.job_id))
    _print_job(job, args.json)
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    from slmops.api.v1 import common_pb2
    from slmops.cli import client

    service, noun = _job_service(args.job_id)
    stub = client.stub(service)
    return _print_job(
        client.call(getattr(stub, f"Get{noun}"), common_pb2.GetJobRequest(id=args.job_id)), args.json
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    command = [
        sys.executable,
        "-m",
        "slmops.predictor",
        "--model-dir",
        args.model_dir,
        "--host",
        args.host,
        "--http-port",
        str(args.port),
        "--grpc-port",
        str(args.grpc_port),
    ]
    if args.name:
        command += ["--name", args.name]
    for adapter in args.adapter:
        command += ["--adapter", adapter]
    if args.api_key_file:
        command += ["--api-key-file", args.api_key_file]
    for flag in ("max_concurrency", "max_queue"):
        if getattr(args, flag):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    os.execv(sys.executable, command)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from slmops.cli import jobs_commands

    parser = argparse.ArgumentParser(prog="slmops", description="Operate small language models.")
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"state folder (default ${settings.VARS['data_dir'].env} or ~/.slmops)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start a local Ray head and every service in the background")
    p.add_argument("--free-ports", action="store_true", help="pick free ports instead of 50051-50056")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs the Ray head offers")
    p.add_argument(
        "--no-token",
        action="store_true",
        help="let any local user call the services (by default they require <data_dir>/auth/token)",
    )
    p.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop what `up` started").set_defaults(func=_cmd_down)
    p = sub.add_parser("status", help="health of every service and of Ray")
    p.add_argument("--settings", action="store_true", help="also print every setting")
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("lineage", help="print the chain from an artifact back to its source")
    p.add_argument("uri")
    p.set_defaults(func=_cmd_lineage)
    p = sub.add_parser("get", help="a job's state, output and figures")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_get)
    p = sub.add_parser("cancel", help="stop a job (a synthesis job keeps what was answered)")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_cancel)
    p = sub.add_parser("serve", help="serve a model folder with the predictor (OpenAI API + OIP v2)")
    p.add_argument("model_dir")
    p.add_argument("--name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (OpenAI API, OIP v2 REST)")
    p.add_argument("--grpc-port", type=int, default=8081, help="OIP v2 gRPC port; 0 turns gRPC off")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also serve a LoRA adapter as model NAME (repeatable)",
    )
    p.add_argument(
        "--api-key-file",
        default="",
        help="require the API key in this file as a bearer token (or set SLMOPS_PREDICTOR_API_KEY)",
    )
    p.add_argument("--max-concurrency", type=int, default=0, help="sequences decoded at once")
    p.add_argument("--max-queue", type=int, default=0, help="requests waiting before 429")
    p.set_defaults(func=_cmd_serve)
    jobs_commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir:
        import os

        os.environ[settings.VARS["data_dir"].env] = str(Path(args.data_dir).resolve())
    tracing.setup_tracing("cli")
    try:
        with tracing.tracer().start_as_current_span(f"cli.{args.command}"):
            return int(args.func(args) or 0)
    except grpc.RpcError as exc:
        details = exc.details() or ""
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "; spec." in details:
            details = "\n  " + details.replace("; spec.", "\n  spec.")  # one problem per line
        print(f"error: {exc.code().name}: {details}", file=sys.stderr)
        return 2 if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else 1
    except Exception as exc:  # errors a user can act on, without a stack trace
        from slmops.core.errors import SlmopsError

        if isinstance(exc, SlmopsError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    finally:
        tracing.shutdown_tracing()


if __name__ == "__main__":
    sys.exit(main())
