"""Start-up of the predictor: one engine behind KServe's ModelServer plus our routes.

The HTTP socket is bound here, before anything else starts, so a port in use
is reported at once and port 0 picks a free one. The OIP v2 gRPC server, when
on, binds the same host. KServe's model repository routes (load and unload,
HTTP and gRPC) are not served: a predictor serves the one model it started
with. The OpenAPI schema and its pages (`/openapi.json`, `/docs`) are off
unless asked for. When the server answers `/v2/health/ready`, one line
`SLMOPS_PREDICTOR_READY http://HOST:PORT` goes to stdout. SIGTERM and SIGINT
stop the server gracefully (exit status 0).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter
from tenacity import Retrying, retry_if_result, stop_after_delay, stop_when_event_set, wait_fixed

from slmops.core import tracing
from slmops.predictor import guard, metrics
from slmops.predictor.served import Served

READY_PREFIX = "SLMOPS_PREDICTOR_READY "
log = logging.getLogger(__name__)


def model_parameters(model_dir: str | Path) -> int | None:
    """Parameter count: the artifact manifest's metric, else the safetensors headers, else None."""
    folder = Path(model_dir)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        value = json.loads(manifest.read_text(encoding="utf-8")).get("metrics", {}).get("parameters")
        if value:
            return int(value)
    if any(folder.glob("*.safetensors")):
        from slmops.core.model_files import count_parameters

        return count_parameters(folder)
    return None


def info_router(served: Served) -> APIRouter:
    """GET /slmops/v1/info: what this predictor serves, its limits and how much memory it holds
    (behind the API key, like everything but the probes)."""
    engine, name = served.engine, served.name
    parameters = model_parameters(engine.model_dir)
    router = APIRouter()

    async def info() -> dict[str, Any]:
        return {
            "model": name,
            "engine": engine.name,
            "model_dir": Path(engine.model_dir).name,  # the folder's name, never where it lies
            "adapters": list(engine.adapters),
            "threads": getattr(engine, "threads", None),
            "limits": dataclasses.asdict(served.limits),
            "in_flight": served.scheduler.busy,
            "waiting": served.scheduler.waiting,
            "rss_bytes": metrics.rss_bytes(),
            "parameters": parameters,
        }

    router.add_api_route("/slmops/v1/info", info, methods=["GET"])
    return router


def enable_docs(app: Any) -> None:
    """Serve Swagger UI at `/docs` beside `/openapi.json` (KServe's app leaves `/docs` off)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    if app.docs_url:
        return
    app.docs_url = "/docs"
    page = get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - docs")
    app.add_api_route("/docs", lambda: page, include_in_schema=False)


def url_of(host: str, port: int) -> str:
    """The URL a local client uses: a wildcard bind address is reached on loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _announce_when_ready(url: str, stop: threading.Event, timeout_s: float = 120.0) -> None:
    """Print the READY line once `/v2/health/ready` answers 200; give up at the deadline or on stop."""
    ready = Retrying(stop=stop_after_delay(timeout_s) | stop_when_event_set(stop), wait=wait_fixed(0.05),
                     retry=retry_if_result(lambda status: status != 200),
                     retry_error_callback=lambda _: None)  # fmt: skip
    with httpx.Client(timeout=2, trust_env=False) as client:  # never via a proxy

        def status() -> int | None:
            try:
                return client.get(f"{url}/v2/health/ready").status_code
            except httpx.HTTPError:
                return None

        if ready(status) == 200:
            print(READY_PREFIX + url, flush=True)
        elif not stop.is_set():
            log.error("the predictor did not answer %s/v2/health/ready within %.0f s", url, timeout_s)


def _log_to_stderr() -> None:
    """KServe's logging set-up, with access logs on stderr too: stdout carries only the READY line."""
    from kserve import logging as kserve_logging

    config = copy.deepcopy(kserve_logging.KSERVE_LOG_CONFIG)
    config["handlers"]["uvicorn_access"]["stream"] = "ext://sys.stderr"
    kserve_logging.configure_logging(config)


def _grpc_server(served: Served, server: Any, host: str, port: int, api_key: str | None) -> Any:
    """KServe's OIP v2 gRPC server on host:port, with the API key checked when there is one."""
    import grpc
    from grpc import aio
    from kserve.model_server import args as kserve_args
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer

    class Servicer(InferenceServicer):
        """KServe's servicer without the model repository calls: they answer UNIMPLEMENTED."""

        async def RepositoryModelLoad(self, request: Any, context: Any) -> None:  # noqa: N802 (gRPC's name)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "model repository calls are not served")

        async def RepositoryModelUnload(self, request: Any, context: Any) -> None:  # noqa: N802
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "model repository calls are not served")

    class HostGRPCServer(GRPCServer):
        """GRPCServer.start binds every interface and takes no interceptor of ours."""

        async def start(self, max_workers: int) -> None:
            from concurrent import futures

            interceptors = [LoggingInterceptor(), ExceptionToStatusInterceptor()]
            if api_key:
                interceptors.insert(0, guard.grpc_interceptor(api_key))
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=interceptors
            )
            servicer = Servicer(self._data_plane, self._model_repository_extension)
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
            address = f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"
            if self._server.add_insecure_port(address) == 0:
                raise OSError(f"cannot listen on {address} for gRPC")
            await self._server.start()
            await self._server.wait_for_termination()

    return HostGRPCServer(port, server.dataplane, server.model_repository_extension,
                          kwargs=vars(kserve_args), grace_period=5)  # fmt: skip


def serve(
    served: Served,
    sock: socket.socket,
    host: str,
    grpc_port: int = 0,
    api_key: str | None = None,
    docs: bool = False,
) -> None:
    """Serve `served` on the bound socket (and gRPC on grpc_port when > 0) until SIGTERM/SIGINT;
    `docs` also serves `/openapi.json` and `/docs`."""
    from fastapi.responses import JSONResponse

    from slmops.predictor.lean import import_kserve

    import_kserve()  # before anything imports KServe in full
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    from slmops.predictor.model import Busy, GenerationModel
    from slmops.predictor.openai_api import make_router

    tracing.setup_tracing("predictor")
    metrics.ensure_process_collector()
    _log_to_stderr()
    model = GenerationModel(served)
    model.load()
    # Each adapter under its own name too, on OIP v2 (REST and gRPC) as on the OpenAI routes.
    adapter_models = [GenerationModel(served, adapter) for adapter in served.engine.adapters]
    for adapter_model in adapter_models:
        adapter_model.load()
    # Our routes first: for GET /v1/models the OpenAI list wins over KServe's v1 protocol.
    app.include_router(make_router(served))
    app.include_router(info_router(served))
    app.add_middleware(guard.Guard, api_key=api_key, max_body_bytes=served.limits.max_body_bytes, docs=docs)

    async def busy(_request: Any, exc: Busy) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=429,
                            headers={"Retry-After": str(exc.retry_after)})  # fmt: skip

    app.add_exception_handler(Busy, busy)

    port = sock.getsockname()[1]
    server = ModelServer(http_port=port, grpc_port=grpc_port or 8081, enable_grpc=grpc_port > 0)
    for served_model in (model, *adapter_models):
        server.register_model(served_model)
        served_model.start()
    rest = RESTServer(
        FASTAPI_APP_IMPORT_STRING,
        server.dataplane,
        server.model_repository_extension,
        port,
        grace_period=10,
    )
    rest.config.host = host
    stop = threading.Event()

    async def run_rest() -> None:
        rest.create_application()
        if docs:
            enable_docs(app)
        try:
            # RESTServer.start() binds its own socket; serve ours (kserve 0.21 internals).
            await rest._server.serve(sockets=[sock])
        finally:
            stop.set()
            if server._grpc_server is not None:
                await server._grpc_server.stop(signal.SIGTERM)

    def on_signal(_sig: int, _frame: object) -> None:
        rest._server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    servers = [run_rest()]
    if grpc_port > 0:
        server._grpc_server = _grpc_server(served, server, host, grpc_port, api_key)
        servers.append(server._grpc_server.start(server.max_threads))
    threading.Thread(target=_announce_when_ready, args=(url_of(host, port), stop), daemon=True).start()

    async def main() -> None:
        server.setup_event_loop()
        await asyncio.gather(*servers)

    try:
        asyncio.run(main())
    finally:
        stop.set()
        model.stop()
        served.close()
        tracing.shutdown_tracing()
        sys.stdout.flush()
