"""A request names only the secret variables the operator allowed, carries no credentials
in its URLs, and passwords in URLs never reach printed settings or logs."""

from __future__ import annotations

import json
import logging

import pytest

from slmops.api.v1 import evaluation_pb2, synthesis_pb2
from slmops.core import secret_refs
from slmops.core.endpoints import resolve_api_key
from slmops.core.errors import InvalidSpec, Unavailable
from slmops.evaluation.spec import from_proto as evaluation_spec
from slmops.synthesis.spec import from_proto as synthesis_spec


@pytest.fixture
def prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    for name in ("SLMOPS_ALLOWED_ROOTS", "SLMOPS_ARTIFACT_ROOT", "SLMOPS_ALLOWED_SECRET_ENV", "SLMOPS_SECRET_HOSTS",
                 "SLMOPS_PLAIN_HTTP_HOSTS", "SLMOPS_EGRESS_ALLOW"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "1+2=", "answer": "3"}) + "\n")
    return path


def _synthesis(prompts, **endpoint) -> dict[str, str]:
    endpoint = {"base_url": "https://api.example.com/v1", "model": "big", **endpoint}
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts), endpoint=synthesis_pb2.TeacherEndpoint(**endpoint)
    )
    with pytest.raises(InvalidSpec) as info:
        synthesis_spec(spec)
    return dict(info.value.problems)


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "HOME", "SLMOPS_DATABASE_URL", "PATH"])
def test_api_key_env_naming_a_variable_not_allowed_is_refused(prompts, name):
    problem = _synthesis(prompts, api_key_env=name)["spec.endpoint.api_key_env"]
    assert "not an environment variable requests may name" in problem and "*_API_KEY" in problem


def test_allowed_names_pass_and_the_operator_sets_the_patterns(prompts, monkeypatch):
    monkeypatch.setenv("SLMOPS_SECRET_HOSTS", "TEACHER_API_KEY=api.example.com; EVAL_KEY=api.example.com")
    spec = synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        endpoint=synthesis_pb2.TeacherEndpoint(
            base_url="https://api.example.com/v1", model="m", api_key_env="TEACHER_API_KEY"
        ),
    )
    assert synthesis_spec(spec).teacher.api_key_env == "TEACHER_API_KEY"
    monkeypatch.setenv("SLMOPS_ALLOWED_SECRET_ENV", "TEACHER_TOKEN, EVAL_*")
    assert "api_key_env" in str(_synthesis(prompts, api_key_env="TEACHER_API_KEY"))
    spec.endpoint.api_key_env = "EVAL_KEY"
    assert synthesis_spec(spec).teacher.api_key_env == "EVAL_KEY"


def test_evaluation_targets_follow_the_same_rule(prompts):
    spec = evaluation_pb2.EvaluationSpec(
        dataset_uri=str(prompts),
        targets=[evaluation_pb2.EvalTarget(name="t", base_url="https://h/v1", model="m", api_key_env="HOME")],
    )
    with pytest.raises(InvalidSpec) as info:
        evaluation_spec(spec)
    assert (
        "not an environment variable requests may name"
        in dict(info.value.problems)["spec.targets[0].api_key_env"]
    )


def test_the_job_refuses_a_name_the_service_would_have_refused(monkeypatch):
    monkeypatch.delenv("SLMOPS_ALLOWED_SECRET_ENV", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    url = "http://127.0.0.1:1/v1"
    with pytest.raises(InvalidSpec) as info:
        resolve_api_key("AWS_SECRET_ACCESS_KEY", url)
    assert info.value.field == "api_key_env" and "aws-secret" not in str(info.value)
    monkeypatch.setenv("TEACHER_API_KEY", "k")
    assert resolve_api_key("TEACHER_API_KEY", url) == "k"
    monkeypatch.delenv("TEACHER_API_KEY")
    with pytest.raises(Unavailable, match="TEACHER_API_KEY"):
        resolve_api_key("TEACHER_API_KEY", url)


@pytest.mark.parametrize(
    "url", ["https://user:s3cr3t@api.example.com/v1", "https://sk-token@api.example.com/v1"]
)
def test_a_base_url_carrying_credentials_is_refused(prompts, url):
    problem = _synthesis(prompts, base_url=url)["spec.endpoint.base_url"]
    assert "must not carry credentials" in problem and "s3cr3t" not in problem and "sk-token" not in problem
    spec = evaluation_pb2.EvaluationSpec(
        dataset_uri=str(prompts), targets=[evaluation_pb2.EvalTarget(name="t", base_url=url, model="m")]
    )
    with pytest.raises(InvalidSpec) as info:
        evaluation_spec(spec)
    assert "must not carry credentials" in dict(info.value.problems)["spec.targets[0].base_url"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql+psycopg://app:p@ss:w0rd@db.internal:5432/jobs?sslmode=require",
            "postgresql+psycopg://app:***@db.internal:5432/jobs?sslmode=require",
        ),
        (
            "could not connect to mysql://root:hunter2@10.0.0.1/x, retrying",
            "could not connect to mysql://root:***@10.0.0.1/x, retrying",
        ),
        ("sqlite:////var/lib/slmops/db/training.db", "sqlite:////var/lib/slmops/db/training.db"),
        ("http://127.0.0.1:8265 and user@example.com", "http://127.0.0.1:8265 and user@example.com"),
    ],
)
def test_passwords_in_urls_are_redacted(text, shown):
    assert secret_refs.redact(text) == shown


def test_status_settings_print_the_database_url_redacted(monkeypatch, capsys, tmp_path):
    from slmops.cli import main as cli

    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SLMOPS_DATABASE_URL", "postgresql://u:hunter2@h/db")
    monkeypatch.setattr("slmops.cli.stack.status", lambda data_dir: [("training", "127.0.0.1:1", "SERVING")])
    assert cli.main(["status", "--settings"]) == 0
    out = capsys.readouterr().out
    assert "SLMOPS_DATABASE_URL=postgresql://u:***@h/db" in out and "hunter2" not in out
    assert "SLMOPS_ALLOWED_SECRET_ENV=*_API_KEY" in out and "SLMOPS_ALLOWED_SCHEMES=file,s3" in out


def test_service_logs_redact_passwords_in_messages_and_tracebacks():
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("slmops.test.redaction")
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    try:
        secret_refs.redact_logs(logger)
        logger.warning("job store at %s is unreachable", "postgresql://u:hunter2@h/db")
        try:
            raise ConnectionError("cannot reach postgresql://u:hunter2@h/db")
        except ConnectionError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "postgresql://u:***@h/db is unreachable" in records[0]
    assert "hunter2" not in "\n".join(records) and "ConnectionError" in records[1]
