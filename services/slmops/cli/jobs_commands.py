"""CLI commands that create jobs and deployments: train, convert, deploy, bench (synth: synth_commands.py;
pipeline: pipeline_commands.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from slmops.api.v1 import (
    common_pb2,
    conversion_pb2,
    evaluation_pb2,
    serving_pb2,
    training_pb2,
)
from slmops.cli import client
from slmops.cli.progress import watch_job
from slmops.core.artifacts import to_uri
from slmops.training.recipes.sections import SEARCHABLE


def _uri(value: str) -> str:
    """Local paths become file:// URIs; hub ids and URIs are left alone."""
    return to_uri(value) if Path(value).exists() else value


def _run_job(service: str, noun: str, request: Any, args: argparse.Namespace) -> int:
    from slmops.cli.main import _print_job

    stub = client.stub(service)
    job = client.call(getattr(stub, f"Create{noun}"), request)
    print(f"created {job.id}", file=sys.stderr)
    if args.no_wait:
        return _print_job(job, args.json)
    job = watch_job(service, getattr(stub, f"Watch{noun}"), getattr(stub, f"Get{noun}"), job.id)
    return _print_job(job, args.json)


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --override expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


METHODS = ("sft_distill", "full", "lora", "qlora", "logit_distill", "multi_adapter")
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
SEARCH_DISTRIBUTIONS = ("uniform", "loguniform", "randint")


def adapter_flag(text: str) -> training_pb2.AdapterSpec:
    """--adapter NAME=DATASET_URI"""
    name, sep, dataset = text.partition("=")
    if not sep or not name.strip() or not dataset.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=DATASET_URI, got {text!r}")
    return training_pb2.AdapterSpec(name=name.strip(), dataset_uri=_uri(dataset.strip()))


def search_flag(text: str) -> training_pb2.SearchDimension:
    """--search NAME=DIST:LOW:HIGH (DIST: uniform, loguniform, randint) or NAME=choice:A,B,C"""
    name, sep, rest = text.partition("=")
    dist, _, bounds = rest.partition(":")
    name, dist = name.strip(), dist.strip().lower()
    if not sep or name not in SEARCHABLE:
        names = ", ".join(SEARCHABLE)
        raise argparse.ArgumentTypeError(
            f"expected NAME=DIST:LOW:HIGH with NAME one of {names}, got {text!r}"
        )
    if dist == "choice":
        values = [v.strip() for v in bounds.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected NAME=choice:A,B,C, got {text!r}")
        return training_pb2.SearchDimension(name=name, distribution=dist, values=values)
    low, colon, high = bounds.partition(":")
    try:
        if dist not in SEARCH_DISTRIBUTIONS or not colon:
            raise ValueError
        return training_pb2.SearchDimension(name=name, distribution=dist, low=float(low), high=float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=DIST:LOW:HIGH with DIST one of {', '.join(SEARCH_DISTRIBUTIONS)} "
            f"(or NAME=choice:A,B,C), got {text!r}"
        ) from None


def _lora(args: argparse.Namespace) -> training_pb2.LoraConfig | None:
    targets = [t.strip() for t in (args.target_modules or "").split(",") if t.strip()]
    if not (args.lora_rank or args.lora_alpha or args.lora_dropout or targets or args.merge):
        return None
    return training_pb2.LoraConfig(
        rank=args.lora_rank,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        target_modules=targets,
        merge=args.merge,
    )


def _distill(args: argparse.Namespace) -> training_pb2.DistillConfig | None:
    if not (args.teacher or args.kd_loss or args.jsd_beta):
        return None
    return training_pb2.DistillConfig(
        teacher=_uri(args.teacher) if args.teacher else "", loss=args.kd_loss or "", jsd_beta=args.jsd_beta
    )


def train_spec(args: argparse.Namespace) -> training_pb2.TrainingSpec:
    """The TrainingSpec the `train` flags describe; what a flag leaves unset the service defaults."""
    if not args.dataset and args.method != "multi_adapter":
        raise SystemExit(f"error: --dataset is required for --method {args.method}")
    spec = training_pb2.TrainingSpec(
        method=training_pb2.TrainingMethod.Value(args.method.upper()),
        base=training_pb2.ModelInit(
            model=_uri(args.base), from_config=args.from_config, config_overrides=_overrides(args.override)
        ),
        dataset_uri=_uri(args.dataset) if args.dataset else "",
        hyperparameters=training_pb2.Hyperparameters(
            learning_rate=args.lr,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            seed=args.seed,
            gradient_accumulation_steps=args.grad_accum,
            weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio,
            max_seq_length=args.max_seq_length,
            precision=args.precision or "",
            distill_temperature=args.kd_temperature,
            distill_alpha=args.kd_alpha,
            checkpoint_every=args.checkpoint_every,
            eval_every=args.eval_every,
            early_stopping_patience=args.early_stopping,
            gradient_checkpointing=args.gradient_checkpointing,
            packing=args.packing,
        ),
        resources=common_pb2.ResourceRequest(
            num_workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
        ),
        adapters=args.adapter,
        max_failures=args.max_failures,
        output_uri=args.output or "",
    )
    lora, distill = _lora(args), _distill(args)
    if lora is not None:
        spec.lora.CopyFrom(lora)
    if distill is not None:
        spec.distill.CopyFrom(distill)
    if args.search or args.trials or args.search_metric:
        spec.search.CopyFrom(
            training_pb2.SearchSpec(space=args.search, trials=args.trials, metric=args.search_metric or "")
        )
    return spec


def cmd_train(args: argparse.Namespace) -> int:
    spec = train_spec(args)
    return _run_job("training", "TrainingJob", training_pb2.CreateTrainingJobRequest(spec=spec), args)


def _adapter_uri(text: str) -> str:
    """NAME=PATH keeps its name; a path or URI alone is made absolute."""
    name, sep, rest = text.partition("=")
    if sep and name and "/" not in name and ":" not in name:
        return f"{name}={_uri(rest)}"
    return _uri(text)


def convert_spec(args: argparse.Namespace) -> conversion_pb2.ConversionSpec:
    return conversion_pb2.ConversionSpec(
        model_uri=_uri(args.model),
        precision=conversion_pb2.Precision.Value(args.precision.upper()),
        execution_provider=conversion_pb2.ExecutionProvider.Value(args.execution_provider.upper()),
        output_uri=args.output or "",
        foundry_local_package=args.foundry_local,
        adapter_uris=[_adapter_uri(a) for a in args.adapter],
        merge_adapters=args.merge_adapter,
        extra_options=_overrides(args.option),
        verification=conversion_pb2.VerificationSpec(
            min_token_agreement=args.min_token_agreement,
            max_logits_rel_error=args.max_logits_error,
            max_kl=args.max_kl,
            new_tokens=args.verify_tokens,
        ),
    )


def cmd_convert(args: argparse.Namespace) -> int:
    spec = convert_spec(args)
    return _run_job("conversion", "ConversionJob", conversion_pb2.CreateConversionJobRequest(spec=spec), args)


def _adapter_refs(flags: list[str]) -> list[serving_pb2.AdapterRef]:
    refs = []
    for flag in flags:
        name, sep, uri = flag.partition("=")
        if not sep or not name or not uri:
            raise SystemExit(f"error: --adapter {flag!r}: expected NAME=URI")
        refs.append(serving_pb2.AdapterRef(name=name, uri=_uri(uri)))
    return refs


def _settle(stub, name: str, since: float) -> int:
    """Follow the deployment until its rollout settles (events from `since`); where it stands; 0 when READY."""
    for event in stub.WatchDeployment(serving_pb2.WatchDeploymentRequest(name=name)):
        if event.time.ToSeconds() >= since - 1:
            print(f"  {name}: {event.message}", file=sys.stderr)
    deployment = client.call(stub.GetDeployment, serving_pb2.GetDeploymentRequest(name=name))
    print_deployment(deployment)
    return 0 if deployment.state == serving_pb2.DEPLOYMENT_READY else 1


def print_deployment(deployment: serving_pb2.Deployment) -> None:
    """The deployment, its URL, and its revisions with their traffic (newest first)."""
    state = serving_pb2.DeploymentState.Name(deployment.state).removeprefix("DEPLOYMENT_")
    print(f"{deployment.name}: {state}" + (f" - {deployment.reason}" if deployment.reason else ""))
    if deployment.url:
        print(f"  OpenAI base URL: {deployment.url}/openai/v1")
    for rev in deployment.revisions:
        if rev.state == serving_pb2.DEPLOYMENT_RETIRED and rev.number < deployment.latest_revision - 2:
            continue  # old history: `slmops status` is a glance
        rev_state = serving_pb2.DeploymentState.Name(rev.state).removeprefix("DEPLOYMENT_")
        role = " (serving)" if rev.number == deployment.serving_revision else (
            " (canary)" if rev.number == deployment.latest_revision and rev.traffic_percent else "")  # fmt: skip
        why = f"  {rev.reason.splitlines()[0]}" if rev.reason else ""
        print(f"  {rev.name:<24} {rev.traffic_percent:>3}%  {rev_state:<9} {rev.model_uri}{role}{why}")


def cmd_deploy(args: argparse.Namespace) -> int:
    stub = client.stub("serving")
    if args.delete:
        deployment = client.call(stub.DeleteDeployment, serving_pb2.DeleteDeploymentRequest(name=args.name))
        print(f"{deployment.name}: deleted")
        return 0
    if not args.model:
        raise SystemExit("error: --model is required to deploy")
    adapters, since = _adapter_refs(args.adapter), time.time()
    if args.canary is not None:  # a new revision of an existing deployment
        request = serving_pb2.UpdateDeploymentRequest(name=args.name, model_uri=_uri(args.model), adapters=adapters,
                                                      canary_traffic_percent=args.canary)  # fmt: skip
        client.call(stub.UpdateDeployment, request)
    else:
        spec = serving_pb2.DeploymentSpec(name=args.name, model_uri=_uri(args.model), port=args.port,
                                          adapters=adapters)  # fmt: skip
        client.call(stub.CreateDeployment, serving_pb2.CreateDeploymentRequest(spec=spec))
    return _settle(stub, args.name, since)


def cmd_promote(args: argparse.Namespace) -> int:
    stub = client.stub("serving")
    report = _uri(args.require_report) if args.require_report else ""
    request = serving_pb2.PromoteDeploymentRequest(name=args.name, evaluation_report_uri=report)
    since = time.time()
    client.call(stub.PromoteDeployment, request)
    return _settle(stub, args.name, since)


def cmd_rollback(args: argparse.Namespace) -> int:
    stub, since = client.stub("serving"), time.time()
    client.call(stub.RollbackDeployment, serving_pb2.RollbackDeploymentRequest(name=args.name))
    return _settle(stub, args.name, since)


def _target(text: str) -> evaluation_pb2.EvalTarget:
    """NAME=URL_OR_DEPLOYMENT[,model_uri=PATH]"""
    name, _, rest = text.partition("=")
    where, *options = rest.split(",")
    target = evaluation_pb2.EvalTarget(name=name)
    if where.startswith(("http://", "https://")):
        target.base_url = where
    else:
        target.deployment = where
    for option in options:
        key, _, value = option.partition("=")
        if key == "model_uri":
            target.model_uri = _uri(value)
        elif key == "model":
            target.model = value
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


def bench_spec(args: argparse.Namespace) -> evaluation_pb2.EvaluationSpec:
    spec = evaluation_pb2.EvaluationSpec(
        targets=[_target(t) for t in args.target], dataset_uri=_uri(args.dataset), reference=args.reference or "",
        max_prompts=args.max_prompts, output_uri=args.output or "", metric=args.metric or "",
        answer_pattern=args.answer_pattern or "", quality_metrics=args.quality or [],
        concurrency_levels=args.concurrency or [],
        sampling=common_pb2.SamplingParams(max_tokens=args.max_tokens),
    )  # fmt: skip
    if args.judge_url:
        spec.judge.CopyFrom(
            evaluation_pb2.JudgeSpec(
                base_url=args.judge_url,
                model=args.judge_model or "",
                api_key_env=args.judge_api_key_env or "",
                chat=True,
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
    from slmops.cli.main import _print_job

    stub = client.stub("evaluation")
    job = client.call(
        stub.CreateEvaluationJob, evaluation_pb2.CreateEvaluationJobRequest(spec=bench_spec(args))
    )
    print(f"created {job.id}", file=sys.stderr)
    if args.no_wait:
        return _print_job(job, args.json)
    job = watch_job("evaluation", stub.WatchEvaluationJob, stub.GetEvaluationJob, job.id)
    code = _print_job(job, args.json)
    if job.status.state == common_pb2.SUCCEEDED:
        report = job.status.output.uri
        print(f"report: {report}/report.html (and report.md, report.json)", file=sys.stderr)
        for result in job.results:
            if result.status == "failed":
                print(f"  {result.name}: FAILED to evaluate: {result.reason}", file=sys.stderr)
        if job.verdict.evaluated:
            print(f"gate: {'PASSED' if job.verdict.passed else 'FAILED'}", file=sys.stderr)
            for reason in job.verdict.reasons:
                print(f"  {reason}", file=sys.stderr)
            if not job.verdict.passed:
                return 3
    return code


def _job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", default=None, help="artifact URI to write (default: under the artifact root)"
    )
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("--json", action="store_true", help="print the final job as JSON")


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """Every flag of `train`; each one sets a TrainingSpec field (0 or unset: the service's default)."""
    p.add_argument(
        "--dataset", default=None, help="dataset artifact with train.jsonl (not with multi_adapter)"
    )
    p.add_argument("--base", required=True, help="model folder, artifact URI or hub id")
    p.add_argument("--method", default="sft_distill", choices=METHODS)
    p.add_argument("--from-config", action="store_true", help="random weights from the base model's config")
    p.add_argument("--override", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    g = p.add_argument_group("hyperparameters")
    g.add_argument("--epochs", type=int, default=0)
    g.add_argument("--max-steps", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=0, help="global batch, split over the workers")
    g.add_argument("--grad-accum", type=int, default=0, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup-ratio", type=float, default=0.0)
    g.add_argument("--max-seq-length", type=int, default=0)
    g.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--checkpoint-every", type=int, default=0, help="optimizer steps (default: once per epoch)"
    )
    g.add_argument(
        "--eval-every", type=int, default=0, help="optimizer steps (default: with every checkpoint)"
    )
    g.add_argument(
        "--early-stopping",
        type=int,
        default=0,
        metavar="N",
        help="stop after N validations without a better loss",
    )
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--packing", action="store_true", help="pack examples into sequences (sft_distill, full)")
    g = p.add_argument_group("lora, qlora and multi_adapter")
    g.add_argument("--lora-rank", type=int, default=0)
    g.add_argument("--lora-alpha", type=int, default=0)
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument(
        "--target-modules", default=None, metavar="q_proj,v_proj", help="default: every linear layer"
    )
    g.add_argument(
        "--merge", action="store_true", help="merge the adapter into the base: output a checkpoint"
    )
    g.add_argument(
        "--adapter",
        action="append",
        default=[],
        type=adapter_flag,
        metavar="NAME=DATASET_URI",
        help="multi_adapter: one named adapter and its dataset (repeatable)",
    )
    g = p.add_argument_group("logit_distill")
    g.add_argument(
        "--teacher",
        default=None,
        metavar="URI",
        help="online teacher model (default: the dataset's stored top-k)",
    )
    g.add_argument("--kd-loss", default=None, choices=KD_LOSSES)
    g.add_argument("--kd-temperature", type=float, default=0.0)
    g.add_argument("--kd-alpha", type=float, default=0.0, help="weight of the distillation loss")
    g.add_argument("--jsd-beta", type=float, default=0.0)
    g = p.add_argument_group("hyperparameter search (Ray Tune, ASHA)")
    g.add_argument(
        "--search",
        action="append",
        default=[],
        type=search_flag,
        metavar="NAME=DIST:LOW:HIGH",
        help="a dimension: DIST uniform, loguniform or randint, or NAME=choice:A,B,C (repeatable)",
    )
    g.add_argument("--trials", type=int, default=0)
    g.add_argument("--search-metric", default=None, choices=["eval_loss", "train_loss"])
    g = p.add_argument_group("resources")
    g.add_argument("--workers", type=int, default=0, help="Ray Train workers")
    g.add_argument("--cpus-per-worker", type=float, default=0.0)
    g.add_argument("--gpus-per-worker", type=float, default=0.0)
    g.add_argument("--max-failures", type=int, default=0, help="worker failures to resume from (-1: none)")


def add_commands(sub: Any) -> None:
    from slmops.cli.synth_commands import add_synth_command

    add_synth_command(sub)

    p = sub.add_parser("train", help="distill or fine-tune a model on a dataset (Ray Train)")
    add_train_flags(p)
    _job_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("convert", help="export to ONNX Runtime GenAI and quantize (Olive)")
    p.add_argument("--model", required=True)
    p.add_argument("--precision", default="int4", choices=["int4", "int8", "fp16", "fp32", "bf16"])
    p.add_argument("--execution-provider", default="cpu", choices=["cpu", "cuda", "dml"])
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
    _job_flags(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("deploy", help="serve a model behind the OpenAI API, roll out a new revision "
                       "(--canary), or --delete")  # fmt: skip
    p.add_argument("name")
    p.add_argument("--model", default=None, help="onnx-model or checkpoint artifact, or a model folder")
    p.add_argument(
        "--canary",
        type=int,
        default=None,
        metavar="PERCENT",
        help="a new revision of an existing deployment with PERCENT of the traffic once it is ready "
        "(100: it replaces the serving revision once ready)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=URI",
        help="serve a LoRA adapter as model NAME beside the base (repeatable)",
    )
    p.add_argument("--port", type=int, default=0, help="local backend: the deployment's port (0: a free one)")
    p.add_argument("--delete", action="store_true")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("promote", help="send all of a deployment's traffic to its canary")
    p.add_argument("name")
    p.add_argument(
        "--require-report",
        default=None,
        metavar="URI",
        help="an evaluation report artifact whose gate must have passed",
    )
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "rollback", help="send all traffic back: off the canary, or to the revision served before"
    )
    p.add_argument("name")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("bench", help="evaluate served models: accuracy, latency, tokens/s, size, memory")
    p.add_argument("--dataset", required=True)
    p.add_argument(
        "--target",
        action="append",
        required=True,
        help="NAME=URL_OR_DEPLOYMENT[,model_uri=PATH] (repeatable)",
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
        help="a quality metric besides accuracy (repeatable; default rouge_l, chrf, bleu)",
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
    g = p.add_argument_group("gate: a FAIL makes the command exit 3")
    g.add_argument("--gate-candidate", default=None, help="the target the gate judges")
    g.add_argument("--min-retention", type=float, default=0.0, help="of accuracy")
    g.add_argument(
        "--min-retention-of",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="minimum retention of another metric, e.g. rouge_l=0.9 (repeatable)",
    )
    g.add_argument("--max-p95-ms", type=float, default=0.0)
    g.add_argument("--min-tokens-per-second", type=float, default=0.0)
    _job_flags(p)
    p.set_defaults(func=cmd_bench)

    from slmops.cli.pipeline_commands import add_pipeline_command

    add_pipeline_command(sub)
