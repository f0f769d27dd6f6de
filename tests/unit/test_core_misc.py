from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from slmops.core import progress, settings
from slmops.core.jobs.stage import _error_reason

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_progress_lines_round_trip(capsys):
    progress.stdout_progress(0.5, "half way", loss=1.25)
    progress.emit_result({"output_uri": "file:///x"})
    lines = capsys.readouterr().out.splitlines()
    kind, event = progress.parse_line("(RayTrainWorker pid=1) " + lines[0])
    assert kind == "progress" and event["fraction"] == 0.5 and event["metrics"] == {"loss": 1.25}
    assert progress.parse_line(lines[1]) == ("result", {"output_uri": "file:///x"})
    assert progress.parse_line("ordinary log line") is None
    assert progress.parse_line(progress.PREFIX + "{broken") is None


def test_settings_precedence(monkeypatch):
    monkeypatch.delenv("SLMOPS_SERVING_BACKEND", raising=False)
    assert settings.get("serving_backend") == "local"
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "kserve")
    assert settings.get("serving_backend") == "kserve"
    assert settings.get("serving_backend", "local") == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert settings.ray_address() == "http://10.1.2.3:8265"
    assert all(help_text for _, _, help_text in settings.describe())


def test_error_reason_prefers_the_job_error_line():
    logs = "starting\nTraceback...\nValueError: deep\nSLMOPS_ERROR InvalidSpec: spec.x: bad\n"
    assert _error_reason(logs, "") == "InvalidSpec: spec.x: bad"
    assert _error_reason("a\nRuntimeError: boom\n", "") == "RuntimeError: boom"
    assert _error_reason("", "fallback") == "fallback"


def test_domain_errors_survive_pickling_across_processes():
    import pickle

    from slmops.core.errors import InvalidSpec, NotFound

    error = pickle.loads(pickle.dumps(InvalidSpec("spec.a", "bad", ("spec.b", "worse"))))
    assert error.problems == [("spec.a", "bad"), ("spec.b", "worse")] and "spec.b: worse" in str(error)
    missing = pickle.loads(pickle.dumps(NotFound("job", "j1")))
    assert (missing.what, missing.key) == ("job", "j1")
