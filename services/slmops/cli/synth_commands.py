"""`slmops synth`: a teacher answers a prompts file into a dataset; the flags and the spec they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from slmops.api.v1 import common_pb2, synthesis_pb2
from slmops.cli.common import job_flags, labels, run_job, uri

REFERENCE_MATCHES = ("exact", "normalized", "contains")
DEDUP = ("exact", "near")


def answer_filters(args: argparse.Namespace) -> synthesis_pb2.AnswerFilters:
    """AnswerFilters of the filter flags; the JSON schema is the text of the --json-schema file."""
    schema = ""
    if args.json_schema:
        try:
            schema = Path(args.json_schema).read_text(encoding="utf-8")
        except OSError as exc:
            raise SystemExit(
                f"error: --json-schema: cannot read {args.json_schema}: {exc.strerror}"
            ) from None
    return synthesis_pb2.AnswerFilters(
        keep_empty=args.keep_empty, drop_truncated=args.filter_truncated,
        refusal_patterns=args.refusal_pattern, keep_refusals=args.keep_refusals,
        min_chars=args.min_length, max_chars=args.max_length, json_schema=schema,
        reference_column=args.reference_column or "", reference_match=args.reference_match or "",
        duplicates=args.dedup or "",
    )  # fmt: skip


def synth_spec(args: argparse.Namespace) -> synthesis_pb2.SynthesisSpec:
    """The SynthesisSpec of `slmops synth` flags (0 and empty leave the service's defaults)."""
    teacher: dict[str, Any] = {}
    if args.teacher_url:
        if not args.teacher_model:
            raise SystemExit(
                "slmops synth: --teacher-url needs --teacher-model (the model name the endpoint serves)"
            )
        teacher["endpoint"] = synthesis_pb2.TeacherEndpoint(
            base_url=args.teacher_url, model=args.teacher_model, api_key_env=args.api_key_env or "", chat=args.chat,
            max_concurrency=args.max_concurrency, max_attempts=args.max_attempts,
            requests_per_minute=args.requests_per_minute, tokens_per_minute=args.tokens_per_minute,
            price_prompt_per_million=args.price_in, price_completion_per_million=args.price_out,
            tokenizer=uri(args.teacher_tokenizer) if args.teacher_tokenizer else "",
        )  # fmt: skip
    else:
        endpoint_only = [flag for flag, value in (
            ("--teacher-model", args.teacher_model), ("--api-key-env", args.api_key_env),
            ("--max-concurrency", args.max_concurrency), ("--max-attempts", args.max_attempts),
            ("--requests-per-minute", args.requests_per_minute), ("--tokens-per-minute", args.tokens_per_minute),
            ("--price-in", args.price_in), ("--price-out", args.price_out),
            ("--teacher-tokenizer", args.teacher_tokenizer)) if value]  # fmt: skip
        if endpoint_only:
            raise SystemExit(f"slmops synth: {', '.join(endpoint_only)} only apply to an endpoint teacher "
                             "(--teacher-url), not to --teacher-model-path")  # fmt: skip
        teacher["local"] = synthesis_pb2.LocalTeacher(model=uri(args.teacher_model_path), device=args.device,
                                                      chat=args.chat, batch_size=args.batch_size)  # fmt: skip
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=uri(args.prompts),
        **teacher,
        sampling=common_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                           top_p=args.top_p, top_logprobs=args.top_logprobs, stop=args.stop,
                                           seed=args.seed),
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        output_uri=args.output or "",
        max_reject_fraction=args.max_reject_fraction,
        prompt_template=args.template or "",
        system_prompt=args.system_prompt or "",
        samples_per_prompt=args.samples,
        label_column=args.label_column or "",
        num_shards=args.num_shards,
        filters=answer_filters(args),
        labels=labels(args.label),
    )  # fmt: skip
    return spec


def cmd_synth(args: argparse.Namespace) -> int:
    spec = synth_spec(args)
    return run_job("synthesis", "SynthesisJob", synthesis_pb2.CreateSynthesisJobRequest(spec=spec), args)[1]


def add_commands(sub: Any) -> None:
    p = sub.add_parser("synth", help="a teacher answers a prompts file into a dataset")
    p.add_argument("--prompts", required=True, help="JSONL, Parquet or CSV: one prompt per row")
    p.add_argument(
        "--template",
        default=None,
        help="makes each row's prompt from its columns, e.g. "
        "'Question: {question}' (default: the row's prompt column)",
    )
    p.add_argument(
        "--system-prompt",
        default=None,
        help="chat teachers (--chat): the system message "
        "before each prompt, kept as the first turn of each record's messages",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--teacher-url", help="OpenAI-compatible base URL of the teacher, e.g. http://host/v1")
    which.add_argument("--teacher-model-path", help="or a Hugging Face teacher (model folder or hub id) run on the "
                       "job's Ray workers")  # fmt: skip
    p.add_argument(
        "--teacher-model", default=None, help="the model name the endpoint serves (with --teacher-url)"
    )
    p.add_argument("--device", default="cpu", help="local teacher: cpu or cuda[:N]")
    p.add_argument(
        "--batch-size", type=int, default=0, help="local teacher: prompts generated together (0: 8)"
    )
    p.add_argument("--api-key-env", default=None, help="name of the env var holding the teacher's API key")
    p.add_argument("--teacher-tokenizer", default=None, metavar="PATH_OR_ID",
                   help="endpoint teacher: its tokenizer (folder or hub id), so that --top-logprobs are stored "
                   "with token ids")  # fmt: skip
    p.add_argument(
        "--chat", action="store_true", help="chat completions (a local teacher: its chat template)"
    )
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=0.0, help="0: 1.0")
    p.add_argument("--top-logprobs", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="sampling and the train/validation split")
    p.add_argument("--samples", type=int, default=0, help="answers per prompt, each a record (0: 1; needs "
                   "--temperature above 0)")  # fmt: skip
    p.add_argument("--validation-fraction", type=float, default=0.0)
    p.add_argument("--label-column", default=None, help="a prompt field the split keeps in proportion")
    p.add_argument(
        "--num-shards", type=int, default=0, help="prompt shards, each committed when answered (0: 2)"
    )
    p.add_argument("--max-concurrency", type=int, default=0, help="requests in flight (0: 4)")
    p.add_argument("--max-attempts", type=int, default=0, help="attempts per prompt (0: 6)")
    p.add_argument("--requests-per-minute", type=float, default=0.0, help="rate limit (0: none)")
    p.add_argument("--tokens-per-minute", type=float, default=0.0, help="rate limit (0: none)")
    p.add_argument("--price-in", type=float, default=0.0, help="price per million prompt tokens")
    p.add_argument("--price-out", type=float, default=0.0, help="price per million completion tokens")
    p.add_argument(
        "--max-reject-fraction",
        type=float,
        default=0.0,
        help="fail past this share of rejected prompts (0: 0.5; 1: never)",
    )
    filters = p.add_argument_group("quality filters", "which answers become records; the rest go to "
                                   "filtered.jsonl, counted per filter")  # fmt: skip
    filters.add_argument("--filter-truncated", action="store_true", help="drop answers cut at --max-tokens")
    filters.add_argument(
        "--min-length", type=int, default=0, metavar="N", help="drop answers under N characters"
    )
    filters.add_argument(
        "--max-length", type=int, default=0, metavar="N", help="drop answers over N characters"
    )
    filters.add_argument("--json-schema", default=None, metavar="FILE",
                         help="keep only answers that parse as JSON matching this JSON Schema file")  # fmt: skip
    filters.add_argument("--reference-column", default=None, metavar="NAME",
                         help="a prompt field with the expected answer; drop answers that disagree")  # fmt: skip
    filters.add_argument("--reference-match", default=None, choices=REFERENCE_MATCHES,
                         help="how an answer agrees with the reference (default: normalized)")  # fmt: skip
    filters.add_argument("--dedup", default=None, choices=DEDUP,
                         help="drop repeated answers: exact, or near (ignoring case, punctuation, spacing)")  # fmt: skip
    filters.add_argument("--keep-empty", action="store_true", help="keep empty answers (dropped by default)")
    filters.add_argument("--refusal-pattern", action="append", default=[], metavar="REGEX",
                         help="a refusal to drop, case-insensitive (repeatable; default: a built-in set)")  # fmt: skip
    filters.add_argument("--keep-refusals", action="store_true", help="no refusal filter")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label of the job (repeatable; `slmops list --label` finds it)")  # fmt: skip
    job_flags(p)
    p.set_defaults(func=cmd_synth)
