"""`slmops serve|deploy|promote|rollback`: serve a model folder here, or deployments and their
revisions through the serving service."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from slmops.api.v1 import serving_pb2
from slmops.cli import client
from slmops.cli.common import print_deployment, uri
from slmops.core import predictor_key, settings


def _adapter_refs(flags: list[str]) -> list[serving_pb2.AdapterRef]:
    refs = []
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"error: --adapter {flag!r}: expected NAME=URI")
        refs.append(serving_pb2.AdapterRef(name=name, uri=uri(value)))
    return refs


# The predictor's limits: (flag, DeploymentSpec.limits field, type, help). 0 keeps the predictor's default.
LIMITS = (
    ("--threads", "threads", int, "intra-op threads (default: every core the process may use)"),
    ("--max-concurrency", "max_concurrency", int, "sequences decoded at once (default 8)"),
    ("--max-queue", "max_queue", int, "requests waiting for a slot before 429 (default 64)"),
    ("--max-tokens", "max_tokens", int, "the largest max_tokens a request may ask for; more is 400 (default 4096)"),
    ("--max-body-bytes", "max_body_bytes", int, "request bodies past this get 413 (default 1048576)"),
    ("--request-timeout", "request_timeout_s", float, "seconds a request may wait and run; past it 504 (default 300)"),
)  # fmt: skip


def _not_negative(kind: type) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative (0 keeps the predictor's default)")
        return value

    return parse


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("predictor limits (0: the predictor's default)")
    for flag, field, kind, text in LIMITS:
        metavar = "SECONDS" if kind is float else ("BYTES" if field == "max_body_bytes" else "N")
        group.add_argument(flag, dest=field, type=_not_negative(kind), default=0, metavar=metavar, help=text)


def limits_of(args: argparse.Namespace) -> serving_pb2.PredictorLimits:
    return serving_pb2.PredictorLimits(**{field: getattr(args, field) for _, field, _, _ in LIMITS})


def _settle(stub: Any, name: str, since: float, as_json: bool = False) -> int:
    """Follow the deployment until its rollout settles (events from `since`); where it stands; 0 when READY."""
    for event in stub.WatchDeployment(serving_pb2.WatchDeploymentRequest(name=name)):
        if event.time.ToSeconds() >= since - 1:
            print(f"  {name}: {event.message}", file=sys.stderr)
    deployment = client.call(stub.GetDeployment, serving_pb2.GetDeploymentRequest(name=name))
    print_deployment(deployment, as_json)
    return 0 if deployment.state == serving_pb2.DEPLOYMENT_READY else 1


def cmd_deploy(args: argparse.Namespace) -> int:
    stub = client.stub("serving")
    if args.delete:
        deployment = client.call(stub.DeleteDeployment, serving_pb2.DeleteDeploymentRequest(name=args.name))
        print_deployment(deployment, as_json=True) if args.json else print(f"{deployment.name}: deleted")
        return 0
    if not args.model:
        raise SystemExit("error: --model is required to deploy")
    adapters, since, limits = _adapter_refs(args.adapter), time.time(), limits_of(args)
    if args.canary is not None:  # a new revision of an existing deployment
        if limits.ListFields():
            print("error: a new revision runs with its deployment's predictor limits, set when the deployment "
                  "was created: leave the limit flags out with --canary", file=sys.stderr)  # fmt: skip
            return 2
        request = serving_pb2.UpdateDeploymentRequest(name=args.name, model_uri=uri(args.model), adapters=adapters,
                                                      canary_traffic_percent=args.canary)  # fmt: skip
        client.call(stub.UpdateDeployment, request)
    else:
        spec = serving_pb2.DeploymentSpec(name=args.name, model_uri=uri(args.model), port=args.port,
                                          adapters=adapters, limits=limits)  # fmt: skip
        client.call(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest(spec=spec))
    return _settle(stub, args.name, since, args.json)


def cmd_promote(args: argparse.Namespace) -> int:
    stub = client.stub("serving")
    report = uri(args.require_report) if args.require_report else ""
    request = serving_pb2.PromoteDeploymentRequest(
        name=args.name, evaluation_report_uri=report, force=args.force
    )
    since = time.time()
    client.call(stub.PromoteDeployment, request)
    return _settle(stub, args.name, since, args.json)


def cmd_rollback(args: argparse.Namespace) -> int:
    stub, since = client.stub("serving"), time.time()
    client.call(stub.RollbackDeployment, serving_pb2.RollbackDeploymentRequest(name=args.name))
    return _settle(stub, args.name, since, args.json)


def api_key_flags(args: argparse.Namespace) -> list[str]:
    """The predictor's key flags: --api-key-file, else SLMOPS_PREDICTOR_API_KEY, else the platform's key
    file (SLMOPS_PREDICTOR_API_KEY_FILE, or <data_dir>/auth/predictor-key made 0600); none only with
    --no-api-key. Says on stderr where the key is."""
    env_key = "SLMOPS_PREDICTOR_API_KEY"
    if args.no_api_key:
        if args.api_key_file:
            raise SystemExit("error: --no-api-key and --api-key-file contradict each other")
        print(f"warning: no API key: whoever reaches {args.host}:{args.port} can use this predictor",
              file=sys.stderr)  # fmt: skip
        return ["--api-key-env", ""]  # not even from the environment
    if not args.api_key_file and os.environ.get(env_key):
        print(f"clients must send Authorization: Bearer <the key in ${env_key}>", file=sys.stderr)
        return []
    path = (
        args.api_key_file or predictor_key.configured_file() or str(predictor_key.ensure(settings.data_dir()))
    )
    print(f"clients must send Authorization: Bearer <the key in {path}>", file=sys.stderr)
    return ["--api-key-file", path]


def cmd_serve(args: argparse.Namespace) -> int:
    """Become the predictor (`python -m slmops.predictor`) on the model folder: no services needed."""
    command = [sys.executable, "-m", "slmops.predictor", "--model-dir", args.model_dir, "--host", args.host,
               "--http-port", str(args.port), "--grpc-port", str(args.grpc_port)]  # fmt: skip
    if args.name:
        command += ["--name", args.name]
    for adapter in args.adapter:
        command += ["--adapter", adapter]
    command += api_key_flags(args)
    if args.docs:
        command += ["--docs"]
    for flag, field, _, _ in LIMITS:
        value = getattr(args, field)
        if value:
            command += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    os.execv(sys.executable, command)
    return 0


def add_commands(sub: Any) -> None:
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
        help="require the API key in this file as a bearer token (default: $SLMOPS_PREDICTOR_API_KEY, "
        "else the file SLMOPS_PREDICTOR_API_KEY_FILE names, else <data_dir>/auth/predictor-key, made if missing)",
    )
    p.add_argument(
        "--no-api-key",
        action="store_true",
        help="serve without an API key: whoever reaches the port may call it",
    )
    p.add_argument(
        "--docs",
        action="store_true",
        help="also serve the OpenAPI schema and its pages (/openapi.json, /docs), behind the API key",
    )
    add_limit_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("deploy", help="serve a model behind the OpenAI API, roll out a new revision "
                       "(--canary), or --delete")  # fmt: skip
    p.add_argument("name")
    p.add_argument("--model", default=None, help="onnx-model or checkpoint artifact, or a model folder")
    p.add_argument(
        "--canary",
        type=int,
        default=None,
        metavar="PERCENT",
        help="a new revision of an existing deployment with PERCENT of the traffic once it is ready "
        "(100: it replaces the serving revision once ready)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=URI",
        help="serve a LoRA adapter as model NAME beside the base (repeatable)",
    )
    p.add_argument("--port", type=int, default=0, help="local backend: the deployment's port (0: a free one)")
    p.add_argument("--delete", action="store_true")
    add_limit_flags(p)
    p.add_argument("--json", action="store_true", help="print the deployment as one JSON document on stdout")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("promote", help="send all of a deployment's traffic to its canary, if the newest "
                       "evaluation report that judged it passed its gate")  # fmt: skip
    p.add_argument("name")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--require-report",
        default=None,
        metavar="URI",
        help="an evaluation report artifact whose gate must have passed",
    )
    which.add_argument(
        "--force",
        action="store_true",
        help="promote although the newest report that judged the canary failed its gate (recorded in the "
        "deployment's events)",
    )
    p.add_argument("--json", action="store_true", help="print the deployment as one JSON document on stdout")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "rollback", help="send all traffic back: off the canary, or to the revision served before"
    )
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the deployment as one JSON document on stdout")
    p.set_defaults(func=cmd_rollback)
