"""`slmops list|logs|watch|get|cancel` and `--json`: each verb's flags, the requests it sends, and what
it prints.

The services are stand-ins here (objects with the stubs' methods that record each
request and answer from lists), so that paging, resuming a broken stream and the
exit statuses are checked without a stack; tests/integration/test_cli_verbs_stack.py
runs the same verbs against the real one.
"""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from slmops.api.v1 import common_pb2, pipeline_pb2, serving_pb2, synthesis_pb2, training_pb2
from slmops.cli import client, list_commands
from slmops.cli.common import job_kind, ray_log
from slmops.cli.main import build_parser, main
from slmops.cli.progress import LiveView, stream_events


class _Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode):
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._code.name


def _time(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def _job(cls, job_id: str, state: int, created: int, **status) -> object:
    return cls(id=job_id, status=common_pb2.JobStatus(state=state, create_time=_time(created), **status))


def _pages(requests: list, pages: list, response, field: str):
    """A List method answering `pages` in turn, each with a token to the next."""

    def method(request, **_):
        requests.append(request)
        index = int(request.page_token or 0)
        token = str(index + 1) if index + 1 < len(pages) else ""
        return response(**{field: pages[index]}, next_page_token=token)

    return method


@pytest.fixture
def services(monkeypatch):
    """client.stub(service) answers with these stand-ins; `requests[service]` records what was asked."""
    requests: dict[str, list] = {name: [] for name in ("synthesis", "training", "conversion", "evaluation",
                                                       "pipeline", "serving")}  # fmt: skip
    synth_pages = [[_job(synthesis_pb2.SynthesisJob, f"synth-{i}", common_pb2.SUCCEEDED, 100 + i)
                    for i in range(page * 2, page * 2 + 2)] for page in range(3)]  # fmt: skip
    stubs = {
        "synthesis": SimpleNamespace(ListSynthesisJobs=_pages(requests["synthesis"], synth_pages,
                                                              synthesis_pb2.ListSynthesisJobsResponse, "jobs")),
        "training": SimpleNamespace(ListTrainingJobs=_pages(requests["training"], [[
            _job(training_pb2.TrainingJob, "train-a", common_pb2.FAILED, 500, reason="out of memory")]],
            training_pb2.ListTrainingJobsResponse, "jobs")),
        "conversion": SimpleNamespace(ListConversionJobs=_pages(requests["conversion"], [[]],
                                                                __import__("slmops.api.v1.conversion_pb2",
                                                                fromlist=["x"]).ListConversionJobsResponse, "jobs")),
        "evaluation": SimpleNamespace(ListEvaluationJobs=_pages(requests["evaluation"], [[]],
                                                                __import__("slmops.api.v1.evaluation_pb2",
                                                                fromlist=["x"]).ListEvaluationJobsResponse, "jobs")),
        "pipeline": SimpleNamespace(ListPipelineRuns=_pages(requests["pipeline"], [[
            _job(pipeline_pb2.PipelineRun, "pipe-1", common_pb2.RUNNING, 400)]],
            pipeline_pb2.ListPipelineRunsResponse, "runs")),
        "serving": SimpleNamespace(ListDeployments=_pages(requests["serving"], [[
            serving_pb2.Deployment(name="live", state=serving_pb2.DEPLOYMENT_READY, create_time=_time(300),
                                   url="http://127.0.0.1:9"),
            serving_pb2.Deployment(name="gone", state=serving_pb2.DEPLOYMENT_DELETED, create_time=_time(301))]],
            serving_pb2.ListDeploymentsResponse, "deployments")),
    }  # fmt: skip
    monkeypatch.setattr(client, "stub", lambda service, override=None: stubs[service])
    return requests


def _listed(capsys, *flags: str) -> list[dict]:
    assert main(["list", *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_reads_every_page_of_every_kind_newest_first(services, capsys):
    listed = _listed(capsys)
    assert [(item["kind"], item.get("id") or item["name"]) for item in listed] == [
        ("train", "train-a"), ("pipeline", "pipe-1"), ("deployments", "live"),
        *[("synth", f"synth-{i}") for i in reversed(range(6))],
    ]  # fmt: skip
    # the deleted deployment is left out
    assert [r.page_token for r in services["synthesis"]] == ["", "1", "2"]
    assert all(r.page_size == list_commands.PAGE_SIZE for r in services["synthesis"])
    assert listed[0]["status"]["reason"] == "out of memory"  # each item is its message's JSON


def test_list_filters_by_kind_state_and_labels(services, capsys):
    listed = _listed(capsys, "train", "--state", "FAILED", "--label", "team=a")
    assert [i["id"] for i in listed] == ["train-a"]
    (request,) = services["training"]
    assert request.state == common_pb2.FAILED and dict(request.labels) == {"team": "a"}
    assert not services["synthesis"]  # one kind asked, not every service
    assert [i["name"] for i in _listed(capsys, "--state", "ready")] == ["live"]  # a deployment state only
    assert not services["synthesis"] and services["serving"][-1].labels == {}
    assert [i["name"] for i in _listed(capsys, "deployments", "--state", "deleted")] == ["gone"]
    with pytest.raises(SystemExit, match="error: --state ready: synth are pending, running"):
        main(["list", "synth", "--state", "ready"])


def test_list_prints_a_table_without_json(services, capsys):
    assert main(["list", "train"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["kind", "id", "state", "progress", "created", "(UTC)", "what"]
    assert out[2].split()[:4] == ["train", "train-a", "FAILED", "0%"] and "out of memory" in out[2]


def test_list_requests_per_kind():
    request = list_commands.list_request("bench", "succeeded", {"k": "v"}, "t")
    assert isinstance(request, common_pb2.ListJobsRequest)
    assert (request.state, request.page_token) == (common_pb2.SUCCEEDED, "t") and request.labels == {"k": "v"}
    deployments = list_commands.list_request("deployments", "ready", {"k": "v"})
    assert isinstance(deployments, serving_pb2.ListDeploymentsRequest) and deployments.labels == {"k": "v"}
    assert list_commands.kinds_for(None, "cancelled") == ["synth", "train", "convert", "bench", "pipeline"]
    assert list_commands.kinds_for(None, "failed")[-1] == "deployments"


def _event(sequence: int, state: int, fraction: float, message: str) -> common_pb2.ProgressEvent:
    return common_pb2.ProgressEvent(job_id="synth-1", sequence=sequence, state=state, fraction=fraction,
                                    message=message, time=_time(1_800_000_000 + sequence))  # fmt: skip


class _Job:
    """A synthesis job's stand-in: Watch answers its events from after_sequence (breaking once after the
    first when `breaks`, and, while it runs, holding the stream open until the call's timeout)."""

    def __init__(self, events, final_state, breaks=False, ray_job_id=""):
        self.events, self.final_state, self.breaks, self.ray_job_id = events, final_state, breaks, ray_job_id
        self.watches: list[tuple[int, float | None]] = []

    def WatchSynthesisJob(self, request, timeout=None):
        self.watches.append((request.after_sequence, timeout))
        for event in self.events:
            if event.sequence > request.after_sequence:
                yield event
                if self.breaks and len(self.watches) == 1:
                    raise _Rpc(grpc.StatusCode.UNAVAILABLE)
        if self.final_state == common_pb2.RUNNING:
            assert timeout is not None, "a running job's stream never ends without a timeout"
            raise _Rpc(grpc.StatusCode.DEADLINE_EXCEEDED)

    def GetSynthesisJob(self, request, **_):
        return synthesis_pb2.SynthesisJob(id=request.id, status=common_pb2.JobStatus(
            state=self.final_state, ray_job_id=self.ray_job_id, reason="teacher down" * (
                self.final_state == common_pb2.FAILED)))  # fmt: skip


EVENTS = [_event(1, common_pb2.PENDING, 0.0, "queued"), _event(2, common_pb2.RUNNING, 0.5, "shard 1/2"),
          _event(3, common_pb2.SUCCEEDED, 1.0, "done")]  # fmt: skip


def test_events_replay_from_the_first_and_resume_after_the_last_seen():
    job, seen = _Job(EVENTS, common_pb2.SUCCEEDED, breaks=True), []
    assert stream_events(job.WatchSynthesisJob, "synth-1", seen.append)
    assert [e.sequence for e in seen] == [1, 2, 3]
    assert job.watches == [(0, None), (1, None)]  # from sequence 0; then after the one seen


def test_logs_of_a_finished_job_with_its_ray_log(monkeypatch, tmp_path, capsys):
    job = _Job(EVENTS, common_pb2.SUCCEEDED, ray_job_id="slmops-synth-1")
    monkeypatch.setattr(client, "stub", lambda service, override=None: job)
    log = tmp_path / "ray" / "session_2026-01-01_00-00-00_000000_1" / "logs" / "job-driver-slmops-synth-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("")
    monkeypatch.setattr(client, "read_stack", lambda: {"ray": {"temp_dir": str(tmp_path / "ray")}})
    assert main(["logs", "synth-1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in out[:3]] == ["synth"] * 3 and "shard 1/2" in out[1]
    assert out[0].startswith("2027-01-15 08:00:01Z") and " 50.0% RUNNING " in out[1]
    assert out[3] == "synth-1: SUCCEEDED" and out[4] == f"Ray job slmops-synth-1: {log}"
    assert job.watches == [(0, None)]
    assert main(["logs", "synth-1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [e["sequence"] for e in document["events"]] == ["1", "2", "3"] and document["ray_log"] == str(log)


def test_logs_of_a_running_job_stop_at_what_it_reported_unless_followed(monkeypatch, capsys):
    job = _Job(EVENTS[:2], common_pb2.RUNNING)
    monkeypatch.setattr(client, "stub", lambda service, override=None: job)
    monkeypatch.setattr(client, "read_stack", lambda: {})
    assert main(["logs", "synth-1"]) == 0
    out = capsys.readouterr().out
    assert "queued" in out and "shard 1/2" in out and "RUNNING (still running: --follow" in out
    (after, timeout), = job.watches  # fmt: skip
    assert after == 0 and 0 < timeout <= 2.0
    job.final_state, job.events = common_pb2.SUCCEEDED, EVENTS
    job.watches.clear()
    assert main(["logs", "synth-1", "--follow"]) == 0
    assert job.watches == [(0, None)] and "done" in capsys.readouterr().out


def test_the_ray_log_is_the_ray_command_when_the_file_is_not_here(monkeypatch):
    monkeypatch.setattr(client, "read_stack", lambda: {"ray": {"address": "http://127.0.0.1:8265"}})
    assert ray_log("slmops-train-1") == "ray job logs slmops-train-1 --address http://127.0.0.1:8265"
    assert ray_log("") == ""


@pytest.mark.parametrize("state, code", [(common_pb2.SUCCEEDED, 0), (common_pb2.FAILED, 1),
                                         (common_pb2.CANCELLED, 1)])  # fmt: skip
def test_watch_exits_0_only_when_the_job_succeeded(monkeypatch, capsys, state, code):
    job = _Job([*EVENTS[:2], _event(3, state, 1.0, "ended")], state)
    monkeypatch.setattr(client, "stub", lambda service, override=None: job)
    assert main(["watch", "synth-1"]) == code
    captured = capsys.readouterr()
    assert captured.out.startswith(f"synth-1: {common_pb2.JobState.Name(state)}")
    assert captured.err.count("synth synth-1") == 3  # not a terminal: a line per event
    assert main(["watch", "synth-1", "--json"]) == code
    assert json.loads(capsys.readouterr().out)["id"] == "synth-1"


def test_the_live_view_draws_state_bar_and_message_on_a_terminal(tmp_path):
    class Terminal:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

        def isatty(self):
            return True

    out = Terminal()
    with LiveView("train train-1", out=out) as view:
        view.update(_event(1, common_pb2.RUNNING, 0.25, "step 3/12 [bold]x"))
    assert "train train-1" in out.text and "25%" in out.text and "RUNNING" in out.text
    assert "step 3/12 [bold]x" in out.text  # the job's words as they are, never markup


def test_get_and_cancel_reach_pipeline_runs_and_bench_jobs(monkeypatch, capsys):
    asked = []

    def answer(noun):
        def method(request, **_):
            asked.append((noun, request.id))
            return pipeline_pb2.PipelineRun(id=request.id, status=common_pb2.JobStatus(state=common_pb2.CANCELLED),
                                            stages=[pipeline_pb2.StageStatus(name="teach", kind="synthesize",
                                                    job_id="synth-9", state=common_pb2.CANCELLED)])  # fmt: skip

        return method

    stub = SimpleNamespace(GetPipelineRun=answer("get"), CancelPipelineRun=answer("cancel"))
    monkeypatch.setattr(
        client, "stub", lambda service, override=None: stub if service == "pipeline" else None
    )
    assert main(["cancel", "pipe-0123456789ab"]) == 0
    assert main(["get", "pipe-0123456789ab"]) == 1  # not SUCCEEDED
    out = capsys.readouterr().out
    assert asked == [("cancel", "pipe-0123456789ab"), ("get", "pipe-0123456789ab")]
    assert "pipe-0123456789ab: CANCELLED" in out and "teach" in out and "synth-9" in out
    assert job_kind("evalu-123").service == "evaluation" and job_kind("evalu-123").name == "bench"
    with pytest.raises(SystemExit, match=r"'nope-0123456789ab' is not a job id \(synth-\.\.\., .*pipe-"):
        main(["get", "nope-0123456789ab"])


def _verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in action.choices.items():
        if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            yield from _verbs(sub, (*prefix, name))
        else:
            yield (*prefix, name), sub


def test_every_verb_but_serve_has_json():
    """serve becomes the predictor process: it prints no result to put in JSON."""
    missing = [" ".join(name) for name, sub in _verbs(build_parser())
               if name != ("serve",) and not any("--json" in a.option_strings for a in sub._actions)]  # fmt: skip
    assert missing == []


def test_status_up_and_down_as_json(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    rows = [("training", "127.0.0.1:1", "SERVING"), ("serving", "127.0.0.1:2", "DOWN (UNAVAILABLE)")]
    monkeypatch.setattr("slmops.cli.stack.status", lambda data_dir: rows)
    assert main(["status", "--json", "--settings"]) == 1
    document = json.loads(capsys.readouterr().out)
    serving = {"name": "serving", "address": "127.0.0.1:2", "health": "DOWN (UNAVAILABLE)"}
    assert document["components"][1] == serving
    assert document["deployments"] == [] and document["settings"]["SLMOPS_DATA_DIR"] == str(tmp_path)

    record = {"data_dir": str(tmp_path), "ray": {"pid": 1}, "services": {}, "auth": {"token_file": "/t"}}

    def up(data_dir, **kwargs):
        kwargs["say"]("starting")  # progress goes to stderr, the record alone to stdout
        return record

    monkeypatch.setattr("slmops.cli.stack.up", up)
    monkeypatch.setattr("slmops.cli.stack.down", lambda data_dir, **kwargs: 7)
    assert main(["up", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == record and "starting" in captured.err
    assert main(["down", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"stopped": 7}


def test_lineage_as_json(monkeypatch, capsys, tmp_path):
    from slmops.core import artifacts

    source = tmp_path / "prompts.jsonl"
    source.write_text("{}\n")
    assert main(["lineage", str(source), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["kind"] == "file" and entry["uri"] == artifacts.to_uri(source)
