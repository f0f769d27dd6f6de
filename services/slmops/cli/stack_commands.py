"""`slmops up|down|status`: the local stack (stack.py starts and stops it), and the health of what
the CLI talks to."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from slmops.api.v1 import serving_pb2
from slmops.cli import client, stack
from slmops.cli.common import cell, print_deployment, show, table
from slmops.core import settings
from slmops.core.secret_refs import redact


def cmd_up(args: argparse.Namespace) -> int:
    stack.up(
        settings.data_dir(args.data_dir),
        free_ports=args.free_ports,
        num_cpus=args.num_cpus,
        token=not args.no_token,
    )
    print("stack is up; `slmops status` shows its health, `slmops down` stops it")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    count = stack.down(settings.data_dir(args.data_dir))
    print(f"stopped {count} process group(s)" if count else "nothing was running")
    return 0


def _print_deployments() -> None:
    """Deployments with their revisions and traffic, after the services' health."""
    try:
        reply = client.call(
            client.stub("serving").ListDeployments,
            serving_pb2.ListDeploymentsRequest(page_size=100),
            timeout=5.0,  # the service answered its health check just now
        )
    except (grpc.RpcError, SystemExit) as exc:
        print(f"\ndeployments: cannot be listed ({exc})")
        return
    live = [d for d in reply.deployments if d.state != serving_pb2.DEPLOYMENT_DELETED]
    if live:
        print()
    for deployment in live:
        print_deployment(deployment)


def cmd_status(args: argparse.Namespace) -> int:
    rows = stack.status(settings.data_dir(args.data_dir))
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
    return 0 if all(r[2] == "SERVING" for r in rows) else 1


def add_commands(sub: Any) -> None:
    p = sub.add_parser("up", help="start a local Ray head and every service in the background")
    p.add_argument("--free-ports", action="store_true", help="pick free ports instead of 50051-50056")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs the Ray head offers")
    p.add_argument(
        "--no-token",
        action="store_true",
        help="let any local user call the services (by default they require <data_dir>/auth/token)",
    )
    p.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop what `up` started").set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="health of every service and of Ray")
    p.add_argument("--settings", action="store_true", help="also print every setting")
    p.set_defaults(func=cmd_status)
