"""What a Ray cluster can ever give a job: its live nodes, and what its autoscaler may still add.

On KubeRay a worker group can idle down to zero pods, and a GPU group often
starts at zero: the live nodes alone would refuse jobs the autoscaler is there
to make room for. So a precheck counts, per resource, the larger of

- the live totals (every alive node), and
- the head's resources plus `maxReplicas` pods of every worker group
  (`SLMOPS_RAY_WORKER_GROUPS`, the per-pod resources the chart gives),

and refuses what can never fit: more in total than that, or one worker (one
task) larger than any single node or pod. With no worker groups configured,
only the live nodes count.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slmops.core import settings

TOTALS = ("CPU", "GPU")  # what totals are kept of (memory counts per node or pod only, often unknown)
_VAR = settings.VARS["ray_worker_groups"].env


@dataclass(frozen=True)
class WorkerGroup:
    """One Ray worker group: the most pods the autoscaler may run, and what each pod has."""

    name: str
    max_replicas: int
    cpus: float = 0.0
    gpus: float = 0.0
    memory: int = 0  # bytes; 0: unknown

    def pod(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus, "memory": float(self.memory)}


@dataclass(frozen=True)
class NodeResources:
    """An alive Ray node: whether it is the head, and its total resources (CPU, GPU, memory)."""

    head: bool
    resources: Mapping[str, float]


@dataclass
class Capacity:
    """The most the cluster can ever have (CPU, GPU), and the shapes a single worker may land on."""

    total: dict[str, float]
    shapes: list[dict[str, float]] = field(default_factory=list)  # empty: unknown (live nodes only)

    def largest(self, name: str) -> float:
        return max((shape.get(name, 0.0) for shape in self.shapes), default=0.0)

    def fits_one(self, need: Mapping[str, float]) -> bool:
        """Whether one node or pod has all of need at once (memory 0 on either side: not compared)."""
        if not self.shapes:
            return True
        return any(
            all(_covers(shape, name, amount) for name, amount in need.items()) for shape in self.shapes
        )


def _covers(shape: Mapping[str, float], name: str, amount: float) -> bool:
    if name == "memory" and (not amount or not shape.get("memory")):
        return True
    return amount <= shape.get(name, 0.0) + 1e-9


def parse_worker_groups(value: str) -> tuple[WorkerGroup, ...]:
    """The groups a SLMOPS_RAY_WORKER_GROUPS value describes; ValueError naming the variable when malformed."""
    if not value.strip():
        return ()
    try:
        items = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{_VAR} is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ValueError(f"{_VAR} must be a JSON list of worker groups, not {type(items).__name__}")
    return tuple(_group(item, i) for i, item in enumerate(items))


def _group(item: Any, index: int) -> WorkerGroup:
    where = f"{_VAR}[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object with name, maxReplicas, cpus, gpus and memory")
    unknown = sorted(set(item) - {"name", "maxReplicas", "cpus", "gpus", "memory"})
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name must be a non-empty string")

    def number(key: str, integer: bool = False) -> float:
        value = item.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
            raise ValueError(f"{where}.{key} must be a number >= 0, not {value!r}")
        if integer and int(value) != value:
            raise ValueError(f"{where}.{key} must be a whole number, not {value!r}")
        return value

    if "maxReplicas" not in item:
        raise ValueError(f"{where}.maxReplicas is required")
    return WorkerGroup(name, int(number("maxReplicas", True)), float(number("cpus")), float(number("gpus")),
                       int(number("memory", True)))  # fmt: skip


def worker_groups(override: str | None = None) -> tuple[WorkerGroup, ...]:
    """The worker groups the settings describe (SLMOPS_RAY_WORKER_GROUPS)."""
    return parse_worker_groups(settings.get("ray_worker_groups", override))


def capacity(nodes: Sequence[NodeResources], groups: Sequence[WorkerGroup]) -> Capacity:
    """What the cluster can ever have, from its alive nodes and the groups the autoscaler may scale."""
    live = {name: sum(float(n.resources.get(name, 0.0)) for n in nodes) for name in TOTALS}
    if not groups:
        return Capacity(total=live)
    head = {name: sum(float(n.resources.get(name, 0.0)) for n in nodes if n.head) for name in TOTALS}
    scaled = {name: head[name] + sum(g.max_replicas * g.pod()[name] for g in groups) for name in TOTALS}
    total = {name: max(live[name], scaled[name]) for name in TOTALS}
    shapes = [dict(n.resources) for n in nodes] + [g.pod() for g in groups if g.max_replicas > 0]
    return Capacity(total=total, shapes=shapes)


def cluster_capacity(ray: Any) -> Capacity:
    """The capacity of the cluster behind a RayJobs client (Unavailable when Ray cannot be asked).

    Without worker groups only the live totals are asked for (`cluster_resources`);
    with them, each alive node (`node_resources`), to tell the head from the workers.
    """
    groups = getattr(ray, "worker_groups", ())
    if not groups:
        return Capacity(total={name: float(v) for name, v in ray.cluster_resources().items()})
    return capacity(ray.node_resources(), groups)
