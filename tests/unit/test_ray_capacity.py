"""Capacity prechecks count what the autoscaler may add (SLMOPS_RAY_WORKER_GROUPS) and refuse what never fits.

A fake cluster stands in for Ray's node list: a KubeRay head with no CPUs, and
worker groups that may have scaled down to nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from slmops.conversion.config import ConversionConfig
from slmops.conversion.config import Resources as ConversionResources
from slmops.conversion.service import check_gpu
from slmops.core.errors import Conflict, Unavailable
from slmops.core.jobs.ray_jobs import EntrypointResources, RayJobs
from slmops.core.ray_capacity import (
    NodeResources,
    WorkerGroup,
    capacity,
    cluster_capacity,
    parse_worker_groups,
    worker_groups,
)
from slmops.training.capacity import check_capacity
from slmops.training.config import Resources, TrainingConfig
from tests.unit._fakes import RAY_VERSION, JsonHandler, serving

GIB = 1024**3
HEAD = NodeResources(True, {"CPU": 0.0, "GPU": 0.0, "memory": 8 * GIB})
CPU_GROUP = WorkerGroup("cpu", max_replicas=4, cpus=4, gpus=0, memory=16 * GIB)
GPU_GROUP = WorkerGroup("gpu", max_replicas=2, cpus=8, gpus=1, memory=32 * GIB)


class Cluster:
    """What the prechecks read of RayJobs: alive nodes, their totals, the groups, the drivers' CPUs."""

    def __init__(self, nodes, groups=(), driver_cpus: float = 0.0):
        self.nodes, self.worker_groups = nodes, tuple(groups)
        self.entrypoint = EntrypointResources(driver_cpus, 0)
        self.asked_nodes = 0

    def node_resources(self):
        self.asked_nodes += 1
        if self.nodes is None:
            raise Unavailable("Ray cluster resources at http://nowhere:8265 unavailable")
        return self.nodes

    def cluster_resources(self):
        nodes = self.node_resources()
        return {name: sum(n.resources.get(name, 0.0) for n in nodes) for name in ("CPU", "GPU")}


def training(num_workers=1, cpus=1.0, gpus=0.0, memory=0) -> TrainingConfig:
    resources = Resources(
        num_workers=num_workers, cpus_per_worker=cpus, gpus_per_worker=gpus, memory_bytes=memory
    )
    return TrainingConfig.model_construct(resources=resources)


def conversion(gpus: float) -> ConversionConfig:
    return ConversionConfig.model_construct(
        execution_provider="cuda", resources=ConversionResources(num_gpus=gpus)
    )


# -- the setting ------------------------------------------------------------------


def test_worker_groups_are_read_from_the_setting(monkeypatch):
    value = [{"name": "cpu", "maxReplicas": 4, "cpus": 4, "gpus": 0, "memory": 16 * GIB},
             {"name": "gpu", "maxReplicas": 2, "cpus": 8, "gpus": 1, "memory": 32 * GIB}]  # fmt: skip
    monkeypatch.setenv("SLMOPS_RAY_WORKER_GROUPS", json.dumps(value))
    assert worker_groups() == (CPU_GROUP, GPU_GROUP)
    assert RayJobs("http://127.0.0.1:9").worker_groups == (CPU_GROUP, GPU_GROUP)
    monkeypatch.setenv("SLMOPS_RAY_WORKER_GROUPS", "")
    assert worker_groups() == () and RayJobs("http://127.0.0.1:9").worker_groups == ()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("[{", "not valid JSON"),
        ('{"name": "cpu"}', "must be a JSON list"),
        ('[{"name": "cpu", "cpus": 4}]', r"\[0\].maxReplicas is required"),
        ('[{"name": "", "maxReplicas": 1}]', r"\[0\].name"),
        ('[{"name": "cpu", "maxReplicas": -1}]', r"\[0\].maxReplicas must be a number >= 0"),
        ('[{"name": "cpu", "maxReplicas": 1.5}]', r"\[0\].maxReplicas must be a whole number"),
        ('[{"name": "cpu", "maxReplicas": 1, "cpus": "4"}]', r"\[0\].cpus must be a number"),
        ('[{"name": "cpu", "maxReplicas": 1, "gpu": 1}]', "unknown keys"),
        ('[{"name": "cpu", "maxReplicas": 1}, 3]', r"\[1\] must be an object"),
    ],
)
def test_a_malformed_value_is_a_start_up_error_naming_the_variable(monkeypatch, value, says):
    with pytest.raises(ValueError, match=says) as info:
        parse_worker_groups(value)
    assert "SLMOPS_RAY_WORKER_GROUPS" in str(info.value)
    monkeypatch.setenv("SLMOPS_RAY_WORKER_GROUPS", value)
    with pytest.raises(ValueError, match="SLMOPS_RAY_WORKER_GROUPS"):
        RayJobs("http://127.0.0.1:9")  # made when a service starts, never in the middle of a request


# -- what the cluster can ever have -------------------------------------------------


def test_capacity_counts_the_head_and_every_group_at_its_most_replicas():
    cap = capacity([HEAD], [CPU_GROUP, GPU_GROUP])
    assert cap.total == {"CPU": 4 * 4 + 2 * 8, "GPU": 2.0}
    # Live nodes beyond what the groups describe (added by hand) still count.
    big = NodeResources(False, {"CPU": 64.0, "GPU": 0.0, "memory": 0.0})
    assert capacity([HEAD, big], [CPU_GROUP]).total == {"CPU": 64.0, "GPU": 0.0}
    # Without groups only the live nodes count, and no shape is known.
    live = capacity([HEAD, NodeResources(False, {"CPU": 2.0, "GPU": 0.0})], [])
    assert live.total == {"CPU": 2.0, "GPU": 0.0} and live.shapes == []


class _Nodes(JsonHandler):
    """Ray 2.60's dashboard as far as the node list goes: the version probe and GET /api/v0/nodes."""

    nodes: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        from ray.util.state.common import ListApiResponse

        if self.path == "/api/version":
            body = RAY_VERSION
        else:
            listed = ListApiResponse(total=len(self.nodes), num_after_truncation=len(self.nodes),
                                     num_filtered=len(self.nodes), result=self.nodes)  # fmt: skip
            body = {"result": True, "msg": "", "data": {"result": asdict(listed)}}
        self.reply(body)


def test_a_real_client_counts_the_head_and_the_groups_not_the_live_workers_twice():
    _Nodes.nodes = [
        {"node_id": "h", "state": "ALIVE", "is_head_node": True, "resources_total": {"memory": 8.0 * GIB}},
        {"node_id": "w", "state": "ALIVE", "is_head_node": False,
         "resources_total": {"CPU": 4.0, "memory": 16.0 * GIB}},
        {"node_id": "d", "state": "DEAD", "is_head_node": False, "resources_total": {"CPU": 99.0, "GPU": 9.0}},
    ]  # fmt: skip
    with serving(_Nodes) as address:
        ray = RayJobs(address, groups=(CPU_GROUP, GPU_GROUP))
        assert [n.head for n in ray.node_resources()] == [True, False]
        assert ray.cluster_resources() == {"CPU": 4.0, "GPU": 0.0}  # live: alive nodes only
        assert cluster_capacity(ray).total == {"CPU": 32.0, "GPU": 2.0}  # head + 4 x 4 + 2 x 8, not + live 4
        assert cluster_capacity(RayJobs(address, groups=())).total == {"CPU": 4.0, "GPU": 0.0}


# -- training ----------------------------------------------------------------------


def test_a_gpu_job_fits_a_gpu_group_scaled_to_zero():
    cluster = Cluster([HEAD], [CPU_GROUP, GPU_GROUP])
    check_capacity(training(num_workers=2, cpus=4, gpus=1), cluster)
    check_capacity(training(num_workers=8, cpus=4), cluster)  # the CPU group idled down to zero pods
    assert cluster.asked_nodes == 2
    # Without the groups, the same cluster (a head with nothing) refuses both, as before.
    with pytest.raises(Conflict, match="2 GPUs .* against 0 in the cluster"):
        check_capacity(training(num_workers=2, cpus=4, gpus=1), Cluster([HEAD]))


def test_more_in_total_than_every_group_can_give_is_refused():
    with pytest.raises(Conflict) as info:
        check_capacity(training(num_workers=3, cpus=4, gpus=1), Cluster([HEAD], [CPU_GROUP, GPU_GROUP]))
    assert "spec.resources asks for more than the Ray cluster can ever provide" in str(info.value)
    assert "3 GPUs (3 workers x 1) against 2 in the cluster at its largest" in str(info.value)
    assert "CPUs" not in str(info.value)  # 12 CPUs of 32 fit


def test_the_drivers_cpu_counts_with_the_workers():
    cluster = Cluster([HEAD], [CPU_GROUP], driver_cpus=1)
    check_capacity(training(num_workers=3, cpus=4), cluster)
    with pytest.raises(Conflict, match=r"17 CPUs \(4 workers x 4 \+ 1 for the job's driver\) against 16"):
        check_capacity(training(num_workers=4, cpus=4), cluster)


@pytest.mark.parametrize(
    ("job", "field", "largest"),
    [
        (training(num_workers=1, cpus=12), "spec.resources.cpus_per_worker", "has 8"),
        (training(num_workers=1, cpus=1, gpus=2), "spec.resources.gpus_per_worker", "has 1"),
        (training(num_workers=1, cpus=1, memory=64 * GIB), "spec.resources.memory_bytes", "has 32 GiB"),
    ],
)
def test_one_worker_larger_than_any_pod_is_refused_naming_its_field(job, field, largest):
    with pytest.raises(Conflict) as info:
        check_capacity(job, Cluster([HEAD], [CPU_GROUP, GPU_GROUP]))
    assert str(info.value).startswith(field) and largest in str(info.value)
    assert "can never be placed" in str(info.value)


def test_a_worker_whose_resources_only_fit_apart_is_refused():
    # 24 GiB fits a CPU pod, a GPU fits a GPU pod, but no pod has both.
    groups = [WorkerGroup("cpu", 4, cpus=4, gpus=0, memory=32 * GIB), WorkerGroup("gpu", 2, cpus=8, gpus=1,
                                                                                  memory=16 * GIB)]  # fmt: skip
    with pytest.raises(Conflict, match="spec.resources: no Ray node or worker group pod has .* at once"):
        check_capacity(training(num_workers=1, cpus=2, gpus=1, memory=24 * GIB), Cluster([HEAD], groups))
    check_capacity(training(num_workers=1, cpus=2, gpus=1, memory=16 * GIB), Cluster([HEAD], groups))


def test_a_pod_whose_memory_is_unknown_takes_any_memory():
    groups = [WorkerGroup("cpu", 4, cpus=4, gpus=0, memory=0)]
    check_capacity(training(num_workers=1, cpus=4, memory=512 * GIB), Cluster([], groups))


def test_a_cluster_that_cannot_be_asked_does_not_block():
    check_capacity(training(num_workers=64, cpus=64), Cluster(None, [CPU_GROUP]))


# -- conversion --------------------------------------------------------------------


def test_a_cuda_conversion_fits_a_gpu_group_scaled_to_zero():
    check_gpu(conversion(1), Cluster([HEAD], [CPU_GROUP, GPU_GROUP]))
    with pytest.raises(Conflict, match="the Ray cluster has 0"):
        check_gpu(conversion(1), Cluster([HEAD]))
    with pytest.raises(Conflict, match="the Ray cluster can have at most 0"):
        check_gpu(conversion(1), Cluster([HEAD], [CPU_GROUP]))


def test_a_cuda_conversion_needing_more_gpus_than_one_pod_has_is_refused():
    with pytest.raises(Conflict, match="spec.resources.num_gpus: .* needs 2 GPUs on one node .* has 1"):
        check_gpu(conversion(2), Cluster([HEAD], [CPU_GROUP, GPU_GROUP]))
