"""Kubernetes for the kserve backend's tests: kmock's emulator, and what KServe's
controller would write.

The emulator (`kmock.KubernetesEmulator`) keeps the objects that the official
Kubernetes client creates, patches and deletes, over real HTTP; it runs on its
own event loop in a thread because the client is synchronous. It does not run
KServe's controller: where a test needs a status, it patches the object's
`status` subresource through the API the way KServe's controller would.
"""

from __future__ import annotations

import asyncio
import threading

import kmock
from kubernetes import client as k8s

from slmops.serving.backends import Revision
from slmops.serving.backends.kserve import GROUP, PLURAL, VERSION

NS = "slmops"


class Emulator:
    """kmock's Kubernetes emulator served on a free local port from a background thread."""

    def __init__(self):
        self.url = ""
        self.emulator: kmock.KubernetesEmulator | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self):
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            # API discovery for kubectl, as KServe's CRD declares the resource.
            info = emulator.resources[f"{GROUP}/{VERSION}/{PLURAL}"]
            info.kind, info.singular, info.shortnames, info.namespaced = "InferenceService", "inferenceservice", \
                {"isvc"}, True  # fmt: skip
            info.verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), "the Kubernetes emulator did not start"
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def api_client(host: str) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    configuration.host = host
    return k8s.ApiClient(configuration)


def stored_object(api: k8s.ApiClient, name: str) -> dict:
    return k8s.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def report_status(api: k8s.ApiClient, name: str, status: dict) -> None:
    """What KServe's controller does: write the InferenceService's status subresource."""
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, name, {"status": status}
    )


def student_revision(number: int, percent: int = 100) -> Revision:
    """A revision of support-student, its model in the store under rev-<number>."""
    return Revision(
        number,
        f"artifact://support-student/rev-{number}",
        f"s3://slmops-artifacts/prod/onnx-model/rev-{number:04d}",
        percent,
    )


def knative_status(
    api: k8s.ApiClient,
    name: str,
    latest: int,
    split: dict[int, int],
    *,
    rolled_out: int | None = None,
    ready: bool = True,
) -> None:
    """What KServe's controller writes in Knative mode with tag routing (the emulator runs no controller).

    `split` maps our revision numbers to percents; the latest revision's target is tagged "latest", the
    rolled-out one's "prev" (only while a canary runs), each with its own URL. Until `latest` is ready,
    Knative's "latest" target still points at the revision before it.
    """
    rolled_out = rolled_out if rolled_out is not None else min(split)
    ready_rev = latest if ready else rolled_out
    traffic = []
    for number, percent in split.items():
        is_latest = number == latest
        target = {
            "revisionName": f"{name}-predictor-{(ready_rev if is_latest else number):05d}",
            "percent": percent,
            "latestRevision": is_latest,
            "tag": "latest" if is_latest else "prev",
        }
        target["url"] = f"http://{target['tag']}-{name}-predictor.{NS}.example.com"
        traffic.append(target)
    report_status(api, name, {
        "url": f"http://{name}.{NS}.example.com",
        "address": {"url": f"http://{name}.{NS}.svc.cluster.local"},
        "conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}],
        "components": {"predictor": {
            "address": {"url": f"http://{name}-predictor.{NS}.svc.cluster.local"},
            "latestCreatedRevision": f"{name}-predictor-{latest:05d}",
            "latestReadyRevision": f"{name}-predictor-{ready_rev:05d}",
            "traffic": traffic,
        }},
    })  # fmt: skip


def foreign_service(api: k8s.ApiClient, name: str, labels: dict[str, str] | None = None) -> dict:
    """An InferenceService someone else made (kubectl, another release): no slmops owner label."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {"team": "search"}},
        "spec": {
            "predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://theirs/model"}}
        },
    }
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    return stored_object(api, name)
