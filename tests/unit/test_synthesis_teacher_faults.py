"""The endpoint teacher under faults: retries, Retry-After, timeouts, rejects, rate limits, the probe.

The teacher talks to `StandinServer`, a local OpenAI-compatible HTTP server in this process
standing in for a remote paid teacher.
"""

from __future__ import annotations

import time

import pytest

from slmops.core.errors import Unavailable
from slmops.core.spec_checks import SamplingConfig
from slmops.synthesis.config import EndpointTeacherConfig
from slmops.synthesis.teacher import EndpointTeacher
from slmops.testing.standin import StandinServer
from tests.unit.test_synthesis_teacher import _teacher


def test_retry_after_is_honoured_up_to_its_bound():
    with StandinServer(faults={429: 1.0}, retry_after="0.4") as server:
        server.faults = {}
        server.fail_next(1, 429)
        started = time.monotonic()
        [result] = _teacher(server).generate(["1+1="])
        assert result["completion"] == "2" and time.monotonic() - started >= 0.4  # not the 1 ms backoff
    with StandinServer(retry_after="30") as server:
        server.fail_next(2, 429)
        started = time.monotonic()
        [result] = _teacher(server, retry_after_max_s=0.2).generate(["1+1="])
        assert result["completion"] == "2" and time.monotonic() - started < 10  # 30 s asked, 0.2 s honoured


def test_timeouts_are_retried_then_rejected_with_their_attempts():
    with StandinServer(slow=(1.0, 1.0)) as server:
        [result] = _teacher(server, timeout_s=0.2, max_attempts=2).generate(["1+1="])
    assert result["finish_reason"] == "error" and result["attempts"] == 2 and result["status"] == 0
    assert "Timeout" in result["error"]
    assert len(server.requests) == 2


def test_every_prompt_ends_answered_or_rejected_under_faults():
    prompts = [f"{a}+{a}=" for a in range(40)] + ["poison 1+1="]
    with StandinServer(faults={429: 0.15, 500: 0.1, 502: 0.05}, retry_after="0", fail_prompts=("poison",),
                       seed=3) as server:  # fmt: skip
        results = _teacher(server, max_attempts=8).generate(prompts)
    assert [r["completion"] for r in results[:40]] == [str(2 * a) for a in range(40)]
    assert results[40]["error"] and results[40]["status"] == 500 and results[40]["attempts"] == 8
    retried = [r for r in results[:40] if r["attempts"] > 1]
    assert retried and sum(r["attempts"] for r in results) == len(server.requests)


def test_a_rate_limit_spaces_the_requests():
    with StandinServer() as server:
        started = time.monotonic()
        results = _teacher(server, requests_per_minute=120).generate([f"{a}+1=" for a in range(6)])
        elapsed = time.monotonic() - started
    assert all(r["completion"] for r in results)
    assert elapsed >= 1.5  # 2 per second: the last of six waits about two seconds
    # A worker with half of the job's limit keeps to half of it.
    with StandinServer() as server:
        teacher = EndpointTeacher(EndpointTeacherConfig(base_url=server.base_url, model="t", requests_per_minute=240),
                                  SamplingConfig(max_tokens=8), threads=4, share=0.5)  # fmt: skip
        started = time.monotonic()
        teacher.generate([f"{a}+1=" for a in range(6)])
        assert time.monotonic() - started >= 1.5


def test_an_unreachable_teacher_fails_the_probe_and_a_reachable_one_passes(standin, monkeypatch):
    from slmops.synthesis.endpoint_teacher import probe

    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"127.0.0.1:9/v1 cannot be reached .*nothing was asked"):
        probe(EndpointTeacherConfig(base_url="http://127.0.0.1:9/v1", model="t"))
    assert time.monotonic() - started < 10
    probe(EndpointTeacherConfig(base_url=standin.base_url, model="t"))
    assert not standin.requests  # the probe lists models; it buys no completion
