"""The predictor under load, as clients see it: the official openai client, httpx and gRPC.

One predictor process on the tiny ORT GenAI model with small limits (4
sequences at once, 4 waiting, max_tokens up to 100, 4 KiB bodies) and an API
key; another on the tiny transformers checkpoint with two LoRA adapters.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from slmops.core.jobs.local_ray import free_port
from tests.integration._models import tiny_adapters, tiny_checkpoint, tiny_onnx, tiny_onnx_with_adapters
from tests.integration.test_predictor_server import NAME, Predictor

pytestmark = pytest.mark.integration
KEY = "sk-test-0123456789"
LIMITS = ["--max-concurrency", "4", "--max-queue", "4", "--max-tokens", "100", "--max-body-bytes", "4096"]


def _client(url: str, key: str = KEY) -> openai.OpenAI:
    http = httpx.Client(trust_env=False, timeout=60)
    return openai.OpenAI(base_url=f"{url}/openai/v1", api_key=key, max_retries=0, http_client=http)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    grpc_port = free_port()
    os.environ["SLMOPS_PREDICTOR_API_KEY"] = KEY  # the predictor's default key variable
    try:
        server = Predictor(tiny_onnx(tmp_path_factory), tmp_path_factory.mktemp("load"),
                           *LIMITS, "--grpc-port", str(grpc_port))  # fmt: skip
    finally:
        del os.environ["SLMOPS_PREDICTOR_API_KEY"]
    server.wait_ready()
    server.grpc_port = grpc_port
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(served):
    return _client(served.url)


def _metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.reliability("a predictor is called without its API key", expected="401; health stays open")
def test_the_api_key_is_required_except_for_health(served):
    with pytest.raises(openai.AuthenticationError) as denied:
        _client(served.url, key="wrong").completions.create(model=NAME, prompt="hi", max_tokens=2)
    assert denied.value.body["code"] == "invalid_api_key"
    with httpx.Client(base_url=served.url, trust_env=False, timeout=10) as http:
        assert http.get("/openai/v1/models").status_code == 401
        assert http.get("/v2/health/ready").status_code == 200
        assert http.get(f"/v2/models/{NAME}/ready").status_code == 200
        assert http.get("/metrics").status_code == 200


@pytest.mark.reliability(
    "a predictor gets an oversized body or max_tokens", expected="413/400 naming the limit"
)
def test_limits_answer_413_and_400_naming_the_limit(served, client):
    with httpx.Client(base_url=served.url, trust_env=False, timeout=10) as http:
        big = http.post("/openai/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                        json={"model": NAME, "prompt": "x" * 5000})  # fmt: skip
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError) as capped:
        client.completions.create(model=NAME, prompt="hi", max_tokens=101)
    assert capped.value.body["param"] == "max_tokens"
    assert "at most 100" in capped.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")


def test_n_choices_and_logprobs_in_openai_shapes(client):
    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=6,
        n=3, temperature=1.5, seed=11, logprobs=True, top_logprobs=2,
    )  # fmt: skip
    assert sorted(c.index for c in chat.choices) == [0, 1, 2]
    assert chat.usage.completion_tokens == sum(len(c.logprobs.content) for c in chat.choices)
    for choice in chat.choices:
        content = choice.logprobs.content
        assert all(item.logprob <= 0 and len(item.top_logprobs) == 2 for item in content)
    greedy = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=6, logprobs=True
    ).choices[0]
    # The tokens' bytes spell the answer: enough to map them back to token ids.
    assert bytes(b for item in greedy.logprobs.content for b in item.bytes).decode() == greedy.message.content
    assert all(item.top_logprobs == [] for item in greedy.logprobs.content)
    completion = client.completions.create(model=NAME, prompt="hello world", max_tokens=4, logprobs=3)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert "".join(logprobs.tokens) == completion.choices[0].text
    assert all(len(top) <= 3 for top in logprobs.top_logprobs)
    as_ids = client.completions.create(model=NAME, prompt="hello world", max_tokens=4, logprobs=3,
                                       extra_body={"return_tokens_as_token_ids": True})  # fmt: skip
    assert all(re.fullmatch(r"token_id:\d+", t) for t in as_ids.choices[0].logprobs.tokens)


def test_streamed_choices_carry_their_index_and_logprobs(client):
    stream = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=5, n=2,
        logprobs=True, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    texts, tokens, usage = {0: "", 1: ""}, {0: 0, 1: 0}, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                tokens[choice.index] += len(choice.logprobs.content)
    assert texts[0] == texts[1] and texts[0]  # greedy: both choices agree
    assert tokens == {0: 5, 1: 5}
    assert usage.completion_tokens == 10


@pytest.mark.reliability(
    "a flood of requests at a predictor", expected="429 with Retry-After; every other answer well formed"
)
def test_a_flood_gets_429_with_retry_after_and_the_rest_well_formed(served):
    body = {"model": NAME, "prompt": "hello world", "max_tokens": 100}
    headers = {"Authorization": f"Bearer {KEY}"}
    rejected_before = _metric(served.url, "slmops_predictor_rejected_total", '{reason="queue_full"}')

    def call(_: int) -> httpx.Response:
        with httpx.Client(trust_env=False, timeout=120) as http:
            return http.post(f"{served.url}/v1/completions", json=body, headers=headers)

    def rss() -> int:
        with httpx.Client(trust_env=False, timeout=10) as http:
            return http.get(f"{served.url}/slmops/v1/info", headers=headers).json()["rss_bytes"]

    sizes, responses = [], []
    for _ in range(2):  # memory stays flat: the second flood needs no more than the first
        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            responses = list(pool.map(call, range(24)))
        sizes.append(rss())
    assert sizes[1] < sizes[0] * 1.1, sizes
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) >= 8, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
        else:
            assert r.json()["choices"][0]["text"] and r.json()["usage"]["completion_tokens"] > 0
    rejected = _metric(served.url, "slmops_predictor_rejected_total", '{reason="queue_full"}')
    assert rejected - rejected_before >= codes.count(429) > 0
    # Requests really ran together: decoding steps advanced more than one sequence.
    steps = _metric(served.url, "slmops_predictor_batch_size_count")
    single = _metric(served.url, "slmops_predictor_batch_size_bucket", '{le="1.0"}')
    assert steps - single > 0
    assert _metric(served.url, "slmops_predictor_in_flight") == 0


@pytest.mark.reliability("a client disconnects mid-generation", expected="its generation stops")
def test_a_client_that_leaves_stops_its_generation(served, client):
    """A stream closed after its first chunk frees its slot and is counted as 499 (client closed).

    The tiny model can finish 100 tokens before the close reaches the server (then the
    request is a 200), so the client leaves up to five times and one must be cut short.
    """
    label = '{code="499",endpoint="completions",model="tiny"}'
    before = _metric(served.url, "slmops_predictor_requests_total", label)
    with httpx.Client(base_url=served.url, trust_env=False, timeout=10) as http:
        for _ in range(5):
            stream = client.completions.create(model=NAME, prompt="hello", max_tokens=100, stream=True)
            next(iter(stream))
            stream.close()
            deadline = time.monotonic() + 10
            while http.get("/slmops/v1/info", headers={"Authorization": f"Bearer {KEY}"}).json()["in_flight"]:
                assert time.monotonic() < deadline, "the abandoned generation kept its slot"
                time.sleep(0.05)
            deadline = time.monotonic() + 2  # the request's metrics are recorded as its stream closes
            while time.monotonic() < deadline:
                if _metric(served.url, "slmops_predictor_requests_total", label) > before:
                    return
                time.sleep(0.05)
    pytest.fail("no abandoned stream was counted as 499")


@pytest.mark.reliability("OIP gRPC inference without the key", expected="UNAUTHENTICATED")
def test_model_infer_over_grpc_needs_the_key(served):
    request = pb.ModelInferRequest(
        model_name=NAME,
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[2],
            contents=pb.InferTensorContents(bytes_contents=[b"hello world", b"the"]))],
    )  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        with pytest.raises(grpc.RpcError) as denied:
            stub.ModelInfer(request, timeout=30)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = stub.ModelInfer(request, timeout=30, metadata=[("authorization", f"Bearer {KEY}")])
    texts = list(answer.outputs[0].contents.bytes_contents) or answer.raw_output_contents
    assert len(answer.outputs) == 1 and answer.outputs[0].shape == [2]
    assert texts


def _expected(folder: Path, prompt: str, base: str, **flags: Path) -> dict[str, str]:
    """Greedy answers of the base and each adapter, one request at a time in this process."""
    from slmops.predictor.loading import load_engine

    engine = load_engine(folder, adapters=flags)
    try:
        return {m: engine.generate(prompt, max_tokens=12, adapter=None if m == base else m).text
                for m in (base, *engine.adapters)}  # fmt: skip
    finally:
        engine.close()


def _adapters_at_once(url: str, prompt: str, expected: dict[str, str]) -> None:
    client = _client(url, key="unused")
    assert sorted(m.id for m in client.models.list()) == sorted(expected)
    models = [*expected, *expected]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(models)) as pool:
        answers = list(pool.map(
            lambda m: client.completions.create(model=m, prompt=prompt, max_tokens=12), models))  # fmt: skip
    for model, answer in zip(models, answers, strict=True):
        assert answer.model == model
        assert answer.choices[0].text == expected[model], model
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gamma", prompt=prompt)


@pytest.mark.parametrize("runtime", ["ort-genai", "transformers"])
def test_adapters_are_picked_by_model_name_while_others_run(tmp_path_factory, tmp_path, runtime):
    prompt = "question: what is 2 + 3?"
    if runtime == "ort-genai":  # .onnx_adapter files in the folder's adapters/
        folder, flags = tiny_onnx_with_adapters(tmp_path_factory), {}
    else:  # peft folders named on the command line
        folder, flags = tiny_checkpoint(tmp_path_factory), tiny_adapters(tmp_path_factory)
    expected = _expected(folder, prompt, "base", **flags)
    assert len(set(expected.values())) == 3, expected  # the adapters change the answer
    extra = [arg for name, path in flags.items() for arg in ("--adapter", f"{name}={path}")]
    server = Predictor(folder, tmp_path / "data", "--batch-window-ms", "50", *extra, name="base")
    try:
        _adapters_at_once(server.wait_ready(timeout=120), prompt, expected)
    finally:
        assert server.stop() == 0
