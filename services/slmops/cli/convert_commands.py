"""`slmops convert`: export a model to ONNX Runtime GenAI and quantize it; the flags and the spec."""

from __future__ import annotations

import argparse
from typing import Any

from slmops.api.v1 import conversion_pb2
from slmops.cli.common import enum_choices, job_flags, overrides, run_job, uri


def _adapter_uri(text: str) -> str:
    """NAME=PATH keeps its name; a path or URI alone is made absolute."""
    name, sep, rest = text.partition("=")
    if sep and name and "/" not in name and ":" not in name:
        return f"{name}={uri(rest)}"
    return uri(text)


def convert_spec(args: argparse.Namespace) -> conversion_pb2.ConversionSpec:
    return conversion_pb2.ConversionSpec(
        model_uri=uri(args.model),
        precision=conversion_pb2.Precision.Value(args.precision.upper()),
        execution_provider=conversion_pb2.ExecutionProvider.Value(args.execution_provider.upper()),
        output_uri=args.output or "",
        foundry_local_package=args.foundry_local,
        adapter_uris=[_adapter_uri(a) for a in args.adapter],
        merge_adapters=args.merge_adapter,
        extra_options=overrides(args.option),
        verification=conversion_pb2.VerificationSpec(
            min_token_agreement=args.min_token_agreement,
            max_logits_rel_error=args.max_logits_error,
            max_kl=args.max_kl,
            new_tokens=args.verify_tokens,
        ),
    )


def cmd_convert(args: argparse.Namespace) -> int:
    spec = convert_spec(args)
    return run_job("conversion", "ConversionJob", conversion_pb2.CreateConversionJobRequest(spec=spec), args)[
        1
    ]


def add_commands(sub: Any) -> None:
    p = sub.add_parser("convert", help="export to ONNX Runtime GenAI and quantize (Olive)")
    p.add_argument("--model", required=True)
    p.add_argument("--precision", default="int4", choices=enum_choices(conversion_pb2.Precision))
    p.add_argument(
        "--execution-provider", default="cpu", choices=enum_choices(conversion_pb2.ExecutionProvider)
    )
    p.add_argument("--foundry-local", action="store_true", help="also package the model for Foundry Local")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[NAME=]URI",
        help="a LoRA adapter artifact, built as adapters/NAME.onnx_adapter (repeatable)",
    )
    p.add_argument(
        "--merge-adapter", action="store_true", help="merge the one --adapter into the model instead"
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model builder option, e.g. int4_block_size=32 (repeatable; overrides the defaults)",
    )
    p.add_argument(
        "--min-token-agreement",
        type=float,
        default=0.0,
        help="verification: greedy token agreement with the source (0: the precision's default)",
    )
    p.add_argument(
        "--max-logits-error",
        type=float,
        default=0.0,
        help="verification: logits relative error (0: the precision's default)",
    )
    p.add_argument(
        "--max-kl",
        type=float,
        default=0.0,
        help="verification: next-token KL divergence (0: the precision's default)",
    )
    p.add_argument("--verify-tokens", type=int, default=0, help="verification: greedy tokens per prompt (16)")
    job_flags(p)
    p.set_defaults(func=cmd_convert)
