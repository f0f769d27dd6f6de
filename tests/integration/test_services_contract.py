"""Every RPC of every service answers bad input with the right status code, naming the field.

Runs against the real local stack (separate processes, real Ray head).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmops.api.v1 import (
    common_pb2,
    conversion_pb2,
    evaluation_pb2,
    pipeline_pb2,
    serving_pb2,
    synthesis_pb2,
    training_pb2,
)
from slmops.cli import client
from slmops.cli import stack as local_stack

pytestmark = pytest.mark.integration

JOB_SERVICES = {
    "synthesis": ("SynthesisJob", synthesis_pb2.CreateSynthesisJobRequest, synthesis_pb2.SynthesisSpec),
    "training": ("TrainingJob", training_pb2.CreateTrainingJobRequest, training_pb2.TrainingSpec),
    "conversion": ("ConversionJob", conversion_pb2.CreateConversionJobRequest, conversion_pb2.ConversionSpec),
    "evaluation": ("EvaluationJob", evaluation_pb2.CreateEvaluationJobRequest, evaluation_pb2.EvaluationSpec),
    "pipeline": ("PipelineRun", pipeline_pb2.CreatePipelineRunRequest, pipeline_pb2.PipelineSpec),
}


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=30)
        if hasattr(result, "__iter__") and not hasattr(result, "DESCRIPTOR"):
            list(result)
    return info.value.code(), info.value.details()


def test_every_service_is_healthy_with_reflection(stack):
    for name, info in stack["services"].items():
        with grpc.insecure_channel(info["address"]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    rows = local_stack.status(stack["data_dir"])
    assert {r[0] for r in rows} == {*local_stack.SERVICES, "ray"}
    assert all(r[2] == "SERVING" for r in rows), rows


def test_the_local_stack_requires_its_token(stack):
    """`slmops up` turns the bearer token on: a call without it (or with another) is UNAUTHENTICATED."""
    assert stack["auth"]["token_file"].endswith("auth/token")
    for name, info in stack["services"].items():
        noun = JOB_SERVICES.get(name, ("Deployment",))[0]
        with grpc.insecure_channel(info["address"]) as channel:
            stub = client.STUBS[name](channel)
            method = getattr(stub, f"List{noun}s")
            request = (
                serving_pb2.ListDeploymentsRequest() if name == "serving" else common_pb2.ListJobsRequest()
            )
            code, details = _code(method, request)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (name, code)
            assert "bearer token" in details
    assert client.call(client.stub("training").ListTrainingJobs, common_pb2.ListJobsRequest()) is not None


@pytest.mark.parametrize("service", sorted(JOB_SERVICES))
def test_job_rpcs_reject_bad_input(stack, service):
    noun, create_cls, spec_cls = JOB_SERVICES[service]
    stub = client.stub(service)
    list_name = f"List{noun}s"

    code, details = _code(getattr(stub, f"Create{noun}"), create_cls())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec" in details

    code, details = _code(getattr(stub, f"Create{noun}"), create_cls(spec=spec_cls()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "spec." in details, details

    code, _ = _code(getattr(stub, f"Get{noun}"), common_pb2.GetJobRequest(id="no-such-job"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = _code(getattr(stub, f"Get{noun}"), common_pb2.GetJobRequest(id=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "id" in details

    code, details = _code(getattr(stub, list_name), common_pb2.ListJobsRequest(page_size=100000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in details
    code, details = _code(getattr(stub, list_name), common_pb2.ListJobsRequest(page_token="garbage"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details

    code, _ = _code(getattr(stub, f"Cancel{noun}"), common_pb2.CancelJobRequest(id="no-such-job"))
    assert code == grpc.StatusCode.NOT_FOUND

    code, _ = _code(getattr(stub, f"Watch{noun}"), common_pb2.WatchJobRequest(id="no-such-job"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = _code(
        getattr(stub, f"Watch{noun}"), common_pb2.WatchJobRequest(id="x", after_sequence=-1)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "after_sequence" in details


def test_serving_rpcs_reject_bad_input(stack, tmp_path):
    stub = client.stub("serving")
    code, details = _code(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec" in details
    bad = serving_pb2.DeploymentSpec(name="Bad_Name", model_uri="", canary_traffic_percent=150)
    code, details = _code(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest(spec=bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    for field in ("spec.name", "spec.model_uri", "spec.canary_traffic_percent"):
        assert field in details, details
    outside = serving_pb2.DeploymentSpec(name="x", model_uri=str(tmp_path))
    code, details = _code(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest(spec=outside))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside the allowed roots" in details
    code, _ = _code(stub.GetDeployment, serving_pb2.GetDeploymentRequest(name="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(stub.DeleteDeployment, serving_pb2.DeleteDeploymentRequest(name="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = _code(stub.GetDeployment, serving_pb2.GetDeploymentRequest(name=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "name" in details
    code, details = _code(stub.ListDeployments, serving_pb2.ListDeploymentsRequest(page_size=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in details
    code, _ = _code(stub.WatchDeployment, serving_pb2.WatchDeploymentRequest(name="nope"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_pipeline_definition_errors_name_the_stage(stack):
    stub = client.stub("pipeline")
    spec = pipeline_pb2.PipelineSpec(
        definition_yaml="stages:\n  s: {kind: train, spec: {method: NOPE}}\nbogus: 1\n"
    )
    code, details = _code(stub.CreatePipelineRun, pipeline_pb2.CreatePipelineRunRequest(spec=spec))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.definition_yaml.bogus" in details

    # Every Create takes validate_only: checked, answered, nothing created.
    spec = training_pb2.TrainingSpec(
        method=training_pb2.FULL,
        base=training_pb2.ModelInit(model="m"),
        hyperparameters=training_pb2.Hyperparameters(learning_rate=-1),
    )
    request = training_pb2.CreateTrainingJobRequest(
        spec=spec, validate_only=True, pending_fields=["spec.dataset_uri"]
    )
    code, details = _code(client.stub("training").CreateTrainingJob, request)
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and "learning_rate" in details
        and "dataset_uri" not in details
    )
    spec = serving_pb2.DeploymentSpec(name="valid-only")
    request = serving_pb2.CreateDeploymentRequest(
        spec=spec, validate_only=True, pending_fields=["spec.model_uri"]
    )
    answer = client.call(client.stub("serving").CreateDeployment, request)
    assert answer.name == "valid-only" and answer.state == serving_pb2.DEPLOYMENT_STATE_UNSPECIFIED
    code, _ = _code(client.stub("serving").GetDeployment, serving_pb2.GetDeploymentRequest(name="valid-only"))
    assert code == grpc.StatusCode.NOT_FOUND
