"""The demo's report names the variant that ran and what each target kept of the teacher."""

from __future__ import annotations

import json

from slmops.api.v1 import common_pb2, pipeline_pb2
from slmops.core import artifacts
from slmops.demo import task
from slmops.demo.report import write_demo_report


def _run(run_id: str, report_uri: str, reused: bool) -> pipeline_pb2.PipelineRun:
    run = pipeline_pb2.PipelineRun(id=run_id, report_uri=report_uri)
    run.status.state = common_pb2.SUCCEEDED
    for name, kind in (("teacher", "train"), ("evaluate", "evaluate"), ("gate", "gate")):
        stage = run.stages.add(name=name, kind=kind, state=common_pb2.SUCCEEDED, reused=reused, seconds=2.0)
        if kind == "gate":
            stage.detail["passed"] = "true"
    return run


def _flow(tmp_path, variant: str | None) -> dict:
    folder = tmp_path / "evaluation"
    folder.mkdir(exist_ok=True)
    targets = [
        {"name": "teacher", "parameters": 600, "retention": {"accuracy": 1.0}},
        {"name": "student", "parameters": 100, "retention": {"accuracy": 0.98}},
        {"name": "student-int4", "parameters": 100, "retention": {"accuracy": 0.955}},
    ]
    (folder / "report.json").write_text(json.dumps({"num_prompts": 300, "targets": targets}))
    (folder / "report.md").write_text("")
    uri = artifacts.to_uri(folder)
    flow = {"first": _run("pipe-1", uri, False), "second": _run("pipe-2", uri, True), "first_seconds": 400.0,
            "second_seconds": 1.0, "total_seconds": 420.0, "trace_id": "t", "trace_spans": {"demo": 1}}  # fmt: skip
    if variant:
        flow["variant"] = variant
    return flow


def test_the_report_says_which_variant_ran(tmp_path):
    chat = write_demo_report(tmp_path / "chat", _flow(tmp_path, "chat"))
    assert chat["ok"] and chat["report"]["variant"] == "chat"
    assert "slmops demo (chat)" in chat["markdown"] and "/chat/completions" in chat["markdown"]
    assert task.SYSTEM_PROMPT in chat["markdown"]
    assert "student 98.0%, int4 student 95.5%" in chat["markdown"]
    saved = json.loads((tmp_path / "chat" / "report.json").read_text())
    assert saved["variant"] == "chat" and saved["headline"]["retention_int4"] == 0.955

    plain = write_demo_report(tmp_path / "plain", _flow(tmp_path, None))
    assert plain["report"]["variant"] == "completion"
    assert "slmops demo (completion)" in plain["markdown"] and "/chat/completions" not in plain["markdown"]
