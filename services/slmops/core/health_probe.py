"""A container's own health probe: `python -m slmops.core.health_probe --port 50052`.

The kubelet's `grpc:` probe speaks plain text only, so a service that serves
TLS (or mutual TLS) is probed with this instead (an exec probe, see the Helm
chart's _grpc_auth.tpl): it asks grpc.health.v1.Health on 127.0.0.1 with the
credentials the settings name (core/auth.py), expecting the certificate to
name `--server-name` unless SLMOPS_TLS_SERVER_NAME names another, prints the
status and exits 0 when it is SERVING, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slmops.core import auth


def check(port: int, server_name: str = "", timeout: float = 4.0) -> str:
    """SERVING, NOT_SERVING, or DOWN (<code>) when the server could not be asked."""
    target = f"127.0.0.1:{port}"
    credentials = auth.channel_credentials()
    if credentials is None:
        opened = grpc.insecure_channel(target)
    else:
        default = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        opened = grpc.secure_channel(target, credentials, auth.channel_options() or default)
    with opened as channel:
        try:
            request = health_pb2.HealthCheckRequest()
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
        except grpc.RpcError as exc:
            return f"DOWN ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slmops.core.health_probe",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--port", type=int, required=True, help="the service's gRPC port on 127.0.0.1")
    parser.add_argument("--server-name", default="",
                        help="name in the service's certificate (its Service address)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        status = check(args.port, args.server_name, args.timeout)
    except auth.AuthConfigError as exc:
        status = f"DOWN ({exc})"
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
