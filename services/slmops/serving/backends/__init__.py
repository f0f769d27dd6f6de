"""Serving backends: where a deployment's revisions actually run.

A backend takes a deployment name and a revision and makes the platform serve
it; the serving service keeps the records (revisions, traffic, state) and asks
its backend to act. Two backends implement the protocol: `local` (supervised
predictor processes behind the router) and `kserve` (an InferenceService per
deployment, see `kserve.py`).

A backend may also offer, and the deployments use when it does:
`check_owner(name)` (Conflict when the name is taken by something it must not
touch), `check_traffic(percent)` (InvalidSpec when it cannot split traffic so)
and `failed_note(name)` (a deployment whose first revision failed keeps its
objects for inspection; the note says so and how to remove them). A backend
whose `checks_files` is true checks a revision's files against its manifest
itself, right before it serves them (local: before each start of a
predictor); for the others the deployments check them before handing a
revision over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

DEPLOYING = "DEPLOYING"
READY = "READY"
FAILED = "FAILED"
RETIRED = "RETIRED"  # a revision kept in the history that no longer serves
STATES = (DEPLOYING, READY, FAILED)


@dataclass(frozen=True)
class PredictorLimits:
    """What each predictor of a deployment takes on (DeploymentSpec.limits); 0 keeps the predictor's default."""

    threads: int = 0
    max_concurrency: int = 0
    max_queue: int = 0
    max_tokens: int = 0
    max_body_bytes: int = 0
    request_timeout_s: float = 0.0

    @classmethod
    def of(cls, values: dict[str, Any] | None) -> PredictorLimits:
        """The limits recorded with a deployment ({field: value}; fields left out keep the default)."""
        values = values or {}
        return cls(**{name: kind(float(values.get(name) or 0)) for name, kind in _LIMIT_TYPES.items()})

    def flags(self) -> list[str]:
        """The predictor's flags (`python -m slmops.predictor`) for the limits that are set."""
        out: list[str] = []
        for name, flag in LIMIT_FLAGS.items():
            value = getattr(self, name)
            if value:
                out += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return out

    @classmethod
    def from_flags(cls, args: list[str]) -> PredictorLimits:
        """The limits a predictor's arguments set (`--flag value` or `--flag=value`; the last one wins)."""
        names = {flag: name for name, flag in LIMIT_FLAGS.items()}
        found: dict[str, Any] = {}
        items = list(args)
        for i, arg in enumerate(items):
            flag, sep, value = arg.partition("=")
            if flag in names:
                value = value if sep else (items[i + 1] if i + 1 < len(items) else "0")
                found[names[flag]] = value
        return cls.of(found)


# The predictor's flag for each limit, and each limit's type.
LIMIT_FLAGS = {"threads": "--threads", "max_concurrency": "--max-concurrency", "max_queue": "--max-queue",
               "max_tokens": "--max-tokens", "max_body_bytes": "--max-body-bytes",
               "request_timeout_s": "--request-timeout"}  # fmt: skip
_LIMIT_TYPES: dict[str, type] = {name: float if name == "request_timeout_s" else int for name in LIMIT_FLAGS}


@dataclass(frozen=True)
class Revision:
    """One model version of a deployment.

    `model_uri` is the artifact as the user named it; `storage_uri` is what the
    backend loads (for KServe: what its storage initializer downloads).
    `traffic_percent` is the share the revision gets when applied: 100 replaces
    the serving revision, less starts a canary next to it. `adapters` are
    (name, storage location) pairs served beside the base model; `port` is
    where the deployment is reached when the backend lets the caller choose
    (local: the router's port; 0 picks a free one). `cpus`, `memory` and `gpus`
    are what each of its replicas asks for (0 / "": the backend's default); a
    backend that cannot reserve them refuses them. `limits` are its predictors'
    limits, the deployment's: every revision of a deployment runs with the same.
    """

    number: int
    model_uri: str
    storage_uri: str
    traffic_percent: int = 100
    adapters: tuple[tuple[str, str], ...] = ()
    port: int = 0
    cpus: float = 0.0
    memory: str = ""
    gpus: int = 0
    limits: PredictorLimits = PredictorLimits()


@dataclass(frozen=True)
class RevisionStatus:
    """Where one revision stands; `runtime` is what the backend needs to take it over again (local: pid).

    `url` reaches this revision alone from where the serving service runs (for
    KServe: the cluster-local address); `external_url`, when the backend has
    one, is the same revision through the cluster's ingress. `grpc_address`
    (host:port) reaches its predictor's OIP v2 gRPC port alone, when it has one.
    """

    state: str
    url: str = ""
    reason: str = ""
    runtime: dict[str, Any] = field(default_factory=dict)
    external_url: str = ""
    grpc_address: str = ""


@dataclass(frozen=True)
class BackendStatus:
    """What the backend reports for a deployment.

    `traffic` maps revision numbers to the percent of requests they receive;
    `ready_revision` is the newest revision that is ready to answer (None while
    none is); `reason` says why a deployment is not READY. `url` is where
    callers beside the serving service reach the deployment (for KServe: the
    cluster-local `status.address.url`), `external_url` its external route;
    `grpc_address` (host:port) is where callers reach its OIP v2 gRPC, split
    like `url` (empty when the backend has none).
    """

    state: str
    url: str = ""
    external_url: str = ""
    ready_revision: int | None = None
    traffic: dict[int, int] = field(default_factory=dict)
    reason: str = ""
    revisions: dict[int, RevisionStatus] = field(default_factory=dict)
    grpc_address: str = ""


def split(serving: int, latest: int, percent: int) -> dict[int, int]:
    """The traffic asked for: the latest revision's `percent`, the serving (rolled-out) one the rest."""
    if latest == serving or percent >= 100:
        return {latest: 100}
    if percent <= 0:
        return {serving: 100}
    return {serving: 100 - percent, latest: percent}


@runtime_checkable
class ServingBackend(Protocol):
    """Runs a deployment's revisions and splits traffic between them."""

    def apply(self, name: str, revision: Revision, record_dir: Path | None = None) -> dict[str, Any]:
        """Serve `revision` of deployment `name` with its traffic_percent; returns what was applied."""
        ...

    def set_traffic(self, name: str, percent: int, record_dir: Path | None = None) -> None:
        """Give the latest revision `percent` of the traffic, the previous one the rest."""
        ...

    def promote(self, name: str, record_dir: Path | None = None) -> None:
        """Send all traffic to the latest revision."""
        ...

    def rollback(self, name: str, record_dir: Path | None = None) -> None:
        """Send all traffic back to the previous revision."""
        ...

    def delete(self, name: str) -> None:
        """Stop serving deployment `name`."""
        ...

    def status(self, name: str) -> BackendStatus:
        """Where deployment `name` stands now."""
        ...

    def restore(self, name: str, revisions: list[Revision], runtime: dict[int, dict[str, Any]],
                serving: int, latest: int, percent: int) -> None:  # fmt: skip
        """Take deployment `name` over as recorded (after a restart): adopt what runs, start what should."""
        ...
