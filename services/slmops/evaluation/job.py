"""The evaluation job: measure every target on the same prompts, judge the gate, write a report artifact.

Requests are sent from this process (the Ray job's driver), one target after
another, so each target's latency is measured without the others' load.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from slmops.core import artifacts, tracing
from slmops.core.progress import Progress, scaled
from slmops.evaluation.client import load_examples, measure_target
from slmops.evaluation.report import TargetResult, judge, set_retention, summarize, write_report
from slmops.evaluation.spec import EvaluationConfig

RESULT_METRICS = (
    "accuracy",
    "retention",
    "latency_p50_ms",
    "latency_p95_ms",
    "tokens_per_second",
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


def flat_metrics(
    results: list[TargetResult], gate_evaluated: bool, gate_passed: bool
) -> dict[str, float]:
    metrics = {f"{r.name}.{key}": float(getattr(r, key)) for r in results for key in RESULT_METRICS}
    metrics["num_prompts"] = float(results[0].num_prompts) if results else 0.0
    if gate_evaluated:
        metrics["gate_passed"] = 1.0 if gate_passed else 0.0
    return metrics


def run(
    config: dict[str, Any], output_uri: str, progress: Progress, trace_id: str = ""
) -> dict[str, Any]:
    """Evaluate every target and write a report artifact at output_uri."""
    cfg = EvaluationConfig.model_validate(config)
    tracing.setup_tracing("evaluation-job")
    trace_id = trace_id or tracing.current_trace_id()
    traceparent = tracing.current_traceparent()
    output_uri = artifacts.to_uri(output_uri)

    progress(0.0, "reading the dataset")
    _check_inputs(cfg)
    examples = load_examples(cfg.dataset_uri, cfg.max_prompts)
    measurements = []
    n = len(cfg.targets)
    for i, target in enumerate(cfg.targets):
        start, end = 0.05 + 0.85 * i / n, 0.05 + 0.85 * (i + 1) / n
        progress(start, f"evaluating {target.name} on {len(examples)} prompts")
        measurements.append(
            measure_target(
                target,
                examples,
                cfg.sampling,
                metric=cfg.metric,
                concurrency=cfg.concurrency,
                warmup_requests=cfg.warmup_requests,
                traceparent=traceparent,
                progress=scaled(progress, start, end),
            )
        )

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
    summary = "; ".join(f"{r.name} accuracy {r.accuracy:.1%}" for r in results)
    if verdict.evaluated:
        summary += f"; gate {'passed' if verdict.passed else 'failed'}"
    progress(1.0, summary, **metrics)
    return {
        "output_uri": output_uri,
        "metrics": metrics,
        "results": [asdict(r) for r in results],
        "verdict": asdict(verdict),
    }
