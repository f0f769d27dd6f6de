"""Whether the Ray cluster can ever run a training job's workers, asked before the job is recorded.

A job whose Ray Train workers together need more CPUs or GPUs than the whole
cluster has would wait in PENDING for ever; it is refused at Create instead
(FAILED_PRECONDITION). The job's driver reserves nothing, so only the workers
count. When the cluster cannot be asked, the request goes ahead.
"""

from __future__ import annotations

import logging
from typing import Any

from slmops.core.errors import Conflict, Unavailable
from slmops.training.spec import TrainingConfig

log = logging.getLogger(__name__)


def needs(config: TrainingConfig) -> dict[str, float]:
    """CPUs and GPUs all of a run's workers reserve at once (a search runs at least one trial)."""
    res = config.resources
    return {"CPU": res.num_workers * res.cpus_per_worker, "GPU": res.num_workers * res.gpus_per_worker}


def check_capacity(config: TrainingConfig, ray: Any) -> None:
    """Conflict naming spec.resources when the cluster's totals fall short of what the workers need."""
    try:
        total = ray.cluster_resources()
    except Unavailable as exc:
        log.warning("not checking the job's resources against the cluster: %s", exc)
        return
    res = config.resources
    per_worker = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
    short = [
        f"{need:g} {name}s ({res.num_workers} workers x {per_worker[name]:g}) against {total.get(name, 0.0):g} in the cluster"
        for name, need in needs(config).items()
        if need > total.get(name, 0.0) + 1e-9
    ]
    if short:
        raise Conflict(
            "spec.resources asks for more than the Ray cluster can ever provide: " + "; ".join(short)
        )
