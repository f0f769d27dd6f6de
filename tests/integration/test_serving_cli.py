"""Rollouts through the `slmops` command against the real local stack (service processes, gRPC, auth).

A tiny ORT GenAI model is copied into the stack's data folder (a root requests
may name) and rolled out as two revisions with the CLI; the gRPC refusals of
the rollout RPCs are checked by code.
"""

from __future__ import annotations

import shutil

import grpc
import httpx
import pytest

from slmops.api.v1 import serving_pb2
from slmops.cli import client
from slmops.cli.main import main as cli_main
from tests.integration._models import tiny_onnx

pytestmark = pytest.mark.integration


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value.code(), info.value.details()


def test_rollout_rpcs_refuse_bad_input_with_their_codes(stack):
    stub = client.stub("serving")
    code, details = _code(stub.UpdateDeployment, serving_pb2.UpdateDeploymentRequest(
        name="nobody", model_uri="/nowhere", canary_traffic_percent=20))  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "canary_traffic_percent" in details
    code, _ = _code(stub.PromoteDeployment, serving_pb2.PromoteDeploymentRequest(name="nobody"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(stub.RollbackDeployment, serving_pb2.RollbackDeploymentRequest(name="nobody"))
    assert code == grpc.StatusCode.NOT_FOUND
    missing = serving_pb2.DeploymentSpec(name="ghost", model_uri=str(stack["data_dir"] / "no-such-model"))
    code, _ = _code(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest(spec=missing))
    assert code == grpc.StatusCode.NOT_FOUND
    other = serving_pb2.DeploymentSpec(name="ghost", model_uri="/x", backend=serving_pb2.KSERVE)
    code, details = _code(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest(spec=other))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.backend" in details


def test_a_canary_promoted_and_rolled_back_with_the_cli(stack, tmp_path_factory, capsys):
    model = stack["data_dir"] / "models" / "tiny"
    shutil.copytree(tiny_onnx(tmp_path_factory), model)
    try:
        assert cli_main(["deploy", "clitiny", "--model", str(model)]) == 0
        assert cli_main(["deploy", "clitiny", "--model", str(model)]) == 1  # ALREADY_EXISTS
        assert "ALREADY_EXISTS" in capsys.readouterr().err
        assert cli_main(["promote", "clitiny"]) == 1
        assert "FAILED_PRECONDITION" in capsys.readouterr().err
        assert cli_main(["deploy", "clitiny", "--model", str(model), "--canary", "40"]) == 0
        out = capsys.readouterr().out
        assert "clitiny-2" in out and " 40%" in out and "(canary)" in out and " 60%" in out, out

        cli_main(["status"])
        status = capsys.readouterr().out
        assert "clitiny: READY" in status and "clitiny-2" in status and "clitiny-1" in status, status

        deployment = client.call(client.stub("serving").GetDeployment,
                                 serving_pb2.GetDeploymentRequest(name="clitiny"))  # fmt: skip
        seen = set()
        key = {"Authorization": f"Bearer {stack['predictor_key']}"}
        assert httpx.get(f"{deployment.url}/openai/v1/models", trust_env=False).status_code == 401
        with httpx.Client(trust_env=False, timeout=30, headers=key) as http:
            for _ in range(40):
                response = http.get(f"{deployment.url}/openai/v1/models")
                assert response.status_code == 200
                seen.add(response.headers["x-slmops-revision"])
        assert seen == {"1", "2"}

        assert cli_main(["promote", "clitiny"]) == 0
        assert "clitiny-2                100%" in capsys.readouterr().out
        assert cli_main(["rollback", "clitiny"]) == 0
        out = capsys.readouterr().out
        assert "clitiny-1                100%" in out and "rolled back to revision 1" in out, out
        assert cli_main(["rollback", "clitiny"]) == 1  # nothing earlier than revision 1
        assert "no earlier revision" in capsys.readouterr().err
    finally:
        cli_main(["deploy", "clitiny", "--delete"])
