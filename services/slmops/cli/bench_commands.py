"""`slmops bench`: evaluate served models against each other, with an optional gate; the flags and the spec."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from slmops.api.v1 import common_pb2, evaluation_pb2
from slmops.cli.common import job_flags, run_job, uri

GATE_FAILED = 3  # the exit status of a job that succeeded but whose gate failed
DEFAULT_QUALITY = ("rouge_l", "chrf", "bleu")  # what an empty EvaluationSpec.quality_metrics measures


TARGET_OPTIONS = "model_uri=PATH, model=NAME, api_key_env=NAME, chat"


def _target(text: str) -> evaluation_pb2.EvalTarget:
    """NAME=URL_OR_DEPLOYMENT[,model_uri=PATH][,model=NAME][,api_key_env=NAME][,chat]"""
    name, sep, rest = text.partition("=")
    where, *options = rest.split(",")
    if not sep or not name or not where:
        raise SystemExit(f"error: --target {text!r}: expected NAME=URL_OR_DEPLOYMENT[,OPTION...]")
    target = evaluation_pb2.EvalTarget(name=name)
    if where.startswith(("http://", "https://")):
        target.base_url = where
    else:
        target.deployment = where
    for option in options:
        key, has_value, value = option.partition("=")
        if key == "chat" and not has_value:
            target.chat = True  # the dataset's conversations go to /chat/completions
        elif key in ("model_uri", "model", "api_key_env") and value:
            setattr(target, key, uri(value) if key == "model_uri" else value)
        else:
            raise SystemExit(
                f"error: --target {text!r}: unknown option {option!r} (options: {TARGET_OPTIONS})"
            )
    return target


def _metric_thresholds(pairs: list[str]) -> dict[str, float]:
    """--min-retention-of METRIC=VALUE (repeatable)"""
    out = {}
    for pair in pairs:
        metric, sep, value = pair.partition("=")
        try:
            out[metric.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"error: --min-retention-of expects METRIC=NUMBER, got {pair!r}") from None
        if not sep:
            raise SystemExit(f"error: --min-retention-of expects METRIC=NUMBER, got {pair!r}")
    return out


def quality_metrics(extra: list[str] | None) -> list[str]:
    """--quality adds to the default metrics: naming one never drops what the default measures."""
    return list(dict.fromkeys([*DEFAULT_QUALITY, *(extra or [])])) if extra else []


def bench_spec(args: argparse.Namespace) -> evaluation_pb2.EvaluationSpec:
    spec = evaluation_pb2.EvaluationSpec(
        targets=[_target(t) for t in args.target], dataset_uri=uri(args.dataset), reference=args.reference or "",
        max_prompts=args.max_prompts, output_uri=args.output or "", metric=args.metric or "",
        answer_pattern=args.answer_pattern or "", quality_metrics=quality_metrics(args.quality),
        concurrency_levels=args.concurrency or [],
        sampling=common_pb2.SamplingParams(max_tokens=args.max_tokens),
    )  # fmt: skip
    if args.judge_url:
        spec.judge.CopyFrom(
            evaluation_pb2.JudgeSpec(
                base_url=args.judge_url,
                model=args.judge_model or "",
                api_key_env=args.judge_api_key_env or "",
                chat=not args.judge_completions,
                concurrency=args.judge_concurrency,
            )
        )
    thresholds = (args.min_retention, args.max_p95_ms, args.min_tokens_per_second, args.min_retention_of)
    if args.gate_candidate or any(thresholds):
        spec.gate.CopyFrom(evaluation_pb2.QualityGate(
            candidate=args.gate_candidate or "", min_retention=args.min_retention,
            max_latency_p95_ms=args.max_p95_ms, min_tokens_per_second=args.min_tokens_per_second,
            min_retention_by_metric=_metric_thresholds(args.min_retention_of)))  # fmt: skip
    return spec


def cmd_bench(args: argparse.Namespace) -> int:
    """Exit status 0 only when the job succeeded and its gate, when there is one, passed."""
    request = evaluation_pb2.CreateEvaluationJobRequest(spec=bench_spec(args))
    job, code = run_job("evaluation", "EvaluationJob", request, args)
    if args.no_wait or job.status.state != common_pb2.SUCCEEDED:
        return code
    print(f"report: {job.status.output.uri}/report.html (and report.md, report.json)", file=sys.stderr)
    for result in job.results:
        if result.status == "failed":
            print(f"  {result.name}: FAILED to evaluate: {result.reason}", file=sys.stderr)
    if job.verdict.evaluated:
        print(f"gate: {'PASSED' if job.verdict.passed else 'FAILED'}", file=sys.stderr)
        for reason in job.verdict.reasons:
            print(f"  {reason}", file=sys.stderr)
        if not job.verdict.passed:
            return GATE_FAILED
    return code


def add_commands(sub: Any) -> None:
    p = sub.add_parser("bench", help="evaluate served models: accuracy, latency, tokens/s, size, memory")
    p.add_argument("--dataset", required=True)
    p.add_argument(
        "--target",
        action="append",
        required=True,
        help="NAME=URL_OR_DEPLOYMENT[,OPTION...] (repeatable); options: model_uri=PATH (size and parameters), "
        "model=NAME, api_key_env=NAME (the variable holding its key), chat (ask through /chat/completions: "
        "a chat model, or a dataset of conversations)",
    )
    p.add_argument("--reference", default=None, help="target whose accuracy is 100%% retention")
    p.add_argument("--max-prompts", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=0)
    p.add_argument(
        "--metric",
        default=None,
        choices=["exact_match", "normalized", "regex", "choice", "contains"],
        help="how an answer counts as accurate (default exact_match)",
    )
    p.add_argument(
        "--answer-pattern", default=None, help="--metric regex: the answer's pattern (group 1 if any)"
    )
    p.add_argument(
        "--quality",
        action="append",
        default=None,
        choices=["rouge_l", "chrf", "bleu", "semantic_similarity", "perplexity"],
        help="a quality metric measured besides accuracy and the default rouge_l, chrf, bleu (repeatable)",
    )
    p.add_argument(
        "--concurrency",
        action="append",
        type=int,
        default=None,
        metavar="N",
        help="a level of the throughput sweep (repeatable, e.g. 1 4 16; default 1)",
    )
    g = p.add_argument_group("LLM judge (any OpenAI-compatible endpoint)")
    g.add_argument("--judge-url", default=None)
    g.add_argument("--judge-model", default=None)
    g.add_argument("--judge-api-key-env", default=None, help="NAME of the variable holding the judge's key")
    g.add_argument(
        "--judge-concurrency",
        type=int,
        default=0,
        metavar="N",
        help="judge requests at once, 1..16 (default 4)",
    )
    g.add_argument(
        "--judge-completions",
        action="store_true",
        help="ask the judge through /completions (default: /chat/completions)",
    )
    g = p.add_argument_group("gate: a FAIL makes the command exit 3")
    g.add_argument("--gate-candidate", default=None, help="the target the gate judges")
    g.add_argument("--min-retention", type=float, default=0.0, help="of accuracy")
    g.add_argument(
        "--min-retention-of",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="minimum retention of a measured metric (accuracy, rouge_l, chrf, bleu, semantic_similarity or "
        "judge, the last two with --quality semantic_similarity or --judge-url), e.g. rouge_l=0.9 (repeatable)",
    )
    g.add_argument("--max-p95-ms", type=float, default=0.0)
    g.add_argument("--min-tokens-per-second", type=float, default=0.0)
    job_flags(p)
    p.set_defaults(func=cmd_bench)
