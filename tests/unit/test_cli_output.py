"""What the CLI prints: tables drawn by rich read as plain text off a terminal (tests and pipes),
the live stage table redraws on a terminal, and --json stays the message's JSON."""

from __future__ import annotations

import io
import json

from google.protobuf import json_format

from slmops.api.v1 import common_pb2, pipeline_pb2, serving_pb2, training_pb2
from slmops.cli import common, main, pipeline_commands
from slmops.core import artifacts


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _job() -> training_pb2.TrainingJob:
    job = training_pb2.TrainingJob(id="train-1")
    job.status.state = common_pb2.SUCCEEDED
    job.status.output.uri = "file:///o"
    job.status.metrics["train_loss"] = 1.23456789
    job.status.metrics["step"] = 12
    return job


def test_a_job_prints_as_plain_lines_or_as_its_json(capsys):
    assert common.print_job(_job(), as_json=False) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert out.splitlines() == ["train-1: SUCCEEDED", "output: file:///o", "  step              12",
                                "  train_loss   1.23457"]  # fmt: skip
    failed = _job()
    failed.status.state = common_pb2.FAILED
    assert common.print_job(failed, as_json=True) == 1
    out = capsys.readouterr().out
    assert out == json_format.MessageToJson(failed, preserving_proto_field_name=True) + "\n"
    assert json.loads(out)["status"]["state"] == "FAILED"


def test_a_synthesis_jobs_figures_in_their_order():
    figures = common.synth_figures({"cost": 0.25, "num_prompts": 1000, "filtered_empty": 1})
    assert common.render(figures).splitlines() == ["prompts            1,000", "cost              0.2500",
                                                   "filtered: empty        1"]  # fmt: skip


def test_revisions_keep_their_columns(capsys):
    deployment = serving_pb2.Deployment(name="tiny", state=serving_pb2.DEPLOYMENT_READY, url="http://h:1",
                                        latest_revision=2, serving_revision=1)  # fmt: skip
    deployment.revisions.add(name="tiny-2", number=2, traffic_percent=40, state=serving_pb2.DEPLOYMENT_READY,
                             model_uri="file:///m2")  # fmt: skip
    deployment.revisions.add(name="tiny-1", number=1, traffic_percent=100, state=serving_pb2.DEPLOYMENT_READY,
                             model_uri="[bold]file:///m1", reason="why\nmore")  # fmt: skip
    common.print_deployment(deployment)
    assert capsys.readouterr().out.splitlines() == [
        "tiny: READY",
        "  OpenAI base URL: http://h:1/openai/v1",
        "  tiny-2                    40% READY     file:///m2 (canary)",
        "  tiny-1                   100% READY     [bold]file:///m1 (serving)  why",  # text, never markup
    ]


def test_status_is_a_table_of_health(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    rows = [("training", "127.0.0.1:1", "SERVING"), ("serving", "127.0.0.1:2", "DOWN (UNAVAILABLE)")]
    monkeypatch.setattr("slmops.cli.stack.status", lambda data_dir: rows)
    assert main.main(["status"]) == 1  # not everything is serving; no deployments asked for
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["component", "address", "health"] and set(lines[1]) == {"─"}
    assert lines[2:] == ["training    127.0.0.1:1   SERVING", "serving     127.0.0.1:2   DOWN (UNAVAILABLE)"]


def _run(state: int) -> pipeline_pb2.PipelineRun:
    run = pipeline_pb2.PipelineRun(id="pipe-1")
    run.status.state = state
    run.stages.add(name="teacher", kind="train", state=state, seconds=12.0, message="epoch 1/1")
    return run


def test_follow_redraws_the_stage_table_on_a_terminal_and_prints_changes_otherwise(monkeypatch):
    runs = [_run(common_pb2.RUNNING), _run(common_pb2.RUNNING), _run(common_pb2.SUCCEEDED)]
    monkeypatch.setattr(
        pipeline_commands.client, "stub", lambda service: type("Stub", (), {"GetPipelineRun": 0})
    )
    monkeypatch.setattr(pipeline_commands.client, "call", lambda method, request, **_: runs.pop(0))
    monkeypatch.setattr(pipeline_commands.time, "sleep", lambda seconds: None)
    pending = [("teacher", "train"), ("student", "train")]
    out = io.StringIO()
    assert pipeline_commands.follow("pipe-1", pending, out).status.state == common_pb2.SUCCEEDED
    assert out.getvalue() == "  teacher: running: epoch 1/1\n  teacher: epoch 1/1\n"  # a line per change

    runs[:] = [_run(common_pb2.RUNNING), _run(common_pb2.SUCCEEDED)]
    terminal = Terminal()
    pipeline_commands.follow("pipe-1", pending, terminal)
    drawn = terminal.getvalue()
    assert drawn.count("student") >= 2 and "waiting" in drawn and "12.0s" in drawn  # drawn again, in place
    assert "\x1b[1A" in drawn  # the cursor goes back up over the first drawing


def test_the_summary_draws_the_reports_tables(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text(
        "# Evaluation\n\nDataset: `d` (3 prompts).\n\n| target | accuracy |\n| --- | ---: |\n"
        "| teacher | 98.7% |\n| student-int4 | 9.0% |\n\n## Against the reference (teacher)\n\n| x |\n"
    )
    uri = artifacts.to_uri(report)
    markdown = pipeline_commands.report_tables(uri)
    assert markdown.endswith("| student-int4 | 9.0% |") and "Against" not in markdown  # for a markdown report
    run = _run(common_pb2.SUCCEEDED)
    run.report_uri = uri
    text = pipeline_commands.summary(run)
    assert "\nDataset: `d` (3 prompts).\n\ntarget         accuracy\n" in text, text
    assert "\nteacher           98.7%\nstudent-int4       9.0%\n" in text, (
        text
    )  # right-aligned as the --- : says
    assert f"report: {report / 'report.html'}" in text and "|" not in text


def test_pipeline_schema_prints_the_pipeline_services_schema(capsys):
    from slmops.pipeline.definition import schema

    assert main.main(["pipeline", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == schema()
