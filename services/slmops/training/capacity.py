"""Whether the Ray cluster can ever run a training job's workers, asked before the job is recorded.

A job that could never be placed would wait in PENDING for ever; it is refused
at Create instead (FAILED_PRECONDITION), naming the field to change:

- all of a run's workers (and the job's driver, when drivers reserve CPUs)
  need more CPUs or GPUs than the cluster can ever have: its live nodes, or
  its head plus every worker group at its most replicas, whichever is larger
  (core/ray_capacity.py);
- one worker needs more than any single node or worker group pod has (known
  only when the worker groups are configured).

When the cluster cannot be asked, the request goes ahead.
"""

from __future__ import annotations

import logging
from typing import Any

from slmops.core.errors import Conflict, Unavailable
from slmops.core.ray_capacity import Capacity, cluster_capacity
from slmops.training.config import TrainingConfig

log = logging.getLogger(__name__)

_FIELDS = {"CPU": "cpus_per_worker", "GPU": "gpus_per_worker", "memory": "memory_bytes"}


def needs(config: TrainingConfig) -> dict[str, float]:
    """CPUs and GPUs all of a run's workers reserve at once (a search runs at least one trial)."""
    res = config.resources
    return {"CPU": res.num_workers * res.cpus_per_worker, "GPU": res.num_workers * res.gpus_per_worker}


def check_capacity(config: TrainingConfig, ray: Any) -> None:
    """Conflict naming spec.resources when the cluster can never give what the job needs."""
    try:
        cap = cluster_capacity(ray)
    except Unavailable as exc:
        log.warning("not checking the job's resources against the cluster: %s", exc)
        return
    problems = _one_worker(config, cap) + _all_workers(config, cap, _driver_cpus(ray))
    if problems:
        raise Conflict("; ".join(problems))


def _driver_cpus(ray: Any) -> float:
    entrypoint = getattr(ray, "entrypoint", None)
    return float(getattr(entrypoint, "cpus", 0.0) or 0.0)


def _all_workers(config: TrainingConfig, cap: Capacity, driver_cpus: float) -> list[str]:
    res = config.resources
    per_worker = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
    where = "the cluster at its largest" if cap.shapes else "the cluster"
    short = []
    for name, need in needs(config).items():
        driver = driver_cpus if name == "CPU" else 0.0
        total = cap.total.get(name, 0.0)
        if need + driver > total + 1e-9:
            plus = f" + {driver:g} for the job's driver" if driver else ""
            short.append(f"{need + driver:g} {name}s ({res.num_workers} workers x {per_worker[name]:g}{plus}) "
                         f"against {total:g} in {where}")  # fmt: skip
    if not short:
        return []
    return ["spec.resources asks for more than the Ray cluster can ever provide: " + "; ".join(short)]


def _one_worker(config: TrainingConfig, cap: Capacity) -> list[str]:
    """A worker larger than every node and pod can never be placed, however many nodes come up."""
    res = config.resources
    worker = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker, "memory": float(res.memory_bytes)}
    if cap.fits_one(worker):
        return []
    too_big = [name for name, amount in worker.items() if not cap.fits_one({name: amount})]
    if not too_big:  # each fits somewhere, never all in one place
        asked = ", ".join(f"{_FIELDS[n]}={worker[n]:g}" for n in ("CPU", "GPU", "memory") if worker[n])
        return [f"spec.resources: no Ray node or worker group pod has {asked} at once, so a worker can never "
                "be placed; ask for what one pod of a group has"]  # fmt: skip
    return [f"spec.resources.{_FIELDS[name]}: one worker needs {_amount(name, worker[name])} and the largest Ray "
            f"node or worker group pod has {_amount(name, cap.largest(name), what=False)}, so it can never be "
            "placed; use more, smaller workers" for name in too_big]  # fmt: skip


def _amount(name: str, value: float, what: bool = True) -> str:
    if name == "memory":
        return f"{value / 2**30:.4g} GiB" + (" of memory" if what else "")
    return f"{value:g}" + (f" {name}s" if what else "")
