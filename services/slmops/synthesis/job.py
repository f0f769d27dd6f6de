"""The synthesis job: prompts through the teacher on Ray Data, into a dataset artifact.

Prompts are split into `num_shards` blocks; a pool of Ray actors, each holding
one teacher, answers them (for an endpoint teacher at most `max_concurrency`
requests are in flight in total). The driver collects the answers as shards
complete, writes the dataset folder and seals it with a manifest.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from slmops.core import artifacts, tracing
from slmops.core.datasets import dataset_record, read_prompts
from slmops.core.endpoints import resolve_api_key
from slmops.core.errors import Unavailable
from slmops.core.progress import Progress
from slmops.synthesis.dataset import write_dataset
from slmops.synthesis.spec import EndpointTeacherConfig, SynthesisConfig
from slmops.synthesis.teacher import make_teacher
from slmops.synthesis.token_table import load_token_table

ENDPOINT_ACTOR_CPUS = 0.25  # an HTTP client mostly waits
LOCAL_ACTOR_CPUS = 1.0


class TeacherWorker:
    """A Ray Data callable class: one teacher per actor, one shard per call."""

    def __init__(self, config: dict[str, Any], traceparent: str = "", threads: int = 1):
        tracing.setup_tracing("synthesis-worker")
        cfg = SynthesisConfig.model_validate(config)
        self.teacher = make_teacher(
            cfg.teacher,
            cfg.sampling,
            system_prompt=cfg.system_prompt,
            traceparent=traceparent,
            threads=threads,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.teacher.generate([str(p) for p in batch["prompt"]])
        tracing.shutdown_tracing()  # flush this shard's spans: Ray may end the actor abruptly
        encoded = np.array([json.dumps(r) for r in results], dtype=object)
        return {"index": batch["index"], "result": encoded}


def pool_shape(cfg: SynthesisConfig, num_shards: int) -> tuple[int, int, dict[str, Any]]:
    """(actors, threads per actor, Ray resources per actor) for the teacher pool."""
    res = cfg.resources
    resources: dict[str, Any] = {}
    if isinstance(cfg.teacher, EndpointTeacherConfig):
        actors = max(1, min(cfg.teacher.max_concurrency, num_shards))
        threads = max(1, cfg.teacher.max_concurrency // actors)
        resources["num_cpus"] = res.cpus_per_worker or ENDPOINT_ACTOR_CPUS
    else:
        actors = max(1, min(res.num_workers, num_shards))
        threads = 1
        resources["num_cpus"] = res.cpus_per_worker or LOCAL_ACTOR_CPUS
        if res.gpus_per_worker:
            resources["num_gpus"] = res.gpus_per_worker
    if res.memory_bytes:
        resources["memory"] = res.memory_bytes
    return actors, threads, resources


def check_failures(num_prompts: int, failures: list[tuple[int, str]]) -> None:
    """Fail the job when more than half of the prompts got no answer."""
    if len(failures) * 2 > num_prompts:
        line, error = failures[0]
        raise Unavailable(
            f"the teacher failed on {len(failures)} of {num_prompts} prompts (more than half); "
            f"first failure (prompts line {line}): {error}"
        )


def _answer_all(
    cfg: SynthesisConfig, prompts: list[str], traceparent: str, progress: Progress
) -> list[dict]:
    """Run the teacher over every prompt on Ray Data; results in prompt order."""
    import ray

    if not ray.is_initialized():
        ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = False
    num_shards = max(1, min(cfg.num_shards, len(prompts)))
    actors, threads, resources = pool_shape(cfg, num_shards)
    items = [{"index": i, "prompt": p} for i, p in enumerate(prompts)]
    answered = ray.data.from_items(items, override_num_blocks=num_shards).map_batches(
        TeacherWorker,
        fn_constructor_kwargs={
            "config": cfg.model_dump(mode="json"),
            "traceparent": traceparent,
            "threads": threads,
        },
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        **resources,
    )
    results: list[dict | None] = [None] * len(prompts)
    done = failed = 0
    for shards, batch in enumerate(
        answered.iter_batches(batch_size=None, batch_format="numpy"), start=1
    ):
        for index, encoded in zip(batch["index"], batch["result"]):
            result = json.loads(encoded)
            results[int(index)] = result
            failed += "error" in result
        done += len(batch["index"])
        progress(
            0.05 + 0.9 * done / len(prompts),
            f"shard {shards} answered ({done}/{len(prompts)} prompts)",
            answered=done,
            failed=failed,
        )
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise Unavailable(f"Ray Data returned no answer for {len(missing)} prompts")
    return results  # type: ignore[return-value]


def _check_inputs(cfg: SynthesisConfig) -> None:
    """The prompts, tokenizer and local teacher the job reads: sealed artifacts must match their hashes."""
    inputs = {"spec.prompts_uri": cfg.prompts_uri}
    if isinstance(cfg.teacher, EndpointTeacherConfig):
        inputs["spec.teacher.endpoint.tokenizer"] = cfg.teacher.tokenizer
    else:
        inputs["spec.teacher.local.model"] = cfg.teacher.model
    for field, uri in inputs.items():
        if "://" in uri:  # not a hub id
            artifacts.open_input(uri, field)


def run(
    config: dict[str, Any], output_uri: str, progress: Progress, trace_id: str = ""
) -> dict[str, Any]:
    """Answer every prompt with the teacher and write a dataset artifact at output_uri."""
    cfg = SynthesisConfig.model_validate(config)
    tracing.setup_tracing("synthesis-job")
    trace_id = trace_id or tracing.current_trace_id()
    output_uri = artifacts.to_uri(output_uri)
    maps_ids = isinstance(cfg.teacher, EndpointTeacherConfig) and bool(
        cfg.teacher.tokenizer and cfg.sampling.top_logprobs
    )
    if isinstance(cfg.teacher, EndpointTeacherConfig):
        resolve_api_key(cfg.teacher.api_key_env)  # a missing key fails before any work
    _check_inputs(cfg)
    if maps_ids:
        load_token_table(cfg.teacher.tokenizer)  # so does a tokenizer that cannot be loaded

    progress(0.0, "reading prompts")
    prompts = read_prompts(cfg.prompts_uri)
    progress(0.05, f"asking the teacher for {len(prompts)} answers")
    start = time.perf_counter()
    results = _answer_all(
        cfg, [p.fields["prompt"] for p in prompts], tracing.current_traceparent(), progress
    )
    teacher_seconds = time.perf_counter() - start

    teacher_model = cfg.teacher.model
    records, failures = [], []
    for prompt, result in zip(prompts, results):
        if "error" in result:
            failures.append((prompt.line, result["error"]))
        else:
            records.append(dataset_record(prompt.fields, result, teacher_model))
    check_failures(len(prompts), failures)
    # Records whose log-probabilities lost their ids: a token the tokenizer has no id for.
    unmapped = sum(1 for r in results if r.get("unmapped_tokens"))

    progress(0.96, "writing the dataset")
    teacher_info = {"kind": cfg.teacher.kind, "model": teacher_model}
    if isinstance(cfg.teacher, EndpointTeacherConfig):
        teacher_info["base_url"] = cfg.teacher.base_url
        if cfg.teacher.tokenizer:
            teacher_info["tokenizer"] = cfg.teacher.tokenizer
    with artifacts.staged(output_uri) as staging:
        stats = write_dataset(
            staging,
            records,
            validation_fraction=cfg.validation_fraction,
            seed=cfg.seed,
            extra_stats={
                "num_prompts": len(prompts),
                "failed": len(failures),
                "failures": [{"line": line, "error": error} for line, error in failures[:20]],
                "teacher": teacher_info,
                "teacher_seconds": teacher_seconds,
                **({"unmapped_logprob_records": unmapped} if maps_ids else {}),
            },
        )
    metrics = {
        "num_prompts": float(len(prompts)),
        "num_train": float(stats["num_train"]),
        "num_validation": float(stats["num_validation"]),
        "failed": float(len(failures)),
        "teacher_seconds": teacher_seconds,
        "completion_tokens": float(stats["completion_tokens"]),
    }
    if maps_ids:
        metrics["unmapped_logprob_records"] = float(unmapped)
    artifacts.finalize(
        output_uri,
        "dataset",
        spec=cfg.model_dump(mode="json"),
        parents=[cfg.prompts_uri],
        metrics=metrics,
        trace_id=trace_id,
    )
    progress(
        1.0,
        f"dataset written: {stats['num_train']} train, {stats['num_validation']} validation",
        **metrics,
    )
    return {"output_uri": output_uri, "metrics": metrics}
