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

EXIT_MODEL, EXIT_BIND = 2, 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m slmops.predictor",
        description="Serve a model (ONNX Runtime GenAI folder or Hugging Face checkpoint) "
        "on KServe's Open Inference Protocol v2 and an OpenAI-compatible API.",
    )
    parser.add_argument("--model-dir", required=True, help="model folder to serve")
    parser.add_argument("--name", default="", help="served model name (default: the folder's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8080, help="HTTP port; 0 picks a free one")
    parser.add_argument(
        "--grpc-port", type=int, default=0, help="KServe gRPC (OIP v2) port; 0 disables gRPC"
    )
    return parser.parse_args(argv)


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

    from slmops.predictor.server import bind, serve

    try:
        sock = bind(args.host, args.http_port)
    except OSError as exc:
        return _fail(
            EXIT_BIND, f"cannot listen on {args.host}:{args.http_port}: {exc.strerror or exc}"
        )

    from slmops.predictor.engines import load_engine

    try:
        engine = load_engine(model_dir)
    except Exception as exc:
        logging.getLogger(__name__).debug("load failed", exc_info=True)
        return _fail(EXIT_MODEL, f"cannot load the model in {str(model_dir)!r}: {exc}")
    try:
        serve(engine, name, sock, args.host, grpc_port=args.grpc_port)
    except OSError as exc:
        return _fail(EXIT_BIND, f"cannot serve: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
