"""OIP v2 gRPC through a deployment on the local backend: real predictors serving a tiny ORT GenAI model
with two LoRA adapters, called with KServe's generated gRPC stubs.

One deployment: its stable gRPC address requires the predictors' key and
answers ModelInfer; a revision's own address answers too; an adapter is picked
by a request parameter or by its name, and an unknown one is INVALID_ARGUMENT;
a 30% canary answers some of 60 calls and the serving revision the rest; a
restarted service keeps the gRPC address.
"""

from __future__ import annotations

import asyncio
import collections
import time

import grpc
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from slmops.core import predictor_key
from slmops.core.jobs.store import JobStore
from slmops.serving.deployments import Deployments, revision_id
from slmops.serving.service import deployment_proto
from tests.integration._models import tiny_onnx_with_adapters

pytestmark = pytest.mark.integration

CALLS, CANARY = 60, 30  # P(the canary answers none of 60 calls at 30%) = 0.7**60, about 5e-10


async def until(predicate, timeout: float) -> None:
    start = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def settled(deployments: Deployments, name: str) -> bool:
    record = deployments.get(name)
    return record.state == "READY" and record.result.get("settled") == record.config.get("generation")


def request(model: str = "tiny", adapter: str | None = None) -> pb.ModelInferRequest:
    text = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"hello world")
    budget = pb.ModelInferRequest.InferInputTensor(name="max_tokens", datatype="INT32", shape=[1])
    budget.contents.int_contents.append(8)
    message = pb.ModelInferRequest(model_name=model, inputs=[text, budget])
    if adapter is not None:
        message.parameters["adapter"].string_param = adapter
    return message


def infer(
    address: str, message: pb.ModelInferRequest, key: bool = True
) -> tuple[str, pb.ModelInferResponse, str]:
    """(the text, the answer, the revision that answered as the router says) for one ModelInfer call."""
    metadata = (("authorization", f"Bearer {predictor_key.read()}"),) if key else ()
    with grpc.insecure_channel(address) as channel:
        response, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            message, metadata=metadata, timeout=30
        )
    text = response.outputs[0].contents.bytes_contents[0].decode()
    return text, response, dict(call.initial_metadata()).get("x-slmops-revision", "")


def answers(address: str) -> bool:
    """Whether OIP v2 ServerReady answers at `address` (open without the key, like the predictor's)."""
    try:
        with grpc.insecure_channel(address) as channel:
            return (
                pb_grpc.GRPCInferenceServiceStub(channel)
                .ServerReady(pb.ServerReadyRequest(), timeout=2)
                .ready
            )
    except grpc.RpcError:
        return False


@pytest.fixture
def env(tmp_path_factory, tmp_path, monkeypatch):
    model = tiny_onnx_with_adapters(tmp_path_factory, "fp32")
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(model.parent))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(predictor_key.ensure(tmp_path / "data")))
    return model, f"sqlite:///{tmp_path}/serving.db"


async def test_oip_grpc_through_a_deployment_its_revisions_and_a_canary(env):
    model, db = env
    opened = [Deployments(JobStore(db), poll_s=0.5)]
    try:
        first = opened[0]
        first.resume()
        await first.create({"name": "tiny", "model_uri": str(model)})
        await until(lambda: settled(first, "tiny"), 120)
        record = first.get("tiny")
        address = record.result["grpc_address"]
        proto = deployment_proto(record, first.revisions("tiny"))
        assert proto.grpc_address == address and address.startswith("127.0.0.1:")
        revision = first.store.get(revision_id("tiny", 1)).result["grpc_address"]
        assert proto.revisions[0].grpc_address == revision and revision != address

        # The deployment's address and the revision's own both answer, with the key only.
        base, answer, by = await asyncio.to_thread(infer, address, request())
        assert base and (answer.model_name, by) == ("tiny", "1")
        assert (await asyncio.to_thread(infer, revision, request()))[0] == base  # greedy: the same text
        for target in (address, revision):
            with pytest.raises(grpc.RpcError) as refused:
                await asyncio.to_thread(infer, target, request(), False)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # An adapter by parameter on the base model, or by its name; an unknown one is refused by name.
        alpha, answer, _ = await asyncio.to_thread(infer, address, request(adapter="alpha"))
        assert answer.parameters["adapter"].string_param == "alpha" and alpha != base
        by_name, answer, _ = await asyncio.to_thread(infer, address, request("alpha"))
        assert (by_name, answer.model_name) == (alpha, "alpha")
        with pytest.raises(grpc.RpcError) as unknown:
            await asyncio.to_thread(infer, address, request(adapter="gamma"))
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "gamma" in unknown.value.details()

        # A canary takes its share of gRPC calls, like HTTP requests.
        await first.update("tiny", str(model), [], CANARY)
        await until(lambda: settled(first, "tiny"), 120)
        assert first.get("tiny").result["grpc_address"] == address
        calls = [await asyncio.to_thread(infer, address, request()) for _ in range(CALLS)]
        counts = collections.Counter(by for _, _, by in calls)
        print(f"\ngRPC calls per revision with a {CANARY}% canary: {dict(counts)}")
        assert set(counts) == {"1", "2"} and sum(counts.values()) == CALLS, counts
        assert {text for text, _, _ in calls} == {base}  # the same model in both revisions

        # A restarted service listens on the same gRPC address (the predictors are adopted).
        await first.close(stop_predictors=False)
        second = Deployments(JobStore(db), poll_s=0.5)
        opened.append(second)
        second.resume()
        await until(lambda: settled(second, "tiny") and answers(address), 60)
        assert second.get("tiny").result["grpc_address"] == address
        assert (await asyncio.to_thread(infer, address, request()))[0] == base
        await second.delete("tiny")
    finally:
        for deployments in opened:
            await deployments.close()
