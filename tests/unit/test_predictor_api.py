"""The OpenAI routes and the OIP v2 model, in process, on a tiny ORT GenAI model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from slmops.predictor.loading import load_engine
from slmops.predictor.model import GenerationModel
from slmops.predictor.openai_api import make_router
from slmops.predictor.served import Served
from tests.integration._models import tiny_onnx

NAME = "tiny"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = Served.start(NAME, load_engine(tiny_onnx(tmp_path_factory)))
    yield served
    served.close()


@pytest.fixture(scope="module")
def engine(served):
    return served.engine


@pytest.fixture(scope="module")
def client(served):
    app = FastAPI()
    app.include_router(make_router(served))
    with TestClient(app) as client:
        yield client


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_completion_answers_with_text_and_usage(client, engine):
    expected = engine.generate("hello world", max_tokens=6)
    body = client.post(
        "/v1/completions", json={"model": NAME, "prompt": "hello world", "max_tokens": 6}
    ).json()
    assert body["object"] == "text_completion"
    assert body["model"] == NAME
    assert body["choices"][0]["text"] == expected.text
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": expected.prompt_tokens,
        "completion_tokens": 6,
        "total_tokens": expected.prompt_tokens + 6,
    }


def test_chat_uses_the_template_and_stop_strings(client, engine):
    messages = [{"role": "user", "content": "hello"}]
    prompt = engine.apply_chat_template(messages)
    full = engine.generate(prompt, max_tokens=10).text
    stop = full[2:4]
    expected = engine.generate(prompt, max_tokens=10, stop=[stop])
    body = client.post(
        "/openai/v1/chat/completions",
        json={"model": NAME, "messages": messages, "max_tokens": 10, "stop": stop},
    ).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == expected.completion_tokens


def _events(response) -> list:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: ") :]) for line in lines[:-1]]


def test_streaming_chat_sends_deltas_then_usage_then_done(client, engine):
    messages = [{"role": "user", "content": "hi"}]
    expected = engine.generate(engine.apply_chat_template(messages), max_tokens=8)
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": NAME,
            "messages": messages,
            "max_tokens": 8,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1])
    assert text == expected.text
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 8


def test_streaming_completion(client, engine):
    expected = engine.generate("the", max_tokens=5)
    response = client.post(
        "/v1/completions", json={"model": NAME, "prompt": ["the"], "max_tokens": 5, "stream": True}
    )
    events = _events(response)
    assert "".join(e["choices"][0]["text"] for e in events) == expected.text
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert all(e["object"] == "text_completion" for e in events)


def test_models_list_and_retrieve(client):
    for prefix in ("/v1", "/openai/v1"):
        body = client.get(f"{prefix}/models").json()
        assert [m["id"] for m in body["data"]] == [NAME]
    assert client.get(f"/openai/v1/models/{NAME}").json()["id"] == NAME
    assert _error(client.get("/openai/v1/models/other"), 404)["code"] == "model_not_found"


def test_unknown_model_is_404(client):
    error = _error(client.post("/v1/completions", json={"model": "other", "prompt": "x"}), 404)
    assert error["param"] == "model"
    assert "'tiny'" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": NAME, "prompt": "x", "temperature": 3}, "temperature"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "top_p": 0}, "top_p"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "n": 17}, "n"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "n": 9}, "n"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "logprobs": 21}, "logprobs"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "max_tokens": 5000}, "max_tokens"),
        ("/v1/completions", {"model": NAME, "prompt": "hello", "max_tokens": 127}, "max_tokens"),
        ("/v1/completions", {"model": NAME}, "prompt"),
        ("/v1/completions", {"model": NAME, "prompt": []}, "prompt"),
        ("/v1/completions", {"model": NAME, "prompt": "hello " * 300}, "prompt"),
        ("/v1/chat/completions", {"model": NAME, "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "bot", "content": "x"}]},
         "messages[0].role"),
        ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": 5}]},
         "messages[0].content"),
        ("/v1/chat/completions", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]},
         "model"),
    ],
)  # fmt: skip
def test_bad_fields_are_400_naming_the_field(client, path, body, param):
    error = _error(client.post(path, json=body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in error["message"]


def test_streaming_request_with_a_bad_prompt_is_400_not_a_stream(client):
    response = client.post("/v1/completions", json={"model": NAME, "prompt": "hi " * 300, "stream": True})
    assert _error(response, 400)["param"] == "prompt"


def test_non_json_body_is_400(client):
    response = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in _error(response, 400)["message"]


def _infer_request(texts: list[str], max_tokens: list[int] | None = None) -> InferRequest:
    inputs = [InferInput("text", [len(texts)], "BYTES", data=texts)]
    if max_tokens is not None:
        inputs.append(InferInput("max_tokens", [len(max_tokens)], "INT32", data=max_tokens))
    return InferRequest(NAME, inputs, request_id="r1")


async def test_oip_model_generates_one_text_per_prompt(served, engine):
    model = GenerationModel(served)
    assert model.load() and model.ready
    response = await model.predict(_infer_request(["hello world", "the"], [4]))
    output = response.outputs[0]
    assert (output.name, output.datatype, output.shape) == ("text", "BYTES", [2])
    assert list(output.data) == [
        engine.generate("hello world", max_tokens=4).text,
        engine.generate("the", max_tokens=4).text,
    ]
    assert response.id == "r1"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            InferRequest(NAME, [InferInput("prompt", [1], "BYTES", data=["x"])]),
            "'text' .BYTES. is required",
        ),
        (InferRequest(NAME, [InferInput("text", [1], "INT32", data=[1])]), "must be BYTES"),
        (_infer_request(["a", "b", "c"], [1, 2]), "one positive value or one per prompt"),
        (_infer_request(["a"], [0]), "one positive value"),
        (_infer_request(["hello " * 300]), "context holds"),
    ],
)
async def test_oip_model_rejects_bad_inputs(served, request_, message):
    with pytest.raises(InvalidInput, match=message):
        await GenerationModel(served).predict(request_)


def test_oip_input_types_are_described(served):
    model = GenerationModel(served)
    assert [t["name"] for t in model.get_input_types()] == ["text", "max_tokens"]
    assert np.asarray([t["datatype"] for t in model.get_output_types()]).tolist() == ["BYTES"]


def test_a_request_past_its_timeout_gets_an_openai_error_and_frees_its_slot(engine):
    from slmops.predictor.scheduler import Limits

    served = Served.start(NAME, engine, Limits(request_timeout_s=0.001, batch_window_s=0.05))
    app = FastAPI()
    app.include_router(make_router(served))
    try:
        with TestClient(app) as client:
            response = client.post("/v1/completions", json={"model": NAME, "prompt": "hi"})
            error = _error(response, 504)
            assert error["code"] == "timeout" and error["type"] == "server_error"
            stream = client.post("/v1/completions", json={"model": NAME, "prompt": "hi", "stream": True})
            last = [line for line in stream.text.split("\n\n") if line][-1]
            assert json.loads(last.removeprefix("data: "))["error"]["code"] == "timeout"
        assert served.scheduler.busy == 0 and served.scheduler.waiting == 0
    finally:
        served.scheduler.stop()


def test_completions_take_a_list_of_prompts_as_one_batch(client, engine):
    prompts = ["hello world", "the quick"]
    body = client.post(
        "/v1/completions", json={"model": NAME, "prompt": prompts, "max_tokens": 5, "n": 2}
    ).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    expected = [engine.generate(p, max_tokens=5).text for p in prompts]
    assert [c["text"] for c in body["choices"]] == [expected[0], expected[0], expected[1], expected[1]]
    assert body["usage"]["prompt_tokens"] == sum(len(engine.encode(p)) for p in prompts)
    assert body["usage"]["completion_tokens"] == 20
