"""Teachers: the OpenAI-compatible client (retries, keys, log-probabilities) and the local one.

The endpoint teacher talks to `StandinServer`, a local OpenAI-compatible HTTP
server in this process standing in for a remote paid teacher.
"""

from __future__ import annotations

import pytest

from slmops.core.errors import Unavailable
from slmops.synthesis.spec import EndpointTeacherConfig, LocalTeacherConfig
from slmops.synthesis.spec_checks import SamplingConfig
from slmops.synthesis.standin import StandinServer
from slmops.synthesis.teacher import EndpointTeacher, LocalTeacher, backoff_delay, resolve_api_key


@pytest.fixture(scope="module")
def server():
    with StandinServer() as s:
        yield s


@pytest.fixture
def standin(server):
    server.requests.clear()
    server._failures.clear()
    return server


def _teacher(server, sampling=None, **overrides) -> EndpointTeacher:
    config = EndpointTeacherConfig(
        base_url=server.base_url, model="t", backoff_s=0.001, max_retries=2, **overrides
    )
    return EndpointTeacher(config, sampling or SamplingConfig(max_tokens=8), threads=2)


def test_completions_and_top_logprobs(standin):
    results = _teacher(standin, SamplingConfig(max_tokens=8, top_logprobs=3)).generate(
        ["12+30=", "3*4="]
    )
    assert [r["completion"] for r in results] == ["42", "12"]
    assert results[0]["finish_reason"] == "stop" and results[0]["completion_tokens"] == 2
    assert results[0]["top_logprobs"][0] == {"4": -0.01, "0": -4.0, "1": -5.0}
    assert standin.requests[0]["body"]["logprobs"] == 3


def test_chat_with_system_prompt_and_top_logprobs(standin):
    teacher = EndpointTeacher(
        EndpointTeacherConfig(base_url=standin.base_url, model="t", chat=True),
        SamplingConfig(max_tokens=1, top_logprobs=2, stop=["\n"]),
        system_prompt="Answer with a number.",
    )
    [result] = teacher.generate(["20+22="])
    assert result["completion"] == "4" and result["finish_reason"] == "length"
    assert result["top_logprobs"] == [{"4": -0.01, "0": -4.0}]
    body = standin.requests[-1]["body"]
    assert body["messages"][0] == {"role": "system", "content": "Answer with a number."}
    assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["stop"] == ["\n"]


def test_503_and_429_are_retried(standin):
    standin.fail_next(1, 503)
    standin.fail_next(1, 429)
    [result] = _teacher(standin).generate(["1+1="])
    assert result["completion"] == "2"
    assert [r["status"] for r in standin.requests] == [503, 429, 200]


def test_retries_are_bounded_and_other_errors_fail_fast(standin):
    standin.fail_next(10, 503)
    [result] = _teacher(standin).generate(["1+1="])
    assert "error" in result and "503" in result["error"]
    assert len(standin.requests) == 3  # max_retries=2: three attempts

    standin._failures.clear()
    standin.requests.clear()
    standin.fail_next(1, 400)
    [result] = _teacher(standin).generate(["1+1="])
    assert "400" in result["error"] and len(standin.requests) == 1


def test_connection_errors_are_retried_then_reported():
    config = EndpointTeacherConfig(
        base_url="http://127.0.0.1:9/v1", model="t", backoff_s=0.001, max_retries=1
    )
    [result] = EndpointTeacher(config, SamplingConfig()).generate(["x"])
    assert result["error"].startswith("APIConnectionError") and "127.0.0.1:9" in result["error"]


def test_api_key_comes_from_the_named_variable(standin, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY_FOR_TEST", "secret-value")
    _teacher(standin, api_key_env="TEACHER_KEY_FOR_TEST").generate(["1+1="])
    assert standin.requests[-1]["authorization"] == "Bearer secret-value"
    monkeypatch.delenv("TEACHER_KEY_FOR_TEST")
    with pytest.raises(Unavailable, match="TEACHER_KEY_FOR_TEST"):
        resolve_api_key("TEACHER_KEY_FOR_TEST")
    assert resolve_api_key("") == "none"


def test_backoff_grows_and_is_bounded():
    delays = [backoff_delay(n, 0.5, 4.0) for n in range(8)]
    assert 0.25 <= delays[0] <= 0.5 and 1.0 <= delays[2] <= 2.0
    assert max(delays) <= 4.0 and delays[-1] == pytest.approx(4.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from slmops.models.tiny import build_model, train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(
        [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)], root / "tok", vocab_size=270
    )
    return build_model(root / "model", tok, hidden_size=32, num_hidden_layers=1, seed=0)


def test_local_teacher_generates_greedily_with_logprobs(tiny_model):
    sampling = SamplingConfig(max_tokens=5, top_logprobs=2)
    teacher = LocalTeacher(LocalTeacherConfig(model=f"file://{tiny_model}"), sampling)
    first, second = teacher.generate(["1+2=", "1+2="])
    assert first == second  # greedy is deterministic
    assert first["finish_reason"] in ("stop", "length")
    assert first["completion_tokens"] == len(first["top_logprobs"]) <= 5
    for step in first["top_logprobs"]:
        assert len(step) <= 2 and all(v <= 0 for v in step.values())
