"""The evaluation job: measure every target on the same prompts, judge the gate, write a report artifact.

Requests are sent from this process (the Ray job's driver), one target after
another, so each target's latency is measured without the others' load. A
target that cannot be reached (or whose host or key the operator's settings
refuse: core/egress, core/secret_refs) is reported failed with the reason, cut
short where it quotes the target, and the others are measured all the same;
the job fails only when every target does. A dataset of conversations
(`messages`) is sent to chat targets as conversations (examples.py); one
whose records have no plain prompt beside them makes a plain target an
invalid spec.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from slmops.core import artifacts, tracing
from slmops.core.errors import InvalidSpec, Unavailable
from slmops.core.progress import Progress, scaled
from slmops.evaluation.client import Measurement, load_examples, measure_target
from slmops.evaluation.config import EvaluationConfig, validated
from slmops.evaluation.examples import check_targets
from slmops.evaluation.quality import add_quality
from slmops.evaluation.report import TargetResult, judge, set_retention, summarize, write_report

RESULT_METRICS = (
    "accuracy",
    "retention",
    "latency_p50_ms",
    "latency_p95_ms",
    "tokens_per_second",
    "latency_p99_ms",
    "ttft_p50_ms",
    "tpot_p50_ms",
    "memory_bytes",
    "size_bytes",
    "parameters",
)


def candidate_name(cfg: EvaluationConfig) -> str:
    """The gate's candidate; without a gate, the first target that is not the reference."""
    if cfg.gate:
        return cfg.gate.candidate
    return next((t.name for t in cfg.targets if t.name != cfg.reference), cfg.targets[0].name)


def _check_inputs(cfg: EvaluationConfig) -> None:
    """The dataset and the targets' models: sealed artifacts must match their hashes."""
    artifacts.open_input(cfg.dataset_uri, "spec.dataset_uri")
    for index, target in enumerate(cfg.targets):
        if target.model_uri:
            artifacts.open_input(target.model_uri, f"spec.targets[{index}].model_uri")


def report_parents(cfg: EvaluationConfig) -> list[str]:
    """The targets' model URIs (the candidate's first), then the dataset."""
    first = candidate_name(cfg)
    ordered = sorted(cfg.targets, key=lambda t: t.name != first)
    parents: list[str] = []
    for uri in [t.model_uri for t in ordered] + [cfg.dataset_uri]:
        if uri and uri not in parents:
            parents.append(uri)
    return parents


def flat_metrics(results: list[TargetResult], gate_evaluated: bool, gate_passed: bool) -> dict[str, float]:
    metrics = {f"{r.name}.{key}": float(getattr(r, key)) for r in results if r.ok for key in RESULT_METRICS}
    for r in results:
        if r.ok:
            metrics.update({f"{r.name}.quality.{k}": float(v) for k, v in r.quality.items()})
        metrics[f"{r.name}.failed"] = 0.0 if r.ok else 1.0
    metrics["num_prompts"] = float(max((r.num_prompts for r in results), default=0))
    if gate_evaluated:
        metrics["gate_passed"] = 1.0 if gate_passed else 0.0
    return metrics


def run(config: dict[str, Any], output_uri: str, progress: Progress, trace_id: str = "") -> dict[str, Any]:
    """Evaluate every target and write a report artifact at output_uri."""
    cfg = validated(config)
    tracing.setup_tracing("evaluation-job")
    trace_id = trace_id or tracing.current_trace_id()
    traceparent = tracing.current_traceparent()
    output_uri = artifacts.to_uri(output_uri)

    progress(0.0, "reading the dataset")
    _check_inputs(cfg)
    examples = load_examples(cfg.dataset_uri, cfg.max_prompts)
    check_targets(examples, cfg.targets)  # a conversation without a prompt needs chat targets
    measurements: list[Measurement] = []
    n = len(cfg.targets)
    for i, target in enumerate(cfg.targets):
        start, end = 0.05 + 0.8 * i / n, 0.05 + 0.8 * (i + 1) / n
        progress(start, f"evaluating {target.name} on {len(examples)} prompts at concurrency "
                        f"{', '.join(map(str, cfg.concurrency_levels))}")  # fmt: skip
        try:
            measurements.append(
                measure_target(
                    target,
                    examples,
                    cfg.sampling,
                    metric=cfg.metric,
                    answer_pattern=cfg.answer_pattern,
                    concurrency_levels=cfg.concurrency_levels,
                    warmup_requests=cfg.warmup_requests,
                    traceparent=traceparent,
                    progress=scaled(progress, start, end),
                )
            )
        except (Unavailable, InvalidSpec) as exc:  # InvalidSpec: its key may not go to its deployment's host
            progress(end, f"{target.name} failed: {exc}")
            measurements.append(Measurement(name=target.name, model_uri=target.model_uri, status="failed",
                                            reason=str(exc)))  # fmt: skip
    failed = [m for m in measurements if m.status != "ok"]
    if len(failed) == len(measurements):
        raise Unavailable("every target failed: " + "; ".join(m.reason for m in failed))
    progress(0.86, f"quality metrics: accuracy, {', '.join(cfg.quality_metrics)}"
                   + (", judge" if cfg.judge else ""))  # fmt: skip
    add_quality(cfg, examples, measurements)

    results = [summarize(m) for m in measurements]
    set_retention(results, cfg.reference)
    verdict = judge(cfg.gate, results)
    progress(0.92, "writing the report")
    with artifacts.staged(output_uri) as staging:
        write_report(
            staging,
            results,
            verdict,
            reference=cfg.reference,
            metric=cfg.metric,
            dataset_uri=cfg.dataset_uri,
            candidate=candidate_name(cfg),
            judge_model=f"{cfg.judge.model} at {cfg.judge.base_url}" if cfg.judge else "",
        )
    metrics = flat_metrics(results, verdict.evaluated, verdict.passed)
    artifacts.finalize(
        output_uri,
        "report",
        spec=cfg.model_dump(mode="json"),
        parents=report_parents(cfg),
        metrics=metrics,
        trace_id=trace_id,
    )
    summary = "; ".join(
        f"{r.name} accuracy {r.accuracy:.1%}" if r.ok else f"{r.name} failed" for r in results
    )
    if verdict.evaluated:
        summary += f"; gate {'passed' if verdict.passed else 'failed'}"
    progress(1.0, summary, **metrics)
    return {
        "output_uri": output_uri,
        "metrics": metrics,
        "results": [asdict(r) for r in results],
        "verdict": asdict(verdict),
    }
