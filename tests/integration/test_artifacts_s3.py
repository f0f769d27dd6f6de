"""Artifacts on S3 (moto's server on loopback, reached through AWS_ENDPOINT_URL as AWS would be).

S3 has no folders and no rename: a staged payload is copied into place and
sealed by its manifest, an outage in the middle fails with an error naming the
store (within seconds, not minutes of retries), and what a failed attempt left
never blocks the next one.
"""

from __future__ import annotations

import json
import time
import uuid

import fsspec
import pytest

from slmops.cli.main import main as cli
from slmops.core import artifacts
from slmops.core.errors import AlreadyExists, InvalidSpec, Unavailable
from slmops.core.stores import filesystem

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(s3_env, monkeypatch):
    """A new bucket, also the artifact root."""
    uri = s3_env.make_bucket(f"art-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("SLMOPS_ARTIFACT_ROOT", uri)
    return uri


def keys(uri: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache()
    return sorted(p[len(root) :].lstrip("/") for p in fs.find(root))


def write(uri: str, files: dict[str, bytes]) -> None:
    fs, root = fsspec.core.url_to_fs(uri)
    for rel, data in files.items():
        with fs.open(f"{root}/{rel}", "wb") as fh:
            fh.write(data)


def seal(uri: str, files: dict[str, bytes], kind: str = "checkpoint", parents=()) -> artifacts.Manifest:
    artifacts.check_new_output(uri)
    with artifacts.staged(uri) as staging:
        write(staging, files)
    return artifacts.finalize(uri, kind, parents=list(parents))


PAYLOAD = {"config.json": b'{"model_type": "llama"}', "weights/model.safetensors": b"w" * 3000}


def test_a_staged_payload_is_copied_into_place_and_sealed(bucket):
    out = f"{bucket}/ckpt"
    manifest = seal(out, PAYLOAD)
    assert keys(bucket) == ["ckpt/config.json", "ckpt/manifest.json", "ckpt/weights/model.safetensors"]
    assert set(manifest.hashes) == set(PAYLOAD) and manifest.hashes == artifacts.hash_files(out)
    assert artifacts.read_manifest(out).id == manifest.id
    assert artifacts.open_input(out, "spec.model_uri").id == manifest.id
    assert artifacts.open_input(f"{out}/weights/model.safetensors", "spec.model_uri").id == manifest.id
    with pytest.raises(AlreadyExists, match="existing artifact"):
        artifacts.check_new_output(out)
    write(f"{bucket}/other", {"x.txt": b"x"})
    with pytest.raises(AlreadyExists, match="not empty"):
        artifacts.check_new_output(f"{bucket}/other")
    with pytest.raises(AlreadyExists, match="existing file"):
        artifacts.check_new_output(f"{bucket}/other/x.txt")
    artifacts.check_new_output(f"{bucket}/ck")  # a prefix of a folder's name is not that folder


def test_an_unsealed_folder_under_the_root_is_no_input_and_a_changed_file_is_refused(bucket):
    write(f"{bucket}/half", {"config.json": b"{}"})
    with pytest.raises(InvalidSpec, match="not a sealed artifact"):
        artifacts.open_input(f"{bucket}/half", "spec.model_uri")
    out = f"{bucket}/ckpt"
    seal(out, PAYLOAD)
    write(out, {"weights/model.safetensors": b"tampered"})
    with pytest.raises(InvalidSpec, match="weights/model.safetensors changed since it was sealed") as caught:
        artifacts.open_input(out, "spec.model_uri")
    assert caught.value.field == "spec.model_uri"
    write(out, {"extra.bin": b"?"})
    with pytest.raises(InvalidSpec, match="extra.bin is not in its manifest"):
        artifacts.open_input(out, "spec.model_uri")
    assert artifacts.open_input(f"{out}/config.json", "spec.model_uri") is not None  # that file still matches


def test_an_outage_during_the_upload_fails_fast_naming_the_store_and_the_next_run_succeeds(s3_env, bucket):
    out = f"{bucket}/ckpt"
    try:
        with pytest.raises(Unavailable) as caught, artifacts.staged(out) as staging:
            write(staging, {"config.json": b"{}"})
            s3_env.stop()
            started = time.monotonic()
            write(staging, {"weights/model.safetensors": b"w" * 3000})
        took = time.monotonic() - started
    finally:
        s3_env.start()
    message = str(caught.value)
    assert s3_env.endpoint in message and out in message, message
    assert took < 30, f"an outage took {took:.0f}s to fail"
    s3_env.make_bucket(bucket.removeprefix("s3://"))  # moto keeps buckets in memory: the restart emptied them
    manifest = seal(out, PAYLOAD)
    assert artifacts.open_input(out, "spec.model_uri").id == manifest.id


def test_an_outage_during_the_move_leaves_an_unsealed_output_the_next_run_replaces(bucket, monkeypatch):
    out = f"{bucket}/ckpt"
    fs, _ = filesystem(out)
    real_copy = fs.copy

    def copy_one_then_fail(sources, targets, **kwargs):
        real_copy(sources[:1], targets[:1], **kwargs)
        raise ConnectionError("Could not connect to the endpoint URL")  # an OSError, as the store raises it

    with monkeypatch.context() as patch:
        patch.setattr(fs, "copy", copy_one_then_fail)
        with (
            pytest.raises(Unavailable, match="copying the payload into s3://"),
            artifacts.staged(out) as staging,
        ):
            write(staging, {"a.txt": b"a", "b.txt": b"b", "old-only.txt": b"old"})
    left = keys(bucket)
    assert artifacts.UNSEALED.lstrip("/") in [k.split("/", 1)[1] for k in left if k.startswith("ckpt/")]
    assert "ckpt/manifest.json" not in left and not [k for k in left if k.startswith(".ckpt.partial")]
    assert not artifacts.is_artifact(out)
    with pytest.raises(InvalidSpec, match="not a sealed artifact"):
        artifacts.open_input(out, "spec.model_uri")
    artifacts.check_new_output(out)  # what a failed attempt left does not make the output "not empty"
    manifest = seal(out, PAYLOAD)
    assert keys(out) == ["config.json", "manifest.json", "weights/model.safetensors"]
    assert set(manifest.hashes) == set(PAYLOAD)


def test_a_payload_moved_but_never_sealed_is_replaced_too(bucket):
    out = f"{bucket}/ckpt"
    with artifacts.staged(out) as staging:
        write(staging, {"a.txt": b"a"})
    # As if the store (or the job) went away before the manifest was written: payload and marker, no manifest.
    assert keys(out) == sorted(["a.txt", artifacts.UNSEALED])
    seal(out, PAYLOAD)
    assert keys(out) == ["config.json", "manifest.json", "weights/model.safetensors"]


def test_lineage_walks_parents_on_s3(bucket, capsys):
    parent = seal(f"{bucket}/data", {"train.jsonl": b"{}\n"}, kind="dataset")
    child = seal(f"{bucket}/ckpt", PAYLOAD, parents=[f"{bucket}/data"])
    chain = artifacts.lineage(f"{bucket}/ckpt")
    assert [(m.kind, m.id, m.uri) for m in chain] == [("checkpoint", child.id, f"{bucket}/ckpt"),
                                                      ("dataset", parent.id, f"{bucket}/data")]  # fmt: skip
    assert cli(["lineage", f"{bucket}/ckpt"]) == 0
    printed = capsys.readouterr().out
    assert child.id in printed and parent.id in printed and f"{bucket}/data" in printed


def test_a_dead_endpoint_fails_within_seconds(s3_env, monkeypatch):
    from slmops.testing.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(Unavailable, match="endpoint http://127.0.0.1"):
        artifacts.check_new_output("s3://nowhere/ckpt")
    assert time.monotonic() - started < 20


def test_the_manifest_is_one_object_and_the_payload_keeps_its_bytes(bucket):
    out = f"{bucket}/ckpt"
    seal(out, PAYLOAD)
    fs, root = fsspec.core.url_to_fs(out)
    assert json.loads(fs.cat_file(f"{root}/manifest.json"))["uri"] == out
    assert fs.cat_file(f"{root}/weights/model.safetensors") == PAYLOAD["weights/model.safetensors"]


def test_the_training_jobs_copy_to_the_store_works_on_s3(bucket, tmp_path):
    """What `slmops train --output s3://...` does at "copying the output to the artifact store" (fs.mv failed)."""
    from slmops.training.job import copy_folder

    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"w" * 100)
    out = f"{bucket}/ckpt"
    with artifacts.staged(out) as staging:
        copy_folder(str(tmp_path), staging)
    manifest = artifacts.finalize(out, "checkpoint")
    assert set(manifest.hashes) == {"config.json", "sub/model.safetensors"}
    assert keys(bucket) == ["ckpt/config.json", "ckpt/manifest.json", "ckpt/sub/model.safetensors"]


def test_the_store_stopping_during_a_conversion_jobs_upload_fails_it_and_the_next_run_succeeds(
    s3_env, bucket, tmp_path_factory, tmp_path, monkeypatch
):
    """`job.run` in this process (Ray's task is the generator itself): the store goes away after
    verification, right before the converted folder is uploaded to its staging prefix."""
    import shutil
    import types

    import ray
    from s3fs import S3FileSystem

    from slmops.conversion import job
    from tests.integration._models import tiny_checkpoint

    store = tmp_path / "store"
    base = shutil.copytree(tiny_checkpoint(tmp_path_factory), store / "base")  # hidden 64: head size 16
    artifacts.finalize(str(base), "checkpoint")
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(store))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "remote", lambda **_: lambda task: types.SimpleNamespace(remote=task))
    monkeypatch.setattr(ray, "get", lambda event: event)
    config = {"model_uri": artifacts.to_uri(base), "precision": "fp32", "execution_provider": "cpu"}
    out = f"{bucket}/onnx/model"

    real = job._convert_and_verify
    stopped: list[float] = []

    def stop_before_the_upload(cfg, output_uri, progress):
        def report(fraction, message, **metrics):
            progress(fraction, message, **metrics)
            # verification's last step (0.95) is the last report before fs.put of the converted folder
            if fraction >= 0.95 - 1e-9 and message.startswith("verification") and not stopped:
                s3_env.stop()
                stopped.append(time.monotonic())

        return real(cfg, output_uri, report)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(job, "_convert_and_verify", stop_before_the_upload)
            with pytest.raises(Unavailable) as caught:
                job.run(config, out, lambda *a, **k: None)
        assert stopped, "the job never reported the end of its verification"
        took = time.monotonic() - stopped[0]
    finally:
        if not s3_env.running:
            s3_env.start()
    message = str(caught.value)
    assert s3_env.endpoint in message and out in message and "writing the payload of" in message, message
    assert took < 90, f"an outage took {took:.0f}s to fail the job"

    s3_env.make_bucket(bucket.removeprefix("s3://"))  # moto keeps buckets in memory: the restart emptied them
    S3FileSystem.clear_instance_cache()
    assert "onnx/model/manifest.json" not in keys(bucket) and not artifacts.is_artifact(out)

    result = job.run(config, out, lambda *a, **k: None)
    assert result["output_uri"] == out and artifacts.is_artifact(out)
    manifest = artifacts.open_input(out, "x")
    assert manifest.id == result["artifact_id"] and manifest.kind == "onnx-model"
    assert {"model.onnx", "genai_config.json"} <= set(manifest.hashes)
