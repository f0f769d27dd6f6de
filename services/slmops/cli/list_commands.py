"""`slmops list [KIND]`: the jobs, pipeline runs and deployments the services hold, every page of them.

Without a kind, every kind, newest first. `--state` filters by a job state
(pending, running, succeeded, failed, cancelled) or a deployment state
(deploying, ready, failed, deleted); listing every kind, a state only some kinds
have lists those kinds only. Deleted deployments are left out unless asked for
with `--state deleted`. `--label KEY=VALUE` (repeatable) keeps what carries every
pair. `--json` prints one JSON array: each job, run or deployment as its
message's JSON with a `kind` key added.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

from slmops.api.v1 import common_pb2, serving_pb2
from slmops.cli import client
from slmops.cli.common import JOB_KINDS, JobKind, cell, json_flag, labels, print_json, show, table, to_json

PAGE_SIZE = 500  # the most a List answers at once
DEPLOYMENTS = "deployments"
KINDS = (*[kind.name for kind in JOB_KINDS], DEPLOYMENTS)
JOB_STATES = [name.lower() for name, number in common_pb2.JobState.items() if number]
DEPLOYMENT_STATES = [name.removeprefix("DEPLOYMENT_").lower() for name, number in
                     serving_pb2.DeploymentState.items() if number and name != "DEPLOYMENT_RETIRED"]  # fmt: skip


def list_request(kind: str, state: str | None, wanted: dict[str, str], page_token: str = "") -> Any:
    """The List request of one kind: the service filters jobs by state and labels, deployments by labels."""
    if kind == DEPLOYMENTS:
        return serving_pb2.ListDeploymentsRequest(page_size=PAGE_SIZE, page_token=page_token, labels=wanted)
    job_state = common_pb2.JobState.Value(state.upper()) if state else common_pb2.JOB_STATE_UNSPECIFIED
    return common_pb2.ListJobsRequest(
        page_size=PAGE_SIZE, page_token=page_token, state=job_state, labels=wanted
    )


def pages(method: Callable[..., Any], make: Callable[[str], Any], field: str) -> Iterator[Any]:
    """Every item of a List RPC, page after page until no next_page_token."""
    token = ""
    while True:
        reply = client.call(method, make(token))
        yield from getattr(reply, field)
        token = reply.next_page_token
        if not token:
            return


def kinds_for(kind: str | None, state: str | None) -> list[str]:
    """The kinds to list: the one named, or every kind that has the state."""
    if kind is not None:
        states = DEPLOYMENT_STATES if kind == DEPLOYMENTS else JOB_STATES
        if state and state not in states:
            raise SystemExit(f"error: --state {state}: {kind} are {', '.join(states)}")
        return [kind]
    if not state:
        return list(KINDS)
    return [k for k in KINDS if state in (DEPLOYMENT_STATES if k == DEPLOYMENTS else JOB_STATES)]


def _deployment_state(deployment: serving_pb2.Deployment) -> str:
    return serving_pb2.DeploymentState.Name(deployment.state).removeprefix("DEPLOYMENT_").lower()


def collect(kind: str, state: str | None, wanted: dict[str, str]) -> list[tuple[str, Any]]:
    """(kind, message) of everything of one kind that matches."""
    if kind == DEPLOYMENTS:
        stub = client.stub("serving")
        found = pages(
            stub.ListDeployments, lambda token: list_request(kind, state, wanted, token), "deployments"
        )
        return [(kind, d) for d in found if _deployment_state(d) == state or (
            not state and d.state != serving_pb2.DEPLOYMENT_DELETED)]  # fmt: skip
    job: JobKind = next(k for k in JOB_KINDS if k.name == kind)
    stub = client.stub(job.service)
    method = getattr(stub, f"List{job.listing}")
    return [(kind, item) for item in pages(method, lambda token: list_request(kind, state, wanted, token),
                                           job.field)]  # fmt: skip


def _created(item: Any) -> float:
    stamp = item.create_time if isinstance(item, serving_pb2.Deployment) else item.status.create_time
    return stamp.seconds + stamp.nanos / 1e9


def row(kind: str, item: Any) -> tuple[str, str, str, str, str, str]:
    """kind, id, state, progress, created, and what it made or where it stands."""
    when = item.create_time if isinstance(item, serving_pb2.Deployment) else item.status.create_time
    created = f"{when.ToDatetime():%Y-%m-%d %H:%M:%S}" if when.seconds else ""
    if isinstance(item, serving_pb2.Deployment):
        return (
            "deployment",
            item.name,
            _deployment_state(item).upper(),
            "",
            created,
            item.reason or item.url,
        )
    status = item.status
    what = status.reason or status.output.uri or status.message
    return (kind, item.id, common_pb2.JobState.Name(status.state), f"{status.fraction * 100:.0f}%", created,
            what.replace("\n", " ")[:110])  # fmt: skip


def cmd_list(args: argparse.Namespace) -> int:
    state = args.state.lower() if args.state else None
    wanted = labels(args.label)
    found = [entry for kind in kinds_for(args.kind, state) for entry in collect(kind, state, wanted)]
    found.sort(key=lambda entry: _created(entry[1]), reverse=True)
    if args.json:
        print_json([{"kind": kind, **to_json(item)} for kind, item in found])
        return 0
    out = table("kind", "id", "state", "progress", "created (UTC)", "what", right=("progress",))
    for kind, item in found:
        kind_name, ident, state_name, progress, created, what = row(kind, item)
        out.add_row(kind_name, ident, cell(state_name), progress, created, what)
    show(out)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("list", help="jobs, pipeline runs and deployments, newest first (every page)")
    p.add_argument("kind", nargs="?", choices=KINDS, help="one kind (default: every kind)")
    p.add_argument("--state", type=str.lower, choices=sorted({*JOB_STATES, *DEPLOYMENT_STATES}),
                   help="only in this state (deployments: deleted ones only with --state deleted)")  # fmt: skip
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="only what carries this label (repeatable: every pair)")  # fmt: skip
    json_flag(p, "a JSON array of the jobs, runs and deployments")
    p.set_defaults(func=cmd_list)
