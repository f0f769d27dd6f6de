"""The real predictor process (`python -m slmops.predictor`) called with the openai client and httpx."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration._models import tiny_checkpoint, tiny_onnx

pytestmark = pytest.mark.integration
NAME = "tiny"
READY = "SLMOPS_PREDICTOR_READY "


def _openai(base_url: str) -> openai.OpenAI:
    """The official client, talking to the local server directly (never via a proxy)."""
    http = httpx.Client(trust_env=False, timeout=60)
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, http_client=http)


class Predictor:
    """A predictor subprocess; url is set once it printed its READY line."""

    def __init__(self, model_dir: Path, data_dir: Path, *extra: str, name: str = NAME):
        env = {**os.environ, "SLMOPS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        cmd = [sys.executable, "-m", "slmops.predictor", "--model-dir", str(model_dir),
               "--name", name, "--http-port", "0", *extra]  # fmt: skip
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.url = ""
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, args=(self.process.stderr, self.stderr), daemon=True).start()

    @staticmethod
    def _drain(stream, sink: list[str]) -> None:
        sink.extend(stream)

    def wait_ready(self, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.stdout.append(line)
            if line.startswith(READY):
                self.url = line[len(READY) :].strip()
                threading.Thread(
                    target=self._drain, args=(self.process.stdout, self.stdout), daemon=True
                ).start()
                return self.url
        raise AssertionError(f"predictor not ready; stderr:\n{''.join(self.stderr)[-3000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("predictor-data")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, data_dir):
    server = Predictor(tiny_onnx(tmp_path_factory), data_dir)
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(predictor):
    return _openai(f"{predictor.url}/openai/v1")


def test_completions(client):
    answer = client.completions.create(model=NAME, prompt="hello world", max_tokens=6)
    assert answer.model == NAME
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].text
    assert answer.usage.completion_tokens == 6
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 6


def test_chat_completions_and_streaming_agree(client):
    messages = [{"role": "user", "content": "hi there"}]
    answer = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8)
    assert answer.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == answer.choices[0].message.content
    assert len([p for p in pieces if p]) > 1


def test_streamed_completion_with_usage(client):
    stream = client.completions.create(
        model=NAME, prompt="the", max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 5
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == client.completions.create(model=NAME, prompt="the", max_tokens=5).choices[0].text


def test_models_list_under_both_prefixes(client, predictor):
    assert [m.id for m in client.models.list()] == [NAME]
    other = _openai(f"{predictor.url}/v1")
    assert [m.id for m in other.models.list()] == [NAME]
    assert other.completions.create(model=NAME, prompt="hi", max_tokens=2).usage.completion_tokens == 2


def test_wrong_model_is_404_and_bad_field_is_400(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="x")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}], temperature=9)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model=NAME, prompt="hello " * 400)
    assert long.value.body["param"] == "prompt"


def test_open_inference_protocol_v2(predictor):
    with httpx.Client(base_url=predictor.url, timeout=30, trust_env=False) as http:
        assert http.get("/v2/health/ready").status_code == 200
        assert http.get(f"/v2/models/{NAME}/ready").json()["ready"] is True
        body = {"inputs": [
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello world", "the"]},
            {"name": "max_tokens", "shape": [1], "datatype": "INT32", "data": [4]},
        ]}  # fmt: skip
        answer = http.post(f"/v2/models/{NAME}/infer", json=body).json()
        output = answer["outputs"][0]
        assert (output["name"], output["datatype"], output["shape"]) == ("text", "BYTES", [2])
        assert all(isinstance(t, str) and t for t in output["data"])
        bad = http.post(f"/v2/models/{NAME}/infer", json={"inputs": [
            {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})  # fmt: skip
        assert bad.status_code == 400
        assert "'text'" in bad.json()["error"]


def test_metrics_and_info(predictor, client):
    client.completions.create(model=NAME, prompt="hello", max_tokens=3)
    with httpx.Client(base_url=predictor.url, timeout=30, trust_env=False) as http:
        text = http.get("/metrics").text
        info = http.get("/slmops/v1/info").json()
    for name in ("process_resident_memory_bytes", "slmops_predictor_requests_total",
                 "slmops_predictor_request_seconds_bucket", "slmops_predictor_generated_tokens_total"):  # fmt: skip
        assert f"\n{name}" in text, name
    assert 'slmops_predictor_requests_total{code="200",endpoint="completions",model="tiny"}' in text
    assert info["model"] == NAME and info["engine"] == "ort-genai"
    assert info["rss_bytes"] > 10_000_000
    assert Path(info["model_dir"]).name.startswith("qwen2-tiny")


def test_traceparent_parents_the_request_span(tmp_path_factory, tmp_path):
    """A second server, stopped to flush its spans: the request span continues the caller's trace."""
    server = Predictor(tiny_onnx(tmp_path_factory), tmp_path)
    server.wait_ready()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    body = {"model": NAME, "prompt": "secret prompt", "max_tokens": 3}
    with httpx.Client(timeout=30, trust_env=False) as http:
        assert http.post(f"{server.url}/v1/completions", headers=headers, json=body).is_success
    assert server.stop() == 0
    spans = [json.loads(line) for line in (tmp_path / "traces" / "spans.jsonl").read_text().splitlines()]
    span = next(s for s in spans if s["name"] == "predictor.completions")
    assert (span["trace_id"], span["parent_span_id"]) == (trace_id, parent_id)
    assert span["attributes"]["model"] == NAME
    assert span["attributes"]["completion_tokens"] == 3
    assert "secret" not in json.dumps(spans)


def test_transformers_checkpoint_is_served_and_sigterm_exits_cleanly(tmp_path_factory, tmp_path):
    server = Predictor(tiny_checkpoint(tmp_path_factory), tmp_path, name="hf")
    url = server.wait_ready(timeout=120)
    client = _openai(f"{url}/v1")
    answer = client.chat.completions.create(
        model="hf", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.usage.completion_tokens == 4
    with httpx.Client(base_url=url, trust_env=False) as http:
        assert http.get("/slmops/v1/info").json()["parameters"] > 0
    assert server.stop() == 0


def test_start_up_failures_exit_non_zero_with_a_message(tmp_path_factory, tmp_path):
    run = [sys.executable, "-m", "slmops.predictor", "--model-dir"]
    missing = subprocess.run(
        [*run, str(tmp_path / "absent")], check=False, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    empty = subprocess.run(
        [*run, str(tmp_path), "--http-port", "0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert empty.returncode == 2
    assert "neither genai_config.json" in empty.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = subprocess.run([*run, str(tiny_onnx(tmp_path_factory)), "--http-port", port],
                              check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert busy.returncode == 3
    assert "cannot listen on 127.0.0.1:" in busy.stderr
