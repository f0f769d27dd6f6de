"""Runs a pipeline: each stage through its own service, in file order, reusing what has not changed.

Every stage has a key: the sha256 of its kind, its settings and the keys of
the stages it names (for an input file or folder, its content's hashes). A
stage whose key a finished run recorded, and whose output still exists, is
reused, not run again: a rerun of an unchanged file runs nothing; a changed
training config reruns training and what follows it, nothing before; after a
failure, the rerun starts at the failed stage.

The run record holds each stage's state, job id and output, so `Get` shows
where a run is, and a runner made with the stages a run recorded
(`recorded=...`) resumes it after the pipeline service restarts: finished
stages keep their outputs and the stage in flight is re-attached by its job id.

An input stage's URI is checked when the run is created and again when it
runs (`check_input`): confined like every URI a request names, a local one an
existing file or folder of regular files within the input budgets, and only
then hashed, in a worker thread. A model stage may name a hub id instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from typing import Any

from slmops.core import artifacts, input_files, tracing
from slmops.core.errors import InvalidSpec, NotFound, SlmopsError, collect
from slmops.core.jobs.store import JobRecord, JobStore
from slmops.pipeline import stages as kinds
from slmops.pipeline.definition import FIELD, Definition, shown
from slmops.pipeline.stages import Outcome, StageFailed

log = logging.getLogger(__name__)
INPUT_KINDS = ("prompts", "dataset", "model")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


class StageCache:
    """Outputs of finished stages by key, kept in the pipeline service's job store (records of kind
    `pipeline-stage`, id = key), so that every replica, and a restarted service, can reuse them."""

    KIND = "pipeline-stage"

    def __init__(self, store: JobStore):
        self.store = store

    def get(self, key: str) -> Outcome | None:
        try:
            entry = self.store.get(key, self.KIND).result
        except NotFound:
            return None
        return Outcome(output=entry.get("output", ""), detail=dict(entry.get("detail", {})),
                       job_id=entry.get("job_id", ""))  # fmt: skip

    def put(self, key: str, stage: str, kind: str, outcome: Outcome, run_id: str) -> None:
        result = {"stage": stage, "kind": kind, "output": outcome.output, "detail": outcome.detail,
                  "job_id": outcome.job_id, "run_id": run_id}  # fmt: skip
        try:
            self.store.update(key, result=result, output_uri=outcome.output)
        except NotFound:
            self.store.create(
                JobRecord(
                    id=key,
                    kind=self.KIND,
                    state="SUCCEEDED",
                    spec={"stage": stage, "kind": kind},
                    result=result,
                    output_uri=outcome.output,
                    message=f"{stage} of {run_id}",
                )
            )


def input_field(name: str) -> str:
    """The path of an input stage's URI in the request."""
    return f"{FIELD}.stages.{shown(name)}.uri"


def is_hub_id(kind: str, uri: str) -> bool:
    """A model stage's `org/name` (Qwen/Qwen2.5-0.5B): resolved by the stage that reads it."""
    return kind == "model" and bool(HUB_ID.match(uri)) and ".." not in uri


def check_input(name: str, kind: str, uri: str) -> str:
    """The URI an input stage hands on (a local path as its canonical file:// URI; a hub id as it is),
    once it is confined, exists, holds regular files only and fits the input budgets (reads no content
    but a manifest); InvalidSpec naming stages.<name>.uri otherwise. Blocking: call it in a thread."""
    field = input_field(name)
    if "://" not in uri and not uri.startswith(("/", "~")):
        if is_hub_id(kind, uri):
            return uri
        hub = " or a hub id (Qwen/Qwen2.5-0.5B)" if kind == "model" else ""
        raise InvalidSpec(field, f"is a relative path; give an absolute path, a URI{hub} "
                                 "(`slmops pipeline run` makes a file's relative paths absolute)")  # fmt: skip
    canonical = artifacts.confine(uri, None, field)
    input_files.list_input(canonical, field)  # before open_input reads anything
    artifacts.open_input(canonical, field, verify=False)  # the stage's own job checks the hashes
    return canonical


def check_inputs(definition: Definition) -> None:
    """Every input stage checked (check_input); one InvalidSpec naming each problem."""
    problems: list[tuple[str, str]] = []
    for name, stage in definition.stages.items():
        if stage.kind in INPUT_KINDS:
            try:
                check_input(name, stage.kind, stage.uri)
            except InvalidSpec as exc:
                problems.extend(exc.problems)
    collect(problems)


def content_key(uri: str, field_name: str = "uri") -> str:
    """The sha256 of a checked input's content (every file under a folder, within the input budgets);
    of the id itself for a hub id. Blocking: call it in a thread."""
    if "://" not in uri:
        return hashlib.sha256(uri.encode()).hexdigest()
    hashes = input_files.hash_input(uri, field_name)
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def _checked_content(name: str, kind: str, uri: str) -> tuple[str, str]:
    """(the URI the stage hands on, its content key), checked again as the run reaches it."""
    try:
        checked = check_input(name, kind, uri)
        return checked, content_key(checked, input_field(name))
    except SlmopsError as exc:
        raise StageFailed(str(exc)) from None
    except OSError as exc:
        raise StageFailed(f"{input_field(name)}: cannot read the input ({exc.strerror or exc})") from None


class PipelineRunner:
    def __init__(self, store: JobStore, run_id: str, definition: Definition,
                 recorded: list[dict[str, Any]] | None = None, cache: StageCache | None = None,
                 traceparent: str = ""):  # fmt: skip
        self.store, self.run_id, self.definition = store, run_id, definition
        self.stages: list[dict[str, Any]] = []
        self.recorded = {stage["name"]: stage for stage in recorded or []}
        self.cache = cache or StageCache(store)
        self.traceparent = traceparent
        self.current_job: tuple[str, str] | None = None
        self.extra: dict[str, Any] = {}
        self.inputs: dict[str, str] = {}  # input stage -> the checked URI it hands on

    def _save(self, **changes: Any) -> None:
        self.store.update(self.run_id, result={"stages": self.stages, **self.extra}, **changes)

    def _event(self, fraction: float, message: str) -> None:
        self.store.add_event(self.run_id, "RUNNING", fraction, message)
        self._save(fraction=fraction, message=message)

    def key(self, name: str, keys: dict[str, str], content: str = "") -> str:
        stage = self.definition.stages[name]
        inputs = {field: [keys[ref] for ref in refs] for field, refs in self.definition.refs(name).items()}
        body = {
            "kind": stage.kind,
            "stage": stage.model_dump(mode="json"),
            "inputs": inputs,
            "content": content,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    async def run(self) -> None:
        with tracing.span_from("pipeline.run", self.traceparent, {"slmops.run_id": self.run_id}):
            await self._run()

    async def _run(self) -> None:
        order = self.definition.order()
        done: dict[str, Outcome] = {}
        keys: dict[str, str] = {}
        self.store.update(self.run_id, state="RUNNING")
        try:
            for index, name in enumerate(order):
                stage = self.definition.stages[name]
                entry = {
                    "name": name,
                    "kind": stage.kind,
                    "key": "",
                    "job_id": "",
                    "state": "RUNNING",
                    "output": "",
                    "reason": "",
                    "reused": False,
                    "message": "",
                    "seconds": 0.0,
                    "detail": {},
                }
                self.stages.append(entry)
                content = ""
                if stage.kind in INPUT_KINDS:
                    checked, content = await asyncio.to_thread(_checked_content, name, stage.kind, stage.uri)
                    self.inputs[name] = checked
                keys[name] = entry["key"] = self.key(name, keys, content)
                started = time.time()
                outcome, how = await self._resume_or_reuse(name, keys[name])
                if outcome is None:
                    before = self.recorded.get(name, {})
                    attach = (
                        before.get("job_id")
                        if before.get("state") == "RUNNING" and before.get("key") == keys[name]
                        else ""
                    )
                    self._event(
                        index / len(order), f"{name}: {'re-attached to ' + attach if attach else 'started'}"
                    )
                    outcome = await self._execute(name, index, len(order), done)
                    how = "done"
                    await asyncio.to_thread(
                        self.cache.put, keys[name], name, stage.kind, outcome, self.run_id
                    )
                done[name] = outcome
                entry.update(state="SUCCEEDED", output=outcome.output, detail=outcome.detail,
                             job_id=outcome.job_id or entry["job_id"],
                             reused=how == "reused", seconds=round(time.time() - started, 2),
                             message=self._says(name, outcome, how))  # fmt: skip
                self._event((index + 1) / len(order), f"{name}: {entry['message']}")
        except StageFailed as exc:
            self.stages[-1].update(state="FAILED", reason=str(exc), message=str(exc))
            self._finish("FAILED", str(exc), done)
            return
        failed_gates = [n for n in order if self.definition.stages[n].kind == "gate" and n in done
                        and done[n].detail.get("passed") != "true"]  # fmt: skip
        if failed_gates:
            rolled = [n for n in order if self.definition.stages[n].kind == "rollout"
                      and done[n].detail.get("action") == "rolled back"]  # fmt: skip
            reason = "; ".join(f"gate {n} failed: {done[n].detail.get('reasons', '')}" for n in failed_gates)
            if rolled:
                reason += "; the canary was rolled back"
            self._finish("FAILED", reason, done)
            return
        self._finish("SUCCEEDED", "", done)

    def _finish(self, state: str, reason: str, done: dict[str, Outcome]) -> None:
        order = self.definition.order()
        evaluations = [n for n in order if self.definition.stages[n].kind == "evaluate" and n in done]
        if evaluations:
            self.extra["report_uri"] = done[evaluations[-1]].output
        deployed = [n for n in order if self.definition.stages[n].kind == "deploy" and n in done]
        if deployed:
            served = done[deployed[-1]].output
            self.extra["lineage"] = [{"kind": m.kind, "uri": m.uri} for m in artifacts.lineage(served)]
        reused = sum(1 for s in self.stages if s.get("reused"))
        message = reason or f"done: {len(self.stages)} stages, {reused} reused"
        last = done[order[-1]].output if order and order[-1] in done else ""
        finished = {"fraction": 1.0} if state == "SUCCEEDED" else {}
        self._save(state=state, reason=reason, message=message, output_uri=last, **finished)
        self.store.add_event(self.run_id, state, 1.0 if state == "SUCCEEDED" else 0.0, message)

    @staticmethod
    def _says(name: str, outcome: Outcome, how: str) -> str:
        d = outcome.detail
        if "action" in d:
            what = (
                f"{d['action']} (revision {d['canary_revision']}); serving revision {d['serving_revision']}"
            )
        elif "passed" in d and "reasons" in d:
            what = f"{'PASSED' if d['passed'] == 'true' else 'FAILED'}: {d['reasons']}"
        elif "revision" in d:
            what = f"{d['deployment']} revision {d['revision']} at {d['url']}"
        else:
            what = outcome.output
        prefix = {"reused": "reused", "resumed": "done before the restart"}.get(how, "done")
        return f"{prefix} -> {what}"

    async def _resume_or_reuse(self, name: str, key: str) -> tuple[Outcome | None, str]:
        """An outcome recorded before a restart, or an unchanged earlier run's; (None, '') to run it."""
        before = self.recorded.get(name, {})
        if before.get("state") == "SUCCEEDED" and before.get("key") == key:
            return Outcome(
                before.get("output", ""), dict(before.get("detail", {})), before.get("job_id", "")
            ), "resumed"
        kind = self.definition.stages[name].kind
        cached = await asyncio.to_thread(self.cache.get, key)
        if cached is None:
            return None, ""
        if kind in kinds.JOBS and not await asyncio.to_thread(artifacts.is_artifact, cached.output):
            return None, ""  # the output was deleted
        if kind == "deploy" and not await asyncio.to_thread(kinds.still_deployed, cached):
            return None, ""
        return cached, "reused"

    async def _execute(self, name: str, index: int, total: int, done: dict[str, Outcome]) -> Outcome:
        stage = self.definition.stages[name]
        entry = self.stages[-1]
        if stage.kind in INPUT_KINDS:
            return Outcome(output=self.inputs[name])
        if stage.kind == "gate":
            return await asyncio.to_thread(kinds.gate, name, done[stage.evaluation])
        if stage.kind == "rollout":
            return await asyncio.to_thread(kinds.rollout, name, done[stage.canary], done[stage.gate])
        spec = kinds.wired_spec(self.definition, name, done)
        if stage.kind == "deploy":
            entry["job_id"] = spec.name
            self._save()
            percent = stage.canary_percent if stage.canary_of else 0
            return await asyncio.to_thread(kinds.deploy, name, spec, percent)
        before = self.recorded.get(name, {})
        job_id = (
            before.get("job_id", "")
            if before.get("state") == "RUNNING" and before.get("key") == entry["key"]
            else ""
        )

        def on_job(job: str) -> None:
            entry["job_id"] = job
            self.current_job = (stage.kind, job)
            self._save()

        def on_progress(fraction: float, message: str) -> None:
            entry["message"] = message
            self._save(fraction=(index + fraction) / total, message=f"{name}: {message}")

        outcome, job = await asyncio.to_thread(
            kinds.run_job, name, stage.kind, spec, job_id, on_job, on_progress
        )
        self.current_job = None
        if stage.kind == "evaluate":
            outcome.detail = kinds.evaluation_detail(job)
        return outcome

    def cancel_current(self) -> None:
        if self.current_job:
            kind, job_id = self.current_job
            try:
                kinds.cancel_job(kind, job_id)
            except Exception as exc:  # noqa: BLE001 - best effort while the run stops
                log.warning("could not cancel %s job %s: %s", kind, job_id, exc)
