"""Every stage's Ray job driver is submitted with the entrypoint resources the settings give.

Checked on the wire: Ray's own JobSubmissionClient posts the submission to a
stand-in dashboard on loopback (a real Ray head costs a cluster start on these
machines), which keeps the request body; so the test sees exactly what Ray's
job manager would receive.
"""

from __future__ import annotations

import json

import pytest

from slmops.core.jobs.ray_jobs import EntrypointResources, RayJobs, entrypoint_resources
from tests.unit._fakes import RAY_VERSION, JsonHandler, serving


class Dashboard(JsonHandler):
    """Answers the version probe and job submissions as Ray 2.60's dashboard does, keeping each submission."""

    submitted: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/api/version":
            self.reply(RAY_VERSION)
        else:
            self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/api/jobs/":
            self.send_error(404)
            return
        Dashboard.submitted.append(body)
        self.reply({"job_id": body["submission_id"], "submission_id": body["submission_id"]})


@pytest.fixture
def dashboard():
    Dashboard.submitted = []
    with serving(Dashboard) as url:
        yield url


def test_drivers_are_submitted_with_the_configured_cpus_and_memory(dashboard, monkeypatch):
    monkeypatch.setenv("SLMOPS_JOB_ENTRYPOINT_CPUS", "1")
    monkeypatch.setenv("SLMOPS_JOB_ENTRYPOINT_MEMORY", str(2 * 1024**3))
    ray = RayJobs(dashboard)
    assert ray.submit("training", "train-1", {"a": 1}, "file:///out") == "slmops-train-1"
    (body,) = Dashboard.submitted
    assert body["entrypoint_num_cpus"] == 1
    assert body["entrypoint_memory"] == 2 * 1024**3
    assert "entrypoint_num_gpus" not in body
    assert body["entrypoint"].endswith("-m slmops.core.jobs.entry training")
    assert body["runtime_env"]["env_vars"]["SLMOPS_JOB_ID"] == "train-1"
    # A restart of the job reserves the same.
    ray.submit("synthesis", "synth-1", {}, "file:///out", restart=1)
    assert Dashboard.submitted[-1]["submission_id"] == "slmops-synth-1-r1"
    assert Dashboard.submitted[-1]["entrypoint_num_cpus"] == 1


def test_with_the_defaults_nothing_is_reserved(dashboard, monkeypatch):
    monkeypatch.delenv("SLMOPS_JOB_ENTRYPOINT_CPUS", raising=False)
    monkeypatch.delenv("SLMOPS_JOB_ENTRYPOINT_MEMORY", raising=False)
    ray = RayJobs(dashboard)
    assert ray.entrypoint == EntrypointResources(0.0, 0)
    ray.submit("evaluation", "evalu-1", {}, "file:///out")
    (body,) = Dashboard.submitted
    assert not {"entrypoint_num_cpus", "entrypoint_memory", "entrypoint_num_gpus"} & set(body)


def test_a_jobs_own_resources_come_before_the_settings(dashboard, monkeypatch):
    monkeypatch.setenv("SLMOPS_JOB_ENTRYPOINT_CPUS", "0.5")
    ray = RayJobs(dashboard)
    ray.submit("conversion", "conve-1", {}, "file:///out", resources={"cpus": 4, "gpus": 1})
    (body,) = Dashboard.submitted
    assert (body["entrypoint_num_cpus"], body["entrypoint_num_gpus"]) == (4, 1)
    assert ray.entrypoint_kwargs() == {"entrypoint_num_cpus": 0.5}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLMOPS_JOB_ENTRYPOINT_CPUS", "one"),
        ("SLMOPS_JOB_ENTRYPOINT_CPUS", "-1"),
        ("SLMOPS_JOB_ENTRYPOINT_CPUS", "nan"),
        ("SLMOPS_JOB_ENTRYPOINT_MEMORY", "2Gi"),
        ("SLMOPS_JOB_ENTRYPOINT_MEMORY", "-5"),
    ],
)
def test_a_malformed_value_stops_the_client_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        entrypoint_resources()
    with pytest.raises(ValueError, match=name):
        RayJobs("http://127.0.0.1:9")  # made at a service's start-up: it never starts with a bad value
