"""A deterministic OpenAI-compatible HTTP server that stands in for a remote teacher.

For tests and offline runs, where a real (paid, remote) teacher cannot be
reached. It answers `/v1/completions` and `/v1/chat/completions` (also under
`/openai/v1/`), `/v1/models` and a Prometheus `/metrics` with
`process_resident_memory_bytes`. Answers come from `answer(model, prompt)`;
by default it solves "a+b", "a-b" and "a*b" found in the prompt. One token is
one character; given a `tokenizer` folder, one token is a token of that
tokenizer, with its exact bytes. Log-probabilities, when asked for, are fixed:
the answer's token first (-0.01), then the same alternatives every time
(-4, -5, ...). `fail_next(n, status)` makes the next n completion requests fail
with that HTTP status, to exercise clients' retries. Faults at chosen rates
(`faults={429: 0.1, 500: 0.05}`, seeded): a 429 carries `Retry-After:
retry_after` when set; `slow=(rate, seconds)` delays that share of answers;
a prompt containing one of `fail_prompts` always gets a 500. Every request is
recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Answer = Callable[[str, str], str]
Piece = tuple[str, bytes]  # a token's text and its bytes
_EXPR = re.compile(r"(-?\d+)\s*([+*-])\s*(-?\d+)")


def arithmetic_answer(model: str, prompt: str) -> str:
    """The value of the first a+b, a-b or a*b in the prompt; "unknown" when there is none."""
    match = _EXPR.search(prompt)
    if not match:
        return "unknown"
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    return str({"+": a + b, "-": a - b, "*": a * b}[op])


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class _Server(ThreadingHTTPServer):
    request_queue_size = (
        512  # a client opening many connections at once is queued, not reset, as by a real server
    )


class StandinServer:
    """Start with `with StandinServer() as server:`; point clients at server.base_url."""

    def __init__(
        self,
        answer: Answer = arithmetic_answer,
        *,
        host: str = "127.0.0.1",
        delay_s: float = 0.0,
        tokenizer: str | None = None,
        faults: dict[int, float] | None = None,
        retry_after: str = "",
        slow: tuple[float, float] = (0.0, 0.0),
        fail_prompts: tuple[str, ...] = (),
        seed: int = 0,
        capacity: int = 0,
    ):
        import random

        self.answer = answer
        self.delay_s = delay_s
        self.faults, self.retry_after, self.slow = dict(faults or {}), retry_after, slow
        self.fail_prompts = fail_prompts
        self._rng = random.Random(seed)
        # At most `capacity` completions at once (0: no bound); one more gets a 429, as a provider's would.
        self.capacity, self.in_flight, self.peak_in_flight = capacity, 0, 0
        self._tokenizer = None
        self._alternatives: list[Piece] = [(c, c.encode()) for c in "0123456789?"]
        if tokenizer:
            self._load_tokenizer(tokenizer)
        self.requests: list[dict[str, Any]] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._httpd = _Server((host, 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def _draw_fault(self, body: dict[str, Any]) -> int | None:
        """A failure status for this request: always for fail_prompts, else drawn at the fault rates."""
        text = json.dumps(body.get("prompt", body.get("messages", "")))
        if any(marker in text for marker in self.fail_prompts):
            return 500
        with self._lock:
            draw = self._rng.random()
        for status, rate in self.faults.items():
            if draw < rate:
                return status
            draw -= rate
        return None

    def _admit(self) -> int | None:
        """None when a slot is free (taken now), 429 when `capacity` completions are under way."""
        with self._lock:
            if self.capacity and self.in_flight >= self.capacity:
                return 429
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return None

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _slow_now(self) -> float:
        rate, seconds = self.slow
        with self._lock:
            return seconds if rate and self._rng.random() < rate else 0.0

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    # -- answers ----------------------------------------------------------

    def _load_tokenizer(self, folder: str) -> None:
        from transformers import AutoTokenizer

        from slmops.synthesis.token_table import TokenTable

        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._table = TokenTable(self._tokenizer)
        pieces = (self._piece(i) for i in range(len(self._tokenizer)))
        # Alternatives whose text is whole UTF-8, as an endpoint can show them.
        whole = [p for p in pieces if p[1] and p[0] == p[1].decode(errors="replace")]
        self._alternatives = whole[:32]

    def _piece(self, token_id: int) -> Piece:
        return self._tokenizer.decode([token_id]), self._table.bytes_of(token_id) or b""

    def _pieces(self, text: str) -> list[Piece]:
        if self._tokenizer is None:
            return [(c, c.encode()) for c in text]
        return [self._piece(i) for i in self._tokenizer.encode(text, add_special_tokens=False)]

    def _top(self, piece: Piece, k: int) -> list[tuple[str, bytes, float]]:
        """Deterministic top-k log-probabilities: the answer's token first."""
        others = [p for p in self._alternatives if p != piece][: max(0, k - 1)]
        return [(*piece, -0.01)] + [(*p, -4.0 - i) for i, p in enumerate(others)]

    def complete(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        model = str(body.get("model", ""))
        if chat:
            prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        else:
            prompt = str(body.get("prompt", ""))
        text = self.answer(model, prompt)
        finish = "stop"
        for stop in body.get("stop") or []:
            if stop in text:
                text = text[: text.index(stop)]
        pieces = self._pieces(text)
        max_tokens = int(body.get("max_tokens") or 16)
        if len(pieces) > max_tokens:
            pieces, finish = pieces[:max_tokens], "length"
            text = b"".join(data for _, data in pieces).decode(errors="replace")
        n = max(1, int(body.get("n") or 1))  # n answers, the same each time
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": n * len(pieces),
            "total_tokens": len(prompt) + n * len(pieces),
        }
        base = {
            "id": "cmpl-" + uuid.uuid4().hex[:12],
            "created": int(time.time()),
            "model": model,
            "usage": usage,
        }
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": text},
            }
            if body.get("logprobs"):
                k = int(body.get("top_logprobs") or 1)
                content = [_chat_logprob(p, self._top(p, k)) for p in pieces]
                choice["logprobs"] = {"content": content}
            return {
                **base,
                "object": "chat.completion",
                "choices": [{**choice, "index": i} for i in range(n)],
            }
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        if body.get("logprobs"):
            k = int(body["logprobs"])
            offsets = [sum(len(t) for t, _ in pieces[:i]) for i in range(len(pieces))]
            choice["logprobs"] = {
                "tokens": [t for t, _ in pieces],
                "token_logprobs": [-0.01] * len(pieces),
                "top_logprobs": [{t: lp for t, _, lp in self._top(p, k)} for p in pieces],
                "text_offset": offsets,
            }
        return {**base, "object": "text_completion", "choices": [{**choice, "index": i} for i in range(n)]}


def _chat_logprob(piece: Piece, top: list[tuple[str, bytes, float]]) -> dict[str, Any]:
    return {
        "token": piece[0],
        "logprob": top[0][2],
        "bytes": list(piece[1]),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(b)} for t, b, lp in top],
    }


def _handler(server: StandinServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stalls

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return None

        def _send(self, status: int, payload: Any, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:  # fmt: skip
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?")[0].removeprefix("/openai")
            if path == "/metrics":
                text = (
                    "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                    "# TYPE process_resident_memory_bytes gauge\n"
                    f"process_resident_memory_bytes {float(_rss_bytes())}\n"
                )
                self._send(200, text.encode(), "text/plain; version=0.0.4")
            elif path == "/standin/stats":  # for a caller in another process
                with server._lock:
                    statuses = [r["status"] for r in server.requests]
                    times = [r["time"] for r in server.requests]
                self._send(200, {"requests": len(statuses), "ok": statuses.count(200),
                                 "status_429": statuses.count(429), "peak_in_flight": server.peak_in_flight,
                                 "last_request_time": max(times, default=0.0)})  # fmt: skip
            elif path == "/v1/models":
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": "standin", "object": "model", "owned_by": "slmops"}],
                    },
                )
            else:
                self._send(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

        def do_POST(self) -> None:
            path = self.path.split("?")[0].removeprefix("/openai")
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
                return
            chat = path == "/v1/chat/completions"
            if path not in ("/v1/completions", "/v1/chat/completions"):
                self._send(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
                return
            failure = server._take_failure() or server._draw_fault(body) or server._admit()
            server._record(
                {
                    "path": path,
                    "model": body.get("model"),
                    "body": body,
                    "traceparent": self.headers.get("traceparent"),
                    "authorization": self.headers.get("authorization"),
                    "status": failure or 200,
                    "time": time.time(),
                }
            )
            if failure:
                headers = {"Retry-After": server.retry_after} if failure == 429 and server.retry_after else {}
                self._send(failure, {"error": {"message": f"stand-in failure ({failure})", "type": "server_error"}},
                           headers=headers)  # fmt: skip
                return
            try:
                if server.delay_s or server.slow[0]:
                    time.sleep(server.delay_s + server._slow_now())
                answer = server.complete(body, chat)
                if body.get("stream"):
                    self._stream(answer, chat, bool((body.get("stream_options") or {}).get("include_usage")))
                else:
                    self._send(200, answer)
            finally:
                server._leave()

        def _stream(self, answer: dict[str, Any], chat: bool, include_usage: bool) -> None:
            """The answer as server-sent events, one chunk per character (a token, for the stand-in's
            purposes), then the usage chunk when asked, then [DONE]."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            choice = answer["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            kind = "chat.completion.chunk" if chat else "text_completion"
            base = {
                "id": answer["id"],
                "created": answer["created"],
                "model": answer["model"],
                "object": kind,
            }

            def event(payload: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.flush()

            for i, char in enumerate(text):
                if chat:
                    delta = {"content": char, **({"role": "assistant"} if i == 0 else {})}
                    event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                else:
                    event({**base, "choices": [{"index": 0, "text": char, "finish_reason": None}]})
            last = {"index": 0, "finish_reason": choice["finish_reason"]}
            event({**base, "choices": [{**last, "delta": {}} if chat else {**last, "text": ""}]})
            if include_usage:
                event({**base, "choices": [], "usage": answer["usage"]})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def main(argv: list[str] | None = None) -> None:
    """`python -m slmops.testing.standin`: serve the stand-in in its own process until stopped."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m slmops.testing.standin", description=main.__doc__)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--capacity", type=int, default=0, help="completions at once; one more gets a 429")
    parser.add_argument("--retry-after", default="", help="Retry-After sent with a 429")
    args = parser.parse_args(argv)
    with StandinServer(delay_s=args.delay, capacity=args.capacity, retry_after=args.retry_after) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
