"""Runs a pipeline: each stage through its own service over gRPC, outputs wired onward.

Runs inside the pipeline service as an asyncio task per run; the run record
holds each stage's job id and state, so `Get` shows where a run is and a
cancelled run cancels the stage job in flight. A runner made with the stages
a run recorded (`PipelineRunner(..., recorded=...)`) resumes it: finished
stages keep their outputs and the stage in flight is re-attached by its job
id (a deployment by its name), never created a second time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from slmops.api.v1 import (
    common_pb2,
    conversion_pb2,
    evaluation_pb2,
    serving_pb2,
    synthesis_pb2,
    training_pb2,
)
from slmops.core import clients as client
from slmops.core.jobstore import JobStore
from slmops.pipeline.definition import Definition

log = logging.getLogger(__name__)

_JOB_STAGES = {
    "synthesis": ("SynthesisJob", synthesis_pb2.CreateSynthesisJobRequest),
    "training": ("TrainingJob", training_pb2.CreateTrainingJobRequest),
    "conversion": ("ConversionJob", conversion_pb2.CreateConversionJobRequest),
    "evaluation": ("EvaluationJob", evaluation_pb2.CreateEvaluationJobRequest),
}


class StageFailed(Exception):
    pass


class PipelineRunner:
    def __init__(self, store: JobStore, run_id: str, definition: Definition,
                 recorded: list[dict[str, Any]] | None = None):  # fmt: skip
        self.store, self.run_id, self.definition = store, run_id, definition
        self.stages: list[dict[str, Any]] = []
        self.recorded = {stage["name"]: stage for stage in recorded or []}
        self.current_job: tuple[str, str] | None = None

    def _save(self, **changes: Any) -> None:
        self.store.update(self.run_id, result={"stages": self.stages}, **changes)

    def _event(self, fraction: float, message: str) -> None:
        self.store.add_event(self.run_id, "RUNNING", fraction, message)
        self._save(fraction=fraction, message=message)

    async def run(self) -> None:
        order = self.definition.order()
        outputs: dict[str, str] = {}
        self.store.update(self.run_id, state="RUNNING")
        try:
            for index, stage in enumerate(order):
                spec = self.definition.stages[stage]
                self._wire(stage, spec, outputs)
                before = self.recorded.get(stage, {})
                if before.get("state") == "SUCCEEDED" and before.get("output"):
                    self.stages.append(dict(before))
                    outputs[stage] = before["output"]
                    self._event((index + 1) / len(order), f"{stage}: done before the restart -> {outputs[stage]}")
                    continue
                job_id = before.get("job_id", "") if before.get("state") == "RUNNING" else ""
                self.stages.append({"name": stage, "job_id": job_id, "state": "RUNNING", "output": "", "reason": ""})
                self._event(index / len(order), f"{stage}: {'re-attached to ' + job_id if job_id else 'started'}")
                outputs[stage] = await self._run_stage(stage, spec, index, len(order), job_id)
                self.stages[-1].update(state="SUCCEEDED", output=outputs[stage])
                self._event((index + 1) / len(order), f"{stage}: done -> {outputs[stage]}")
        except StageFailed as exc:
            self.stages[-1].update(state="FAILED", reason=str(exc))
            self._save(state="FAILED", reason=str(exc), message=str(exc))
            self.store.add_event(self.run_id, "FAILED", 0.0, str(exc))
            return
        last = outputs[order[-1]] if order else ""
        self._save(state="SUCCEEDED", fraction=1.0, message="done", output_uri=last)
        self.store.add_event(self.run_id, "SUCCEEDED", 1.0, "done")

    def _wire(self, stage: str, spec: Any, outputs: dict[str, str]) -> None:
        if stage == "training" and not spec.dataset_uri:
            spec.dataset_uri = outputs["synthesis"]
        if stage == "conversion" and not spec.model_uri:
            spec.model_uri = outputs["training"]
        if stage == "serving" and not spec.model_uri:
            spec.model_uri = outputs.get("conversion") or outputs["training"]
        if stage == "evaluation":
            if not spec.dataset_uri:
                spec.dataset_uri = outputs["synthesis"]
            if "serving" in outputs:
                name = self.definition.stages["serving"].name
                if all(t.name != name for t in spec.targets):
                    spec.targets.append(evaluation_pb2.EvalTarget(
                        name=name, deployment=name, model_uri=self.definition.stages["serving"].model_uri))

    async def _run_stage(self, stage: str, spec: Any, index: int, total: int, job_id: str = "") -> str:
        """Run the stage's job (or follow job_id, already created) to its end; its output URI."""
        if stage == "serving":
            return await asyncio.to_thread(self._deploy, spec)
        noun, request_cls = _JOB_STAGES[stage]
        stub = client.stub(stage)
        if not job_id:
            try:
                job = await asyncio.to_thread(client.call, getattr(stub, f"Create{noun}"), request_cls(spec=spec))
            except grpc.RpcError as exc:
                raise StageFailed(f"{stage}: {exc.code().name}: {exc.details()}") from None
            job_id = job.id
        self.stages[-1]["job_id"] = job_id
        self.current_job = (stage, job_id)
        self._save()
        while True:
            try:
                job = await asyncio.to_thread(client.call, getattr(stub, f"Get{noun}"), common_pb2.GetJobRequest(id=job_id))
            except grpc.RpcError as exc:
                raise StageFailed(f"{stage}: job {job_id}: {exc.code().name}: {exc.details()}") from None
            if job.status.state in (common_pb2.SUCCEEDED, common_pb2.FAILED, common_pb2.CANCELLED):
                break
            self._save(fraction=(index + job.status.fraction) / total, message=f"{stage}: {job.status.message}")
            await asyncio.sleep(1.0)
        self.current_job = None
        if job.status.state != common_pb2.SUCCEEDED:
            raise StageFailed(f"{stage} job {job.id} {common_pb2.JobState.Name(job.status.state)}: {job.status.reason}")
        return job.status.output.uri

    def _deploy(self, spec: serving_pb2.DeploymentSpec) -> str:
        stub = client.stub("serving")
        try:
            try:
                client.call(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest(spec=spec))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS or spec.name not in self.recorded_names():
                    raise
            for _ in stub.WatchDeployment(serving_pb2.WatchDeploymentRequest(name=spec.name)):
                pass
            deployment = client.call(stub.GetDeployment, serving_pb2.GetDeploymentRequest(name=spec.name))
        except grpc.RpcError as exc:
            raise StageFailed(f"serving: {exc.code().name}: {exc.details()}") from None
        if deployment.state != serving_pb2.DEPLOYMENT_READY:
            raise StageFailed(f"serving: deployment {spec.name} {deployment.reason}")
        return deployment.artifact.uri

    def recorded_names(self) -> set[str]:
        """Deployments a resumed run had started: an existing one of those names is the run's own."""
        serving = self.recorded.get("serving", {})
        return {self.definition.stages["serving"].name} if serving.get("state") == "RUNNING" else set()

    def cancel_current(self) -> None:
        if self.current_job:
            stage, job_id = self.current_job
            noun, _ = _JOB_STAGES[stage]
            try:
                client.call(getattr(client.stub(stage), f"Cancel{noun}"), common_pb2.CancelJobRequest(id=job_id))
            except grpc.RpcError as exc:
                log.warning("could not cancel %s job %s: %s", stage, job_id, exc.details())
