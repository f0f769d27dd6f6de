"""Every URI a request names is confined: allowed schemes only, local paths under the
allowed roots and never into the platform's own state, each refusal naming the field."""

from __future__ import annotations

import json

import pytest

from slmops.api.v1 import conversion_pb2, synthesis_pb2, training_pb2
from slmops.core import artifacts, confinement
from slmops.core.errors import InvalidSpec


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A data dir laid out as `slmops up` leaves it, and an extra allowed root beside it."""
    data = tmp_path / "data"
    for folder in ("db", "auth", "ray", "logs", "traces", "artifacts"):
        (data / folder).mkdir(parents=True)
    (data / "db" / "training.db").write_bytes(b"SQLite format 3\0")
    (data / "auth" / "token").write_text("bearer-secret")
    (data / "stack.json").write_text("{}")
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "config.json").write_text("{}")
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(data))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path / "models"))
    for name in (
        "SLMOPS_ARTIFACT_ROOT",
        "SLMOPS_ALLOWED_SCHEMES",
        "SLMOPS_DATABASE_URL",
        "SLMOPS_TLS_KEY_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    return data


def _refusal(uri: str, field: str = "spec.model_uri") -> str:
    with pytest.raises(InvalidSpec) as info:
        artifacts.confine(uri, None, field)
    assert info.value.field == field
    return info.value.problems[0][1]


def test_paths_under_the_roots_are_accepted(data, tmp_path):
    model = tmp_path / "models" / "m"
    assert artifacts.confine(str(model), None, "f") == f"file://{model}"
    assert artifacts.confine(f"file://{model}", None, "f") == f"file://{model}"
    assert artifacts.confine(str(data / "artifacts" / "new"), None, "f") == f"file://{data}/artifacts/new"
    assert artifacts.confine("s3://bucket/datasets/x", None, "f") == "s3://bucket/datasets/x"
    assert artifacts.confine("abfs://container@account.dfs.core.windows.net/x", None, "f").startswith(
        "abfs://"
    )


def test_local_scheme_is_refused(data, tmp_path):
    assert "local://" in _refusal(f"local://{tmp_path}/models/m")


def test_chained_urls_are_refused(data):
    assert "chained" in _refusal("simplecache::s3://bucket/model")
    assert "chained" in _refusal("zip://model.bin::file:///etc/passwd", "spec.dataset_uri")


def test_only_configured_schemes_are_accepted(data, tmp_path, monkeypatch):
    assert "'memory' is not allowed" in _refusal("memory://models/m")
    assert "'http' is not allowed" in _refusal("http://example.com/model")
    monkeypatch.setenv("SLMOPS_ALLOWED_SCHEMES", "s3")
    assert "local paths are not allowed" in _refusal(str(tmp_path / "models" / "m"))
    assert "'gs' is not allowed" in _refusal("gs://bucket/m")
    assert artifacts.confine("s3://bucket/m", None, "f") == "s3://bucket/m"


def test_credentials_in_a_uri_are_refused(data):
    problem = _refusal("s3://AKIAXXXX:very-secret@bucket/model")
    assert "credentials" in problem and "very-secret" not in problem


def test_relative_file_uris_are_refused(data):
    assert "absolute path" in _refusal("file://models/m")


def test_a_symlink_resolving_out_of_a_root_is_refused(data, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "models" / "escape").symlink_to(outside)
    assert "outside the allowed roots" in _refusal(str(tmp_path / "models" / "escape"))


def test_a_folder_holding_a_symlink_out_of_the_roots_is_refused(data, tmp_path):
    model = tmp_path / "models" / "m"
    (model / "tokenizer.json").symlink_to("/etc/passwd")
    assert "symbolic link tokenizer.json" in _refusal(str(model))


def test_a_folder_holding_a_symlink_to_a_secret_is_refused(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", f"{tmp_path / 'models'}:{data}")
    model = tmp_path / "models" / "m"
    (model / "vocab.txt").symlink_to(data / "auth" / "token")
    assert "platform's own state" in _refusal(str(model))


@pytest.mark.parametrize(
    "inside", ["db", "db/training.db", "auth/token", "ray", "logs", "traces", "stack.json"]
)
def test_the_data_dirs_own_state_is_refused(data, inside):
    assert "platform's own state" in _refusal(str(data / inside), "spec.dataset_uri")


def test_a_folder_holding_the_data_dirs_state_is_refused(data):
    assert "holds the platform's own state" in _refusal(str(data))


def test_secret_files_named_by_settings_are_refused(data, tmp_path, monkeypatch):
    key = tmp_path / "models" / "tls.key"
    key.write_text("-----BEGIN PRIVATE KEY-----")
    monkeypatch.setenv("SLMOPS_TLS_KEY_FILE", str(key))
    assert "platform's own state" in _refusal(str(key))
    db = tmp_path / "models" / "jobs.db"
    monkeypatch.setenv("SLMOPS_DATABASE_URL", f"sqlite:///{db}")
    assert "platform's own state" in _refusal(str(db))
    assert "platform's own state" in _refusal(f"{db}-wal")
    assert str(db) in {str(p) for p in confinement.private_paths()}


def test_outputs_are_confined_too(data, tmp_path):
    """The output field goes through the same check (stage_jobs and the specs call confine)."""
    from slmops.core.jobs.stage import StageJobs
    from slmops.core.jobs.store import JobStore

    jobs = StageJobs("training", JobStore(f"sqlite:///{tmp_path}/jobs.db"), ray=None, poll_s=1)  # type: ignore[arg-type]
    for uri in ("local:///tmp/x", "simplecache::s3://b/x", str(data / "db" / "out")):
        with pytest.raises(InvalidSpec) as info:
            jobs.output_uri_for("train-1", uri)
        assert info.value.field == "spec.output_uri"


def test_spec_modules_refuse_remote_uris_they_used_to_pass(data, tmp_path):
    """Non-file schemes once skipped confinement in the specs' URI helpers: now every one is checked."""
    from slmops.conversion.spec import from_proto as conversion_spec
    from slmops.synthesis.spec import from_proto as synthesis_spec
    from slmops.training.spec import from_proto as training_spec

    def problems(build, spec) -> dict[str, str]:
        with pytest.raises(InvalidSpec) as info:
            build(spec)
        return dict(info.value.problems)

    found = problems(conversion_spec, conversion_pb2.ConversionSpec(model_uri="simplecache::s3://b/ckpt"))
    assert "chained" in found["spec.model_uri"]
    found = problems(
        conversion_spec,
        conversion_pb2.ConversionSpec(
            model_uri=str(tmp_path / "models" / "m"), adapter_uris=["local:///tmp/adapter"]
        ),
    )
    assert "local://" in found["spec.adapter_uris[0]"]
    prompts = tmp_path / "models" / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    found = problems(
        synthesis_spec,
        synthesis_pb2.SynthesisSpec(
            prompts_uri=str(prompts), local=synthesis_pb2.LocalTeacher(model="memory://models/teacher")
        ),
    )
    assert "'memory' is not allowed" in found["spec.local.model"]
    found = problems(
        training_spec,
        training_pb2.TrainingSpec(
            method=training_pb2.SFT_DISTILL,
            base=training_pb2.ModelInit(model="local:///models/base"),
            dataset_uri="s3://b::simplecache::x",
        ),
    )
    assert "local://" in found["spec.base.model"] and "chained" in found["spec.dataset_uri"]
