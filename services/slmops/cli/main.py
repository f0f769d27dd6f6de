"""The `slmops` command: a gRPC client of the services, as kubectl is of an API server.

This module builds the parser from the command modules (each adds its group of
subcommands with `add_commands`) and runs the chosen command, turning the errors
a user can act on into one line and an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from slmops.cli import (
    bench_commands,
    convert_commands,
    jobs_commands,
    list_commands,
    pipeline_commands,
    serving_commands,
    stack_commands,
    synth_commands,
    train_commands,
)
from slmops.core import settings, tracing
from slmops.core.errors import SlmopsError

# The command modules, in the order `slmops --help` lists their commands.
COMMAND_MODULES = (
    stack_commands,  # up, down, status
    jobs_commands,  # lineage, get, cancel, logs, watch
    list_commands,  # list
    synth_commands,  # synth
    train_commands,  # train
    convert_commands,  # convert
    serving_commands,  # serve, deploy, promote, rollback
    bench_commands,  # bench
    pipeline_commands,  # pipeline run|validate|get|schema
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slmops", description="Operate small language models.")
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"state folder (default ${settings.VARS['data_dir'].env} or ~/.slmops)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir:
        os.environ[settings.VARS["data_dir"].env] = str(Path(args.data_dir).resolve())
    tracing.setup_tracing("cli")
    try:
        with tracing.tracer().start_as_current_span(f"cli.{args.command}"):
            return int(args.func(args) or 0)
    except grpc.RpcError as exc:
        details = exc.details() or ""
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "; spec." in details:
            details = "\n  " + details.replace("; spec.", "\n  spec.")  # one problem per line
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            details += " (no answer in time: is the service running? `slmops status` shows the local stack)"
        print(f"error: {exc.code().name}: {details}", file=sys.stderr)
        return 2 if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else 1
    except SlmopsError as exc:  # errors a user can act on, without a stack trace
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown_tracing()


if __name__ == "__main__":
    sys.exit(main())
