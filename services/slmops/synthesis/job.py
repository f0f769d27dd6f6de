"""The synthesis job: prompts through the teacher on Ray Data, into a dataset artifact.

Prompts are split into `num_shards` blocks; a pool of Ray actors, each holding
one teacher, answers them (for an endpoint teacher at most `max_concurrency`
requests are in flight in total). The driver commits the answers as shards
complete (checkpoint.py: a rerun asks only for what is missing), writes the
dataset folder and seals it with a manifest. Every prompt ends answered or in
`rejects.jsonl`. With several samples per prompt each accepted answer is a
record (with its `sample` number). A chat teacher's records also hold the
conversation it answered as `messages` (core/datasets.dataset_record). A job
asked to stop (JobCancelled) seals what was answered as a dataset whose stats
say it is not complete.
"""

from __future__ import annotations

import json
import time
from typing import Any

import fsspec
import numpy as np

from slmops.core import artifacts, tracing
from slmops.core.datasets import Prompt, dataset_record
from slmops.core.endpoints import resolve_api_key
from slmops.core.errors import JobCancelled, Unavailable
from slmops.core.progress import Progress, cancel_on_sigterm
from slmops.synthesis.checkpoint import Checkpoint
from slmops.synthesis.config import EndpointTeacherConfig, SynthesisConfig, validated
from slmops.synthesis.dataset import write_dataset
from slmops.synthesis.endpoint_teacher import probe
from slmops.synthesis.filters import AnswerFilter
from slmops.synthesis.inputs import read_inputs
from slmops.synthesis.teacher import make_teacher
from slmops.synthesis.token_table import load_token_table

REJECTS_FILE = "rejects.jsonl"
FILTERED_FILE = "filtered.jsonl"
ENDPOINT_ACTOR_CPUS = 0.25  # an HTTP client mostly waits
LOCAL_ACTOR_CPUS = 1.0


class TeacherWorker:
    """A Ray Data callable class: one teacher per actor, one shard per call."""

    def __init__(self, config: dict[str, Any], traceparent: str = "", threads: int = 1, share: float = 1.0):
        tracing.setup_tracing("synthesis-worker")
        cfg = validated(config)
        self.teacher = make_teacher(cfg.teacher, cfg.sampling, system_prompt=cfg.system_prompt,
                                    traceparent=traceparent, threads=threads, share=share,
                                    samples=cfg.samples_per_prompt)  # fmt: skip

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
        # One asyncio actor holds many requests in flight: more actors only for more than one machine.
        actors = max(1, min(res.num_workers, num_shards, cfg.teacher.max_concurrency))
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


def reject_record(line: int, prompt: str, result: dict[str, Any]) -> dict[str, Any]:
    """A prompt the teacher did not answer, with why and after how many attempts (rejects.jsonl)."""
    return {"line": line, "prompt": prompt, "reason": result["error"], "status": int(result.get("status", 0)),
            "attempts": int(result.get("attempts", 1))}  # fmt: skip


def check_rejects(
    num_prompts: int, rejects: list[dict[str, Any]], max_fraction: float, kept_uri: str
) -> None:
    """Fail the job when more than max_fraction of the prompts were rejected (what was answered is kept)."""
    if num_prompts and len(rejects) > max_fraction * num_prompts:
        first = rejects[0]
        raise Unavailable(
            f"the teacher failed on {len(rejects)} of {num_prompts} prompts (more than "
            f"{max_fraction:.0%}); first failure (prompts line {first['line']}, {first['attempts']} attempts): "
            f"{first['reason']}. The {num_prompts - len(rejects)} answered and the rejects are kept in {kept_uri}"
        )


def usage(results: list[dict[str, Any]], cfg: SynthesisConfig) -> dict[str, float]:
    """Attempts, retries and the teacher's tokens over every prompt; cost when prices are known."""
    prompt_tokens = sum(int(r.get("prompt_tokens", 0)) for r in results)
    completion_tokens = sum(int(r.get("completion_tokens", 0)) for r in results)
    attempts = sum(int(r.get("attempts", 1)) for r in results)
    found: dict[str, float] = {"prompt_tokens": float(prompt_tokens), "teacher_completion_tokens":
                               float(completion_tokens), "attempts": float(attempts),
                               "retries": float(attempts - len(results))}  # fmt: skip
    teacher = cfg.teacher
    if isinstance(teacher, EndpointTeacherConfig) and (teacher.price_prompt_per_million
                                                       or teacher.price_completion_per_million):  # fmt: skip
        found["cost"] = (prompt_tokens * teacher.price_prompt_per_million
                         + completion_tokens * teacher.price_completion_per_million) / 1e6  # fmt: skip
    return found


def samples_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The answers of one prompt's result: its `samples`, or the result itself."""
    return result.get("samples") or [result]


def _answer_all(cfg: SynthesisConfig, prompts: list[Prompt], results: list[dict | None], traceparent: str,
                progress: Progress, checkpoint: Checkpoint) -> None:  # fmt: skip
    """Fill results (prompt order) with the teacher's answers to every prompt not answered yet, on Ray Data.

    Each batch of answers is committed to the checkpoint as it arrives, and run
    through the filters for live counts (in arrival order; the dataset's own
    counts are taken in prompt order, so duplicates may differ by a few).
    """
    live = AnswerFilter(cfg.filters)
    for index, result in checkpoint.load().items():
        if index < len(prompts):
            results[index] = result
    done = sum(r is not None for r in results)
    failed = 0
    for index, result in enumerate(results):
        if result is not None:
            failed += _tally(live, prompts[index], result)
    if done:
        progress(0.05 + 0.9 * done / len(prompts), f"resuming: {done} of {len(prompts)} prompts were answered "
                 "before; asking the teacher for the rest", answered=done, failed=failed)  # fmt: skip
    pending = [i for i, r in enumerate(results) if r is None]
    if not pending:
        return
    import ray

    if not ray.is_initialized():
        ray.init()
        cancel_on_sigterm()  # ray.init replaced the job's SIGTERM handler
    ray.data.DataContext.get_current().enable_progress_bars = False
    num_shards = max(1, min(cfg.num_shards, len(pending)))
    actors, threads, resources = pool_shape(cfg, num_shards)
    items = [{"index": i, "prompt": prompts[i].fields["prompt"]} for i in pending]
    answered = ray.data.from_items(items, override_num_blocks=num_shards).map_batches(
        TeacherWorker,
        fn_constructor_kwargs={
            "config": cfg.model_dump(mode="json"),
            "traceparent": traceparent,
            "threads": threads,
            "share": 1.0 / actors,  # each actor keeps to its share of the job's rate limits
        },
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        **resources,
    )
    started, asked, retries = time.monotonic(), 0, 0
    for shards, batch in enumerate(answered.iter_batches(batch_size=None, batch_format="numpy"), start=1):
        answers = [
            (int(index), json.loads(encoded)) for index, encoded in zip(batch["index"], batch["result"])
        ]
        checkpoint.commit(answers)
        for index, result in answers:
            results[index] = result
            failed += _tally(live, prompts[index], result)
        done += len(answers)
        retries += sum(int(r.get("attempts", 1)) - 1 for _, r in answers)
        asked += len(answers)
        rate = asked / max(time.monotonic() - started, 1e-6)
        eta = (len(prompts) - done) / rate if rate else 0.0
        counts = live.metrics()
        dropped = ", ".join(f"{k.removeprefix('filtered_')} {int(v)}" for k, v in counts.items() if v)
        progress(
            0.05 + 0.9 * done / len(prompts),
            f"shard {shards} answered: {done}/{len(prompts)} prompts, {rate:.1f}/s, ETA {eta:.0f}s, "
            f"{retries} retries, {failed} rejected, {int(sum(counts.values()))} filtered"
            + (f" ({dropped})" if dropped else ""),
            answered=done, failed=failed, retries=retries, prompts_per_second=rate, eta_seconds=eta, **counts,
        )  # fmt: skip
    missing = sum(r is None for r in results)
    if missing:
        raise Unavailable(f"Ray Data returned no answer for {missing} prompts")


def _tally(live: AnswerFilter, prompt: Prompt, result: dict[str, Any]) -> int:
    """Run a result's answers through the live filters; 1 when the prompt was rejected."""
    if "error" in result:
        return 1
    for sample in samples_of(result):
        live.check(prompt.fields, sample)
    return 0


def _check_inputs(cfg: SynthesisConfig) -> None:
    """The prompts, tokenizer and local teacher the job reads: sealed artifacts must match their hashes."""
    inputs = {"spec.prompts_uri": cfg.prompts_uri}
    if isinstance(cfg.teacher, EndpointTeacherConfig):
        inputs["spec.endpoint.tokenizer"] = cfg.teacher.tokenizer
    else:
        inputs["spec.local.model"] = cfg.teacher.model
    for field, uri in inputs.items():
        if "://" in uri:  # not a hub id
            artifacts.open_input(uri, field)


def run(config: dict[str, Any], output_uri: str, progress: Progress, trace_id: str = "") -> dict[str, Any]:
    """Answer every prompt with the teacher and write a dataset artifact at output_uri."""
    cfg = validated(config)
    tracing.setup_tracing("synthesis-job")
    trace_id = trace_id or tracing.current_trace_id()
    output_uri = artifacts.to_uri(output_uri)
    maps_ids = isinstance(cfg.teacher, EndpointTeacherConfig) and bool(
        cfg.teacher.tokenizer and cfg.sampling.top_logprobs
    )
    if isinstance(cfg.teacher, EndpointTeacherConfig):
        # A missing key, or one not allowed to go to the teacher's host, fails before any work.
        resolve_api_key(cfg.teacher.api_key_env, cfg.teacher.base_url, "spec.endpoint.api_key_env")
        progress(0.0, f"asking the teacher at {cfg.teacher.base_url} whether it answers")
        probe(cfg.teacher)  # so does a teacher that cannot be reached, or whose host jobs may not call
    _check_inputs(cfg)
    if maps_ids:
        load_token_table(cfg.teacher.tokenizer)  # so does a tokenizer that cannot be loaded

    progress(0.0, "reading prompts")
    prompts = read_inputs(cfg.prompts_uri, cfg.prompt_template)
    progress(0.05, f"asking the teacher for {len(prompts)} answers")
    start = time.perf_counter()
    checkpoint = Checkpoint(output_uri, cfg.model_dump(mode="json"))
    results: list[dict[str, Any] | None] = [None] * len(prompts)
    cancelled: JobCancelled | None = None
    try:
        _answer_all(cfg, prompts, results, tracing.current_traceparent(), progress, checkpoint)
    except JobCancelled as exc:  # keep what was answered: seal it before Ray's grace period ends
        cancelled = exc
        progress(
            0.95, f"cancelled: sealing the {sum(r is not None for r in results)} prompts answered so far"
        )
    teacher_seconds = time.perf_counter() - start

    teacher_model = cfg.teacher.model
    records, rejects, filtered = [], [], []
    answers = AnswerFilter(cfg.filters)
    asked = [(prompt, result) for prompt, result in zip(prompts, results) if result is not None]
    for prompt, result in asked:
        if "error" in result:
            rejects.append(reject_record(prompt.line, prompt.fields["prompt"], result))
            continue
        for number, sample in enumerate(samples_of(result)):
            if (dropped := answers.check(prompt.fields, sample)) is not None:
                filtered.append({"line": prompt.line, "prompt": prompt.fields["prompt"],
                                 "completion": sample["completion"], "filter": dropped[0], "why": dropped[1]})  # fmt: skip
                continue
            record = dataset_record(prompt.fields, sample, teacher_model, chat=cfg.teacher.chat,
                                    system_prompt=cfg.system_prompt)  # fmt: skip
            if cfg.samples_per_prompt > 1:
                record["sample"] = number
            records.append(record)
    spent = usage([result for _, result in asked], cfg)
    # Records whose log-probabilities lost their ids: a token the tokenizer has no id for.
    unmapped = sum(1 for _, r in asked for sample in samples_of(r) if sample.get("unmapped_tokens"))
    not_asked = len(prompts) - len(asked)

    progress(0.96, "writing the dataset")
    teacher_info = {"kind": cfg.teacher.kind, "model": teacher_model}
    if isinstance(cfg.teacher, EndpointTeacherConfig):
        teacher_info["base_url"] = cfg.teacher.base_url
        if cfg.teacher.tokenizer:
            teacher_info["tokenizer"] = cfg.teacher.tokenizer
    answered = len(asked) - len(rejects)
    with artifacts.staged(output_uri) as staging:
        stats = write_dataset(
            staging,
            records,
            validation_fraction=cfg.validation_fraction,
            seed=cfg.seed,
            label_column=cfg.label_column,
            extra_stats={
                "num_prompts": len(prompts),
                "answered": answered,
                "accepted": len(records),
                "rejected": len(rejects),
                "complete": cancelled is None,
                "not_asked": not_asked,
                "samples_per_prompt": cfg.samples_per_prompt,
                "filtered": answers.metrics(),
                "teacher": teacher_info,
                "teacher_usage": spent,
                "teacher_seconds": teacher_seconds,
                **({"unmapped_logprob_records": unmapped} if maps_ids else {}),
            },
        )
        _write_jsonl(staging, REJECTS_FILE, rejects)
        _write_jsonl(staging, FILTERED_FILE, filtered)
    metrics = {
        "num_prompts": float(len(prompts)),
        "num_train": float(stats["num_train"]),
        "num_validation": float(stats["num_validation"]),
        "answered": float(answered),  # every prompt asked is answered or rejected
        "rejected": float(len(rejects)),
        "accepted": float(len(records)),  # answers through the filters: the dataset's records
        **answers.metrics(),
        **spent,
        "teacher_seconds": teacher_seconds,
        "completion_tokens": float(stats["completion_tokens"]),
    }
    if cancelled is not None:
        metrics["not_asked"] = float(not_asked)
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
    checkpoint.clear()  # the answers are in the sealed dataset now
    if cancelled is not None:
        progress(1.0, f"cancelled: {answered} answered prompts ({len(records)} records) kept in {output_uri}; "
                 f"{not_asked} prompts were not asked", **metrics)  # fmt: skip
        raise cancelled
    check_rejects(len(prompts), rejects, cfg.max_reject_fraction, output_uri)
    cost = f", cost {metrics['cost']:.4f}" if "cost" in metrics else ""
    progress(
        1.0,
        f"dataset written: {stats['num_train']} train, {stats['num_validation']} validation, "
        f"{len(rejects)} rejected, {len(filtered)} filtered; teacher tokens {int(spent['prompt_tokens'])} in, "
        f"{int(spent['teacher_completion_tokens'])} out{cost}",
        **metrics,
    )
    return {"output_uri": output_uri, "metrics": metrics}


def _write_jsonl(uri: str, name: str, entries: list[dict[str, Any]]) -> None:
    """rejects.jsonl (prompts the teacher did not answer) or filtered.jsonl (answers a filter dropped)."""
    fs, root = fsspec.core.url_to_fs(uri)
    with fs.open(f"{root}/{name}", "w", encoding="utf-8") as fh:
        for entry in entries:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
