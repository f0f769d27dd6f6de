"""`slmops up|down|status`: the local stack (stack.py starts and stops it), and the health of what
the CLI talks to."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import grpc

from slmops.api.v1 import serving_pb2
from slmops.cli import client, stack
from slmops.cli.common import cell, json_flag, print_deployment, print_json, show, table
from slmops.core import settings
from slmops.core.secret_refs import redact


def _stderr(*parts: Any) -> None:
    print(*parts, file=sys.stderr)


def cmd_up(args: argparse.Namespace) -> int:
    record = stack.up(
        settings.data_dir(args.data_dir),
        free_ports=args.free_ports,
        num_cpus=args.num_cpus,
        token=not args.no_token,
        **({"say": _stderr} if args.json else {}),
    )
    if args.json:
        print_json(record)  # what was started, where; paths of the key files, never a key
    else:
        print("stack is up; `slmops status` shows its health, `slmops down` stops it")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    count = stack.down(settings.data_dir(args.data_dir), **({"say": _stderr} if args.json else {}))
    if args.json:
        print_json({"stopped": count})
    else:
        print(f"stopped {count} process group(s)" if count else "nothing was running")
    return 0


def _live_deployments() -> tuple[list[serving_pb2.Deployment], str]:
    """The deployments not deleted, or why they cannot be listed."""
    try:
        reply = client.call(
            client.stub("serving").ListDeployments,
            serving_pb2.ListDeploymentsRequest(page_size=100),
            timeout=5.0,  # the service answered its health check just now
        )
    except (grpc.RpcError, SystemExit) as exc:
        return [], str(exc)
    return [d for d in reply.deployments if d.state != serving_pb2.DEPLOYMENT_DELETED], ""


def _print_deployments() -> None:
    """Deployments with their revisions and traffic, after the services' health."""
    live, problem = _live_deployments()
    if problem:
        print(f"\ndeployments: cannot be listed ({problem})")
        return
    if live:
        print()
    for deployment in live:
        print_deployment(deployment)


def cmd_status(args: argparse.Namespace) -> int:
    rows = stack.status(settings.data_dir(args.data_dir))
    code = 0 if all(r[2] == "SERVING" for r in rows) else 1
    if args.json:
        serving = any(r[0] == "serving" and r[2] == "SERVING" for r in rows)
        live, problem = _live_deployments() if serving else ([], "")
        out: dict[str, Any] = {
            "components": [{"name": name, "address": addr, "health": state} for name, addr, state in rows],
            "deployments": live,
        }
        if problem:
            out["deployments_error"] = problem
        if args.settings:
            out["settings"] = {env: redact(str(value)) for env, value, _ in settings.describe()}
        print_json(out)
        return code
    health = table("component", "address", "health")
    for name, addr, state in rows:
        health.add_row(name, addr, cell(state))
    show(health)
    if any(r[0] == "serving" and r[2] == "SERVING" for r in rows):
        _print_deployments()
    if args.settings:
        print()
        for env, value, help_text in settings.describe():
            print(f"{env}={redact(str(value)):<30} # {help_text}")
    return code


def add_commands(sub: Any) -> None:
    p = sub.add_parser("up", help="start a local Ray head and every service in the background")
    p.add_argument("--free-ports", action="store_true", help="pick free ports instead of 50051-50056")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs the Ray head offers")
    p.add_argument(
        "--no-token",
        action="store_true",
        help="let any local user call the services (by default they require <data_dir>/auth/token)",
    )
    json_flag(p, "the stack record (what was started, where; progress on stderr)")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop what `up` started")
    json_flag(p, "how many process groups were stopped")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="health of every service and of Ray")
    p.add_argument("--settings", action="store_true", help="also print every setting")
    json_flag(p, "the health of each component, the deployments (and the settings)")
    p.set_defaults(func=cmd_status)
