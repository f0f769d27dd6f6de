"""The predictor under load, through HTTP with the official `openai` client.

One int4 model with random weights in the Qwen2.5-0.5B shape (converted by
the conversion stage), built once per `make bench` run and shared by:

- `serving_concurrency8_speedup`: aggregate completion tokens/s of 8
  concurrent streams against 1 stream, same predictor, same run (target >= 2.5).
  Its details also hold the in-process alternatives: 8 requests through one
  batched `og.Generator` and through ORT GenAI's `og.Engine` (continuous
  batching), against one stream in process.
- `serving_http_overhead`: one stream through HTTP against a plain in-process
  ORT GenAI loop on the same model with the same threads (target >= 0.9).
- `serving_ttft`: time to first token, p95 at 8 concurrent streams against
  p95 at 1, with both p50s in the details.

Every stream asks for NEW_TOKENS tokens of a prompt the model decodes that far
without meeting EOS, greedy; tokens/s counts the whole request, prefill
included, in and out of process alike.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from slmops.bench.registry import Outcome, register

NEW_TOKENS = 128
STREAMS = 8
ROUNDS = 3  # of each load level, interleaved
PROMPTS = ["12+34=", "The answer is", "def add(a, b):", "Hello, world", "Once upon a time"]
READY = "SLMOPS_PREDICTOR_READY "
_BUILD: dict[str, Any] = {}  # how the model was made, for the details


@functools.cache
def checkpoint_folder() -> Path:
    """The Hugging Face checkpoint the int4 model is converted from, built once per process."""
    from slmops.bench.training import build_qwen_05b

    work = Path(tempfile.mkdtemp(prefix="slmops-bench-serving-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    hf_dir = build_qwen_05b(work / "qwen-0.5b")
    writes_text(hf_dir)
    return hf_dir


@functools.cache
def model_folder() -> Path:
    """The int4 Qwen2.5-0.5B-shaped model, built and converted once per process."""
    from slmops.conversion.olive_convert import convert

    hf_dir = checkpoint_folder()
    onnx_dir = hf_dir.parent / "int4"
    started = time.perf_counter()
    convert(hf_dir, onnx_dir, precision="int4", execution_provider="cpu")
    _BUILD["convert_seconds"] = round(time.perf_counter() - started, 1)
    _BUILD["int4_onnx_mb"] = round(sum(p.stat().st_size for p in onnx_dir.glob("model.onnx*")) / 1e6, 1)
    return onnx_dir


def writes_text(hf_dir: Path) -> None:
    """Zero the (tied) embedding rows past the tokenizer's vocabulary, so the model writes text.

    With random weights over 151936 ids and a tokenizer of a few hundred, nearly
    every generated id would decode to nothing, and a stream would send no text
    until its end. With those rows zero, their logits are 0 while the best of
    the real tokens' is positive, so greedy decoding picks real tokens. The
    shapes, and so the speed, stay Qwen2.5-0.5B's.
    """
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    known = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    for path in hf_dir.glob("*.safetensors"):
        tensors = load_file(path)
        if "model.embed_tokens.weight" in tensors:
            tensors["model.embed_tokens.weight"][known:] = 0
            save_file(tensors, path, metadata={"format": "pt"})


class InProcess:
    """The model in this process with the predictor's thread count: plain og loops."""

    def __init__(self, folder: Path):
        import onnxruntime_genai as og

        from slmops.core.model_files import usable_cores

        self.og = og
        self.threads = usable_cores()
        config = og.Config(str(folder))
        overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}}
        config.overlay(json.dumps(overlay))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)

    def ids(self, prompt: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(prompt)]

    def batched(self, prompt: str, rows: int) -> tuple[float, int]:
        """(seconds, tokens) for `rows` copies of the prompt in one og.Generator, greedy."""
        import numpy as np

        ids = self.ids(prompt)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + NEW_TOKENS, batch_size=rows, do_sample=False)
        started = time.perf_counter()
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(np.asarray([ids] * rows, dtype=np.int32))
        tokens = 0
        while not generator.is_done():
            generator.generate_next_token()
            tokens += rows
        seconds = time.perf_counter() - started
        del generator
        return seconds, tokens

    def engine(self, prompt: str, rows: int) -> tuple[float, int]:
        """(seconds, tokens) for `rows` requests through og.Engine (continuous batching), greedy."""
        import numpy as np

        ids = np.asarray(self.ids(prompt), dtype=np.int32)
        engine = self.og.Engine(self.model)
        requests = []
        started = time.perf_counter()
        for _ in range(rows):
            params = self.og.GeneratorParams(self.model)
            params.set_search_options(max_length=len(ids) + NEW_TOKENS, do_sample=False)
            request = self.og.Request(params)
            request.add_tokens(ids)
            engine.add_request(request)
            requests.append(request)
        tokens = 0
        while engine.has_pending_requests():
            engine.step()
            for request in requests:
                while request.has_unseen_tokens():
                    request.get_unseen_token()
                    tokens += 1
        seconds = time.perf_counter() - started
        del engine, requests
        return seconds, tokens

    def close(self) -> None:
        del self.tokenizer, self.model
        gc.collect()


class Server:
    """`python -m slmops.predictor` on the model, with the default limits."""

    def __init__(self, folder: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        env.pop("SLMOPS_PREDICTOR_API_KEY", None)
        self.data = tempfile.TemporaryDirectory(prefix="slmops-bench-predictor-")
        env["SLMOPS_DATA_DIR"] = self.data.name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "slmops.predictor", "--model-dir", str(folder), "--name", "bench",
             "--http-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        for line in self.process.stdout:
            if line.startswith(READY):
                self.url = line[len(READY) :].strip()
                break
        else:
            raise RuntimeError(f"the predictor exited with {self.process.wait()}")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def client(self) -> Any:
        import httpx
        import openai

        http = httpx.Client(trust_env=False, timeout=600)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, http_client=http)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.data.cleanup()


def stream_once(client: Any, prompt: str) -> tuple[float, float, int]:
    """(first-token seconds, total seconds, completion tokens) of one streamed completion."""
    started = time.perf_counter()
    first, tokens = None, 0
    stream = client.completions.create(
        model="bench", prompt=prompt, max_tokens=NEW_TOKENS, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - started
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first or 0.0, time.perf_counter() - started, tokens


def pick_prompt(local: InProcess) -> str:
    """A prompt the model decodes for NEW_TOKENS tokens without EOS (also the warm-up)."""
    for prompt in PROMPTS:
        _, tokens = local.batched(prompt, 1)
        if tokens == NEW_TOKENS:
            return prompt
    raise RuntimeError(f"every benchmark prompt meets EOS before {NEW_TOKENS} tokens")


@functools.cache
def measurements() -> dict[str, Any]:
    """Everything the three benchmarks report, measured once, load levels interleaved.

    The in-process model is loaded for its part of each round and released
    before the HTTP part, so the two never share the machine.
    """
    folder = model_folder()
    local = InProcess(folder)
    try:
        prompt, threads = pick_prompt(local), local.threads
    finally:
        local.close()
    results: dict[str, list[float]] = {k: [] for k in (
        "local_1", "local_batched_8", "local_engine_8", "http_1", "http_8", "ttft_1", "ttft_8")}  # fmt: skip
    for _ in range(ROUNDS):
        local = InProcess(folder)
        try:
            local.batched(prompt, 1)  # warm-up
            seconds, tokens = local.batched(prompt, 1)
            results["local_1"].append(tokens / seconds)
            seconds, tokens = local.batched(prompt, STREAMS)
            results["local_batched_8"].append(tokens / seconds)
            seconds, tokens = local.engine(prompt, STREAMS)
            results["local_engine_8"].append(tokens / seconds)
        finally:
            local.close()
        server = Server(folder)
        try:
            clients = [server.client() for _ in range(STREAMS)]
            for client in clients:
                client.models.list()  # connect
            stream_once(clients[0], prompt)  # warm-up
            for _ in range(2):
                first, total, tokens = stream_once(clients[0], prompt)
                results["http_1"].append(tokens / total)
                results["ttft_1"].append(first)
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=STREAMS) as pool:
                outs = list(pool.map(lambda c: stream_once(c, prompt), clients))
            wall = time.perf_counter() - started
            results["http_8"].append(sum(t for _, _, t in outs) / wall)
            results["ttft_8"].extend(first for first, _, _ in outs)
        finally:
            server.close()
    return {"prompt": prompt, "threads": threads, **results}


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _shape() -> dict[str, Any]:
    return {
        "shape": "qwen2 hidden 896, 24 layers, 14 heads, 2 kv heads, vocab 151936, tied embeddings "
        "(Qwen2.5-0.5B), random weights, int4 through the conversion stage",
        **_BUILD,
        "new_tokens": NEW_TOKENS,
        "rounds": f"{ROUNDS}, load levels interleaved; medians unless said",
    }


@register("serving_concurrency8_speedup")
def serving_concurrency8_speedup() -> Outcome:
    """Aggregate tokens/s, 8 concurrent streams vs 1, through HTTP with the openai client (target >= 2.5)."""
    m = measurements()
    one, eight = statistics.median(m["http_1"]), statistics.median(m["http_8"])
    local_1 = statistics.median(m["local_1"])
    return Outcome(
        value=eight, baseline=one, unit="tokens/s",
        value_label="http_8_streams_tokens_per_second", baseline_label="http_1_stream_tokens_per_second",
        details={
            **_shape(),
            "predictor_threads": m["threads"],
            "in_process_1_stream_tokens_per_second": round(local_1, 1),
            "in_process_batched_generator_8_tokens_per_second": round(statistics.median(m["local_batched_8"]), 1),
            "in_process_og_engine_8_tokens_per_second": round(statistics.median(m["local_engine_8"]), 1),
            "in_process_batched_generator_8_speedup": round(statistics.median(m["local_batched_8"]) / local_1, 2),
            "in_process_og_engine_8_speedup": round(statistics.median(m["local_engine_8"]) / local_1, 2),
            "target_ratio": ">= 2.5",
        },
    )  # fmt: skip


@register("serving_http_overhead")
def serving_http_overhead() -> Outcome:
    """Single-stream tokens/s through HTTP vs a plain in-process ORT GenAI loop (target >= 0.9)."""
    m = measurements()
    return Outcome(
        value=statistics.median(m["http_1"]), baseline=statistics.median(m["local_1"]), unit="tokens/s",
        value_label="http_1_stream_tokens_per_second", baseline_label="in_process_tokens_per_second",
        details={**_shape(), "prompt": m["prompt"], "threads": m["threads"], "target_ratio": ">= 0.9"},
    )  # fmt: skip


@register("serving_ttft")
def serving_ttft() -> Outcome:
    """Time to first token through HTTP: p95 at 8 concurrent streams vs p95 at 1 stream."""
    m = measurements()
    ms = {k: [v * 1000 for v in m[k]] for k in ("ttft_1", "ttft_8")}
    return Outcome(
        value=_p(ms["ttft_8"], 0.95), baseline=_p(ms["ttft_1"], 0.95), unit="ms",
        value_label="ttft_p95_8_streams_ms", baseline_label="ttft_p95_1_stream_ms",
        details={
            **_shape(),
            "ttft_p50_1_stream_ms": round(_p(ms["ttft_1"], 0.5), 1),
            "ttft_p95_1_stream_ms": round(_p(ms["ttft_1"], 0.95), 1),
            "ttft_p50_8_streams_ms": round(_p(ms["ttft_8"], 0.5), 1),
            "ttft_p95_8_streams_ms": round(_p(ms["ttft_8"], 0.95), 1),
            "samples": f"{len(ms['ttft_1'])} at 1 stream, {len(ms['ttft_8'])} at 8",
        },
    )  # fmt: skip
