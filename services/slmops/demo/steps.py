"""The demo's calls to the services, one function per stage, each printing its progress."""

from __future__ import annotations

import sys
import time
from typing import Any

from slmops.api.v1 import (
    common_pb2,
    conversion_pb2,
    evaluation_pb2,
    serving_pb2,
    synthesis_pb2,
    training_pb2,
)
from slmops.cli import client
from slmops.cli.progress import watch_job


class DemoFailed(RuntimeError):
    pass


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _job(service: str, noun: str, request: Any, label: str) -> Any:
    stub = client.stub(service)
    job = client.call(getattr(stub, f"Create{noun}"), request)
    started = time.time()
    job = watch_job(label, getattr(stub, f"Watch{noun}"), getattr(stub, f"Get{noun}"), job.id, out=say)
    if job.status.state != common_pb2.SUCCEEDED:
        raise DemoFailed(
            f"{label} job {job.id} {common_pb2.JobState.Name(job.status.state)}: {job.status.reason}"
        )
    say(f"  {label}: done in {time.time() - started:.0f}s -> {job.status.output.uri}")
    return job


def _hparams(values: dict[str, Any]) -> training_pb2.Hyperparameters:
    return training_pb2.Hyperparameters(**values)


def _resources(values: dict[str, Any]) -> common_pb2.ResourceRequest:
    return common_pb2.ResourceRequest(**values)


def train(
    label: str,
    method: str,
    base: str,
    dataset_uri: str,
    hparams: dict[str, Any],
    resources: dict[str, Any],
    *,
    from_config: bool = False,
    overrides: dict[str, str] | None = None,
) -> Any:
    spec = training_pb2.TrainingSpec(
        method=training_pb2.TrainingMethod.Value(method),
        base=training_pb2.ModelInit(model=base, from_config=from_config, config_overrides=overrides or {}),
        dataset_uri=dataset_uri,
        hyperparameters=_hparams(hparams),
        resources=_resources(resources),
        labels={"app": "slmops-demo", "model": label},
    )
    return _job("training", "TrainingJob", training_pb2.CreateTrainingJobRequest(spec=spec), label)


def synthesize(
    prompts_uri: str,
    teacher_url: str,
    teacher_model: str,
    max_tokens: int,
    price_per_million: tuple[float, float] = (0.0, 0.0),
    drop_truncated: bool = False,
) -> Any:
    """A synthesis job; prices (prompt, completion) per million tokens give its cost. With
    drop_truncated, answers cut at max_tokens are filtered out too (besides empty answers and refusals)."""
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=prompts_uri,
        endpoint=synthesis_pb2.TeacherEndpoint(
            base_url=teacher_url,
            model=teacher_model,
            max_concurrency=4,
            price_prompt_per_million=price_per_million[0],
            price_completion_per_million=price_per_million[1],
        ),
        filters=synthesis_pb2.AnswerFilters(drop_truncated=drop_truncated),
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        validation_fraction=0.1,
        num_shards=10,  # progress every tenth of the prompts
        labels={"app": "slmops-demo"},
    )
    return _job("synthesis", "SynthesisJob", synthesis_pb2.CreateSynthesisJobRequest(spec=spec), "synthesis")


def convert(model_uri: str, extra_options: dict[str, str] | None = None) -> Any:
    spec = conversion_pb2.ConversionSpec(
        model_uri=model_uri,
        precision=conversion_pb2.INT4,
        execution_provider=conversion_pb2.CPU,
        extra_options=extra_options or {},
        labels={"app": "slmops-demo"},
    )
    return _job(
        "conversion", "ConversionJob", conversion_pb2.CreateConversionJobRequest(spec=spec), "conversion"
    )


def _settled(name: str, since: float) -> serving_pb2.Deployment:
    """Follow a deployment's rollout (events from `since` on) until it settles; READY or DemoFailed."""
    stub = client.stub("serving")
    for event in stub.WatchDeployment(serving_pb2.WatchDeploymentRequest(name=name)):
        if event.time.ToSeconds() >= since - 1:
            say(f"  deploy      {name}: {event.message}")
    deployment = client.call(stub.GetDeployment, serving_pb2.GetDeploymentRequest(name=name))
    if deployment.state != serving_pb2.DEPLOYMENT_READY:
        raise DemoFailed(f"deployment {name} failed: {deployment.reason}")
    return deployment


def deploy(name: str, model_uri: str) -> serving_pb2.Deployment:
    stub, since = client.stub("serving"), time.time()
    spec = serving_pb2.DeploymentSpec(name=name, model_uri=model_uri, labels={"app": "slmops-demo"})
    client.call(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest(spec=spec))
    return _settled(name, since)


def canary(name: str, model_uri: str, percent: int) -> tuple[serving_pb2.Deployment, serving_pb2.Revision]:
    """A new revision of `name` with `percent` of its traffic; the deployment and the canary revision."""
    request = serving_pb2.UpdateDeploymentRequest(
        name=name, model_uri=model_uri, canary_traffic_percent=percent
    )
    since = time.time()
    client.call(client.stub("serving").UpdateDeployment, request)
    deployment = _settled(name, since)
    revision = revision_of(deployment, deployment.latest_revision)
    if revision.state != serving_pb2.DEPLOYMENT_READY:
        raise DemoFailed(f"the canary of {name} failed: {revision.reason}")
    return deployment, revision


def revision_of(deployment: serving_pb2.Deployment, number: int) -> serving_pb2.Revision:
    return next(r for r in deployment.revisions if r.number == number)


def promote(name: str, report_uri: str) -> serving_pb2.Deployment:
    request = serving_pb2.PromoteDeploymentRequest(name=name, evaluation_report_uri=report_uri)
    since = time.time()
    client.call(client.stub("serving").PromoteDeployment, request)
    return _settled(name, since)


def rollback(name: str) -> serving_pb2.Deployment:
    since = time.time()
    client.call(client.stub("serving").RollbackDeployment, serving_pb2.RollbackDeploymentRequest(name=name))
    return _settled(name, since)


def target(
    name: str, deployment: str = "", revision: serving_pb2.Revision | None = None, model: str = ""
) -> evaluation_pb2.EvalTarget:
    """An evaluation target: a deployment by name, or one revision of it by its own URL."""
    if revision is None:
        return evaluation_pb2.EvalTarget(name=name, deployment=deployment)
    return evaluation_pb2.EvalTarget(name=name, base_url=f"{revision.url}/openai/v1", model=model,
                                     model_uri=revision.model_uri)  # fmt: skip


def evaluate(
    dataset_uri: str,
    targets: list[evaluation_pb2.EvalTarget],
    reference: str,
    candidate: str,
    max_tokens: int,
    min_retention: float,
) -> Any:
    spec = evaluation_pb2.EvaluationSpec(
        targets=targets,
        dataset_uri=dataset_uri,
        reference=reference,
        metric="exact_match",
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        gate=evaluation_pb2.QualityGate(candidate=candidate, min_retention=min_retention),
        labels={"app": "slmops-demo"},
    )
    return _job(
        "evaluation", "EvaluationJob", evaluation_pb2.CreateEvaluationJobRequest(spec=spec), "evaluation"
    )
