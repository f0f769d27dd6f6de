"""Synthesis throughput against an endpoint with a known capacity.

The endpoint is the OpenAI-compatible stand-in (slmops.testing.standin), in a
process of its own as a remote teacher would be, with a fixed 200 ms latency
per request and room for 32 requests at once (a 33rd gets a 429): at most 160
requests/s. The synthesis job (`synthesis.job.run`: Ray
Data, the asyncio teacher with 32 requests in flight, the checkpoint, the
dataset written and sealed) answers PROMPTS prompts; the Ray head is started
first and not timed.

- `synthesis_speedup_vs_sequential`: the job's samples/s over those of a plain
  loop asking the same endpoint one prompt at a time (SEQUENTIAL prompts).
- `synthesis_capacity_utilization`: the job's requests/s (retries included)
  over the endpoint's 160 requests/s, from the job's start to its end (the
  workers' start and the dataset's writing included).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slmops.bench.registry import Outcome, register
from slmops.bench.training import local_ray

LATENCY_S = 0.2
CAPACITY = 32
PROMPTS = 9600  # about a minute at capacity: the workers' start (a few seconds) counts, as in a real job, but does not dominate
SEQUENTIAL = 30
SHARDS = 4


@functools.cache
def measurements() -> dict[str, Any]:
    import httpx
    import openai

    from slmops.core import artifacts
    from slmops.synthesis.job import run

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-synth-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i % 97}+{i // 97}="}) + "\n" for i in range(PROMPTS)))
    # The endpoint runs in its own process, as a remote teacher would: it shares no interpreter with the job.
    endpoint = subprocess.Popen([sys.executable, "-m", "slmops.testing.standin", "--delay", str(LATENCY_S),
                                 "--capacity", str(CAPACITY), "--retry-after", str(LATENCY_S)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        base_url = endpoint.stdout.readline().strip()
        client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
        started = time.perf_counter()
        for i in range(SEQUENTIAL):
            client.completions.create(model="teacher", prompt=f"{i}+1=", max_tokens=8)
        sequential = SEQUENTIAL / (time.perf_counter() - started)
        before = httpx.get(f"{base_url.removesuffix('/v1')}/standin/stats").json()
        config = {
            "prompts_uri": artifacts.to_uri(prompts),
            "teacher": {"kind": "endpoint", "base_url": base_url, "model": "teacher", "max_concurrency": CAPACITY},
            "sampling": {"max_tokens": 8}, "num_shards": SHARDS, "max_reject_fraction": 1.0,
        }  # fmt: skip
        with local_ray():
            import ray

            ray.data.DataContext.get_current()  # Ray Data loaded before the clock starts
            started, wall = time.perf_counter(), time.time()
            result = run(config, str(work / "dataset"), lambda *a, **k: None)
            seconds = time.perf_counter() - started
        after = httpx.get(f"{base_url.removesuffix('/v1')}/standin/stats").json()
    finally:
        endpoint.terminate()
        endpoint.wait(10)
    metrics = result["metrics"]
    requests = after["requests"] - before["requests"]
    return {
        "sequential_samples_per_second": sequential,
        "pipeline_samples_per_second": metrics["accepted"] / seconds,
        "pipeline_requests_per_second": requests / seconds,
        "capacity_requests_per_second": CAPACITY / LATENCY_S,
        "seconds": seconds, "prompts": PROMPTS, "accepted": metrics["accepted"], "requests": requests,
        "turned_away_429": after["status_429"] - before["status_429"], "peak_in_flight": after["peak_in_flight"],
        "teacher_seconds": metrics["teacher_seconds"],
        # From the job's start to its last request: what the workers' start costs, without the dataset's writing.
        "requests_per_second_until_last_request": requests / (after["last_request_time"] - wall),
    }  # fmt: skip


@register("synthesis_speedup_vs_sequential")
def synthesis_speedup_vs_sequential() -> Outcome:
    """The synthesis job's samples/s over a sequential loop's, against a 200 ms endpoint with room for 32."""
    m = measurements()
    return Outcome(m["pipeline_samples_per_second"], m["sequential_samples_per_second"], "samples/s",
                   value_label="synthesis job", baseline_label="sequential loop", details=m)  # fmt: skip


@register("synthesis_capacity_utilization")
def synthesis_capacity_utilization() -> Outcome:
    """The synthesis job's requests/s over the endpoint's capacity (32 in flight at 200 ms: 160/s)."""
    m = measurements()
    return Outcome(m["pipeline_requests_per_second"], m["capacity_requests_per_second"], "requests/s",
                   value_label="synthesis job", baseline_label="endpoint capacity", details=m)  # fmt: skip
