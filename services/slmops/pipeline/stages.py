"""What each kind of stage does: wire its references into its spec, then call its service.

Blocking gRPC calls, run by the runner in worker threads. Each function
returns an Outcome: the stage's output URI and the details later stages read
(a deployment's name, revision and URL; a gate's verdict).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message

from slmops.api.v1 import (
    common_pb2,
    conversion_pb2,
    evaluation_pb2,
    serving_pb2,
    synthesis_pb2,
    training_pb2,
)
from slmops.core import artifacts
from slmops.core import clients as client
from slmops.core.errors import InvalidSpec, Unavailable
from slmops.pipeline.definition import FIELD, Definition

JOBS: dict[str, tuple[str, str, type[Message]]] = {
    "synthesize": ("synthesis", "SynthesisJob", synthesis_pb2.CreateSynthesisJobRequest),
    "train": ("training", "TrainingJob", training_pb2.CreateTrainingJobRequest),
    "convert": ("conversion", "ConversionJob", conversion_pb2.CreateConversionJobRequest),
    "evaluate": ("evaluation", "EvaluationJob", evaluation_pb2.CreateEvaluationJobRequest),
}
TERMINAL = (common_pb2.SUCCEEDED, common_pb2.FAILED, common_pb2.CANCELLED)


class StageFailed(Exception):
    pass


@dataclass
class Outcome:
    output: str = ""
    detail: dict[str, str] = field(default_factory=dict)
    job_id: str = ""  # the stage service's job, or the deployment's name


def rpc_error(stage: str, exc: grpc.RpcError) -> StageFailed:
    return StageFailed(f"{stage}: {exc.code().name}: {exc.details()}")


# -- specs with their references filled ------------------------------------------------


def wired_spec(definition: Definition, name: str, done: dict[str, Outcome]) -> Message:
    """A copy of the stage's spec with every reference's output filled in."""
    stage = definition.stages[name]
    spec = type(definition.specs[name])()
    spec.CopyFrom(definition.specs[name])
    out = {ref: done[ref] for refs in definition.refs(name).values() for ref in refs if ref in done}
    if stage.kind == "synthesize":
        if stage.prompts in out:
            spec.prompts_uri = out[stage.prompts].output
        if stage.teacher in out:
            teacher = out[stage.teacher].detail
            spec.endpoint.base_url = f"{teacher['deployment_url']}/openai/v1"
            spec.endpoint.model = spec.endpoint.model or teacher["deployment"]
    elif stage.kind == "train":
        if stage.dataset in out:
            spec.dataset_uri = out[stage.dataset].output
        if stage.base in out:
            spec.base.model = out[stage.base].output
    elif stage.kind == "convert":
        if stage.model in out:
            spec.model_uri = out[stage.model].output
        spec.adapter_uris.extend(out[ref].output for ref in stage.adapters if ref in out)
    elif stage.kind == "deploy":
        if stage.model in out:
            spec.model_uri = out[stage.model].output
        for served, ref in stage.adapters.items():
            uri = out[ref].output if ref in out else ref
            spec.adapters.append(serving_pb2.AdapterRef(name=served, uri=uri))
        if stage.canary_of in out:
            spec.name = out[stage.canary_of].detail["deployment"]
    elif stage.kind == "evaluate":
        if stage.dataset in out:
            spec.dataset_uri = out[stage.dataset].output
        for target in stage.targets:
            evt = evaluation_pb2.EvalTarget(name=target.name, base_url=target.base_url, model=target.model,
                                            model_uri=target.model_uri, api_key_env=target.api_key_env,
                                            chat=target.chat)  # fmt: skip
            if target.deploy in out:
                served = out[target.deploy].detail
                evt.base_url = f"{served['url']}/openai/v1"
                evt.model = evt.model or served["deployment"]
                evt.model_uri = evt.model_uri or served["model_uri"]
            spec.targets.append(evt)
    return spec


def _problems(details: str) -> list[tuple[str, str]]:
    """(field, problem) pairs back from an INVALID_ARGUMENT's details ("spec.x: ...; spec.y: ...")."""
    pairs = []
    for part in details.split("; spec."):
        part = part if part.startswith("spec") else f"spec.{part}"
        where, sep, problem = part.partition(": ")
        pairs.append((where, problem) if sep and " " not in where else ("spec", part))
    return pairs


def validate_all(definition: Definition) -> None:
    """Every stage's spec checked by its own service (validate_only), before any stage runs.

    Fields that earlier stages fill are pending; problems are named by their path in the file."""
    problems: list[tuple[str, str]] = []
    for name in definition.order():
        stage = definition.stages[name]
        if stage.kind not in ("synthesize", "train", "convert", "deploy", "evaluate"):
            continue
        spec = wired_spec(definition, name, {})
        pending = definition.pending_fields(name)
        try:
            if stage.kind == "deploy":
                request = serving_pb2.CreateDeploymentRequest(
                    spec=spec, validate_only=True, pending_fields=pending
                )
                client.call(client.stub("serving").CreateDeployment, request)
            else:
                service, noun, request_cls = JOBS[stage.kind]
                request = request_cls(spec=spec, validate_only=True, pending_fields=pending)
                client.call(getattr(client.stub(service), f"Create{noun}"), request)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                problems += [
                    (f"{FIELD}.stages.{name}.{where}", problem) for where, problem in _problems(exc.details())
                ]
            elif exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # e.g. more than the cluster can run
                problems.append((f"{FIELD}.stages.{name}", exc.details()))
            else:
                raise Unavailable(
                    f"stage {name}: its service could not check it: {exc.code().name}: {exc.details()}"
                ) from None
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])


# -- running ----------------------------------------------------------------------------


def run_job(name: str, kind: str, spec: Message, job_id: str, on_job: Callable[[str], None],
            on_progress: Callable[[float, str], None]) -> tuple[Outcome, Message]:  # fmt: skip
    """Create the stage's job (or follow job_id, already created) to its end."""
    service, noun, request_cls = JOBS[kind]
    stub = client.stub(service)
    if not job_id:
        try:
            job = client.call(getattr(stub, f"Create{noun}"), request_cls(spec=spec))
        except grpc.RpcError as exc:
            raise rpc_error(name, exc) from None
        job_id = job.id
    on_job(job_id)
    while True:
        try:
            job = client.call(getattr(stub, f"Get{noun}"), common_pb2.GetJobRequest(id=job_id))
        except grpc.RpcError as exc:
            raise StageFailed(f"{name}: job {job_id}: {exc.code().name}: {exc.details()}") from None
        if job.status.state in TERMINAL:
            break
        on_progress(job.status.fraction, job.status.message)
        time.sleep(1.0)
    if job.status.state != common_pb2.SUCCEEDED:
        state = common_pb2.JobState.Name(job.status.state)
        raise StageFailed(f"{name}: job {job.id} {state}: {job.status.reason}")
    return Outcome(output=job.status.output.uri, job_id=job.id), job


def cancel_job(kind: str, job_id: str) -> None:
    service, noun, _ = JOBS[kind]
    client.call(getattr(client.stub(service), f"Cancel{noun}"), common_pb2.CancelJobRequest(id=job_id))


def get_deployment(name: str) -> serving_pb2.Deployment | None:
    try:
        return client.call(client.stub("serving").GetDeployment, serving_pb2.GetDeploymentRequest(name=name))
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _settle(name: str) -> serving_pb2.Deployment:
    stub = client.stub("serving")
    for _ in stub.WatchDeployment(serving_pb2.WatchDeploymentRequest(name=name)):
        pass
    return client.call(stub.GetDeployment, serving_pb2.GetDeploymentRequest(name=name))


def _revision_outcome(deployment: serving_pb2.Deployment, number: int) -> Outcome:
    revision = next(r for r in deployment.revisions if r.number == number)
    return Outcome(output=revision.artifact.uri or revision.model_uri, job_id=deployment.name, detail={
        "deployment": deployment.name, "revision": str(number), "url": revision.url,
        "deployment_url": deployment.url, "model_uri": revision.model_uri,
    })  # fmt: skip


def _live(deployment: serving_pb2.Deployment | None) -> bool:
    return deployment is not None and deployment.state != serving_pb2.DEPLOYMENT_DELETED


def deploy(name: str, spec: serving_pb2.DeploymentSpec, canary_percent: int) -> Outcome:
    """A new deployment; or a new revision of an existing one: all traffic once ready (canary_percent 0),
    or a canary's share. A revision of this model already rolling out or ready is followed, not repeated
    (a resumed run)."""
    stub = client.stub("serving")
    try:
        current = get_deployment(spec.name)
        latest = None
        if _live(current):
            latest = next((r for r in current.revisions if r.number == current.latest_revision), None)
        reusable = latest is not None and latest.model_uri == artifacts.to_uri(spec.model_uri) and latest.state in (
            serving_pb2.DEPLOYMENT_READY, serving_pb2.DEPLOYMENT_DEPLOYING)  # fmt: skip
        if not _live(current):
            client.call(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest(spec=spec))
        elif not reusable:
            request = serving_pb2.UpdateDeploymentRequest(name=spec.name, model_uri=spec.model_uri,
                                                          adapters=spec.adapters,
                                                          canary_traffic_percent=canary_percent)  # fmt: skip
            client.call(stub.UpdateDeployment, request)
        deployment = _settle(spec.name)
    except grpc.RpcError as exc:
        raise rpc_error(name, exc) from None
    revision = next(r for r in deployment.revisions if r.number == deployment.latest_revision)
    if revision.state != serving_pb2.DEPLOYMENT_READY:
        raise StageFailed(
            f"{name}: revision {revision.number} of {spec.name} is "
            f"{serving_pb2.DeploymentState.Name(revision.state)}: {revision.reason or deployment.reason}"
        )
    return _revision_outcome(deployment, revision.number)


def still_deployed(outcome: Outcome) -> bool:
    """An earlier run's deploy stage can be reused while its deployment and revision exist."""
    deployment = get_deployment(outcome.detail.get("deployment", ""))
    if not _live(deployment):
        return False
    return any(str(r.number) == outcome.detail.get("revision") for r in deployment.revisions)


def gate(name: str, evaluation: Outcome) -> Outcome:
    """The verdict of the evaluation's report."""
    path = (
        artifacts.local_path(evaluation.output) / "report.json"
        if evaluation.output.startswith("file://")
        else None
    )
    try:
        if path is None:
            import fsspec

            with fsspec.open(f"{evaluation.output}/report.json", "r") as fh:
                verdict = json.load(fh)["verdict"]
        else:
            verdict = json.loads(path.read_text())["verdict"]
    except (OSError, ValueError, KeyError) as exc:
        raise StageFailed(f"{name}: cannot read the evaluation report {evaluation.output}: {exc}") from None
    if not verdict.get("evaluated"):
        raise StageFailed(f"{name}: the evaluation has no gate (set spec.gate in its evaluate stage)")
    return Outcome(output=evaluation.output, detail={
        "passed": "true" if verdict.get("passed") else "false",
        "reasons": "; ".join(verdict.get("reasons", [])),
    })  # fmt: skip


def rollout(name: str, canary: Outcome, verdict: Outcome) -> Outcome:
    """Promote the canary (the report's passing gate required) or roll it back."""
    stub, deployment = client.stub("serving"), canary.detail["deployment"]
    passed = verdict.detail.get("passed") == "true"
    try:
        if passed:
            request = serving_pb2.PromoteDeploymentRequest(
                name=deployment, evaluation_report_uri=verdict.output
            )
            client.call(stub.PromoteDeployment, request)
        else:
            client.call(stub.RollbackDeployment, serving_pb2.RollbackDeploymentRequest(name=deployment))
        settled = _settle(deployment)
    except grpc.RpcError as exc:
        raise rpc_error(name, exc) from None
    action = "promoted" if passed else "rolled back"
    serving = settled.serving_revision
    return Outcome(output=canary.output, detail={
        "deployment": deployment, "action": action, "serving_revision": str(serving),
        "canary_revision": canary.detail["revision"], "passed": verdict.detail["passed"],
    })  # fmt: skip


def evaluation_detail(job: evaluation_pb2.EvaluationJob) -> dict[str, str]:
    detail = {
        "passed": "true" if job.verdict.passed else "false",
        "evaluated": str(job.verdict.evaluated).lower(),
    }
    for result in job.results:
        detail[f"{result.name}.status"] = result.status or "ok"
        if result.status != "failed":
            detail[f"{result.name}.accuracy"] = f"{result.accuracy:.4f}"
    return detail
