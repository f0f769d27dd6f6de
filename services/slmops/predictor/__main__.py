"""`python -m slmops.predictor --model-dir DIR`: serve one model over HTTP.

Prints `SLMOPS_PREDICTOR_READY http://HOST:PORT` once the server answers.
Exit status: 0 after SIGTERM/SIGINT, 2 when the model folder is missing or
cannot be loaded, 3 when the port cannot be bound, 1 on any other failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from slmops.predictor.scheduler import Limits

EXIT_MODEL, EXIT_BIND = 2, 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m slmops.predictor",
        description="Serve a model (ONNX Runtime GenAI folder or Hugging Face checkpoint) "
        "on KServe's Open Inference Protocol v2 and an OpenAI-compatible API.",
    )
    parser.add_argument("--model-dir", required=True, help="model folder to serve")
    parser.add_argument("--name", default="", help="served model name (default: the folder's name)")
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind, HTTP and gRPC (default 127.0.0.1; 0.0.0.0 for every interface)",
    )  # fmt: skip
    parser.add_argument("--http-port", type=int, default=8080, help="HTTP port; 0 picks a free one")
    parser.add_argument("--grpc-port", type=int, default=0, help="KServe gRPC (OIP v2) port; 0 disables gRPC")
    parser.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=PATH",
        help="serve a LoRA adapter as model NAME (repeatable); adapters in the model folder's "
        "adapters/ load too",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (default: every usable core)"
    )
    limits = Limits()
    parser.add_argument("--max-concurrency", type=int, default=limits.max_concurrency,
                        help="sequences decoded at once (default %(default)s)")  # fmt: skip
    parser.add_argument("--max-queue", type=int, default=limits.max_queue,
                        help="requests waiting for a slot before 429 (default %(default)s)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=limits.max_tokens_cap,
                        help="the largest max_tokens a request may ask for (default %(default)s)")  # fmt: skip
    parser.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes,
                        help="request bodies past this get 413 (default %(default)s)")  # fmt: skip
    parser.add_argument("--request-timeout", type=float, default=limits.request_timeout_s,
                        help="seconds a request may wait and run (default %(default)s)")  # fmt: skip
    parser.add_argument("--batch-window-ms", type=float, default=limits.batch_window_s * 1000,
                        help="when idle, the longest a burst of requests may take to gather into one "
                        "batch before the first starts (default %(default)g: it starts at once, and "
                        "later arrivals join its batch at the next step; a window ends sooner once no "
                        f"request came for {limits.batch_gap_s * 1000:g} ms)")  # fmt: skip
    parser.add_argument("--merge-hold-ms", type=float, default=limits.merge_hold_s * 1000,
                        help="while requests run, the longest a burst of new ones is held so it joins "
                        "their batch in one restart (default %(default)g)")  # fmt: skip
    parser.add_argument(
        "--api-key-env", default="SLMOPS_PREDICTOR_API_KEY",
        help="environment variable holding the API key clients must send as a bearer token "
        "(default %(default)s; unset or empty: no key)",
    )  # fmt: skip
    parser.add_argument("--api-key-file", default="",
                        help="file holding the API key (a mounted secret); wins over --api-key-env")  # fmt: skip
    parser.add_argument("--docs", action="store_true",
                        help="also serve the OpenAPI schema and its pages (/openapi.json, /docs), "
                        "behind the API key like every route but the probes")  # fmt: skip
    args = parser.parse_args(argv)
    for flag in ("max_concurrency", "max_queue", "max_tokens", "max_body_bytes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.request_timeout <= 0:
        parser.error("--request-timeout must be positive")
    return args


def adapters_of(flags: list[str]) -> dict[str, Path]:
    """{name: path} from NAME=PATH flags; ValueError naming a malformed one."""
    found: dict[str, Path] = {}
    for flag in flags:
        name, sep, path = flag.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter {flag!r}: expected NAME=PATH")
        found[name] = Path(path).expanduser().resolve()
    return found


def _fail(code: int, message: str) -> int:
    print(f"slmops.predictor: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # kserve parses sys.argv when imported; keep our flags away from its parser.
    sys.argv = sys.argv[:1]
    model_dir = Path(args.model_dir).expanduser().resolve()
    if not model_dir.is_dir():
        return _fail(EXIT_MODEL, f"model folder {str(model_dir)!r} does not exist")
    name = args.name or model_dir.name

    from slmops.core.net import bind
    from slmops.predictor.server import serve

    try:
        sock = bind(args.host, args.http_port)
    except OSError as exc:
        return _fail(EXIT_BIND, f"cannot listen on {args.host}:{args.http_port}: {exc.strerror or exc}")

    from slmops.predictor.guard import load_api_key
    from slmops.predictor.loading import load_engine
    from slmops.predictor.served import Served

    try:
        api_key = load_api_key(args.api_key_env, args.api_key_file)
        adapters = adapters_of(args.adapter)
    except (OSError, ValueError) as exc:
        return _fail(1, str(exc))
    limits = Limits(
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        max_tokens_cap=args.max_tokens,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout,
        batch_window_s=max(0.0, args.batch_window_ms) / 1000,
        merge_hold_s=max(0.0, args.merge_hold_ms) / 1000,
    )
    try:
        engine = load_engine(model_dir, threads=args.threads, adapters=adapters)
        served = Served.start(name, engine, limits)
    except Exception as exc:
        logging.getLogger(__name__).debug("load failed", exc_info=True)
        return _fail(EXIT_MODEL, f"cannot load the model in {str(model_dir)!r}: {exc}")
    try:
        serve(served, sock, args.host, grpc_port=args.grpc_port, api_key=api_key, docs=args.docs)
    except OSError as exc:
        return _fail(EXIT_BIND, f"cannot serve: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
