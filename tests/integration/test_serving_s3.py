"""The local serving backend serves a model sealed on S3 (moto's server on loopback) from a checked local copy.

Validation fetches the artifact into <data_dir>/cache/models/<manifest id> as
KServe's storage initializer would, every file checked against the
manifest's hashes; a tampered file is refused by name. The deployment still
records the s3:// URI, and its own artifact (on an S3 artifact root) names it
as its parent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from pathlib import Path

import fsspec
import httpx
import pytest

from slmops.core import artifact_cache, artifacts, predictor_key
from slmops.core.errors import Conflict, InvalidSpec
from slmops.core.jobs.store import JobStore
from slmops.serving.deployments import Deployments, revision_id
from slmops.serving.validation import check_gate, resolve_adapters, resolve_model
from tests.integration._models import tiny_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    return s3_env.make_bucket(f"models-{uuid.uuid4().hex[:8]}")


def upload(folder: Path, uri: str, kind: str, extra: dict[str, bytes] | None = None) -> artifacts.Manifest:
    """Seal a local folder (and extra files) as an artifact at uri."""
    with artifacts.staged(uri) as staging:
        fs, root = fsspec.core.url_to_fs(staging)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            fs.put_file(str(path), f"{root}/{path.relative_to(folder).as_posix()}")
        for rel, data in (extra or {}).items():
            fs.pipe_file(f"{root}/{rel}", data)
    return artifacts.finalize(uri, kind)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_sealed_model_on_s3_is_fetched_checked_and_reused(bucket, tmp_path_factory, monkeypatch):
    model = tiny_checkpoint(tmp_path_factory)
    uri = f"{bucket}/ckpt"
    manifest = upload(model, uri, "checkpoint")
    full, storage = resolve_model(uri, "LOCAL")
    assert full == uri
    cached = artifacts.local_path(storage)
    assert cached == artifact_cache.cache_root() / manifest.id
    assert {rel: sha256(cached / rel) for rel in manifest.hashes} == manifest.hashes
    assert json.loads((cached / "manifest.json").read_text())["uri"] == uri
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]  # no partial folder left

    monkeypatch.setattr(
        artifact_cache, "_download", lambda *a: pytest.fail("a complete copy is fetched again")
    )
    assert resolve_model(uri, "LOCAL") == (full, storage)


def test_a_tampered_file_or_an_unsealed_folder_is_refused(bucket, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    uri = f"{bucket}/ckpt"
    manifest = upload(folder, uri, "checkpoint")
    fs, root = fsspec.core.url_to_fs(uri)
    fs.pipe_file(f"{root}/model.safetensors", b"other weights")
    with pytest.raises(InvalidSpec, match="model.safetensors changed since it was sealed") as caught:
        resolve_model(uri, "LOCAL")
    assert caught.value.field == "spec.model_uri"
    assert not (artifact_cache.cache_root() / manifest.id).exists()
    assert not [p for p in artifact_cache.cache_root().iterdir()]  # the partial copy is gone too

    fs.pipe_file(f"{bucket.removeprefix('s3://')}/plain/config.json", b"{}")
    with pytest.raises(InvalidSpec, match="not a sealed artifact"):
        resolve_model(f"{bucket}/plain", "LOCAL")
    with pytest.raises(InvalidSpec, match="cannot be served"):
        resolve_model(artifacts.to_uri(upload(folder, f"{bucket}/data", "dataset").uri), "LOCAL")


def test_adapters_on_s3_resolve_to_their_checked_copy(bucket, tmp_path):
    folder = tmp_path / "adapters"
    (folder / "adapters").mkdir(parents=True)
    (folder / "adapters" / "math.onnx_adapter").write_bytes(b"adapter")
    upload(folder, f"{bucket}/onnx-adapters", "adapter")
    [[name, location]] = resolve_adapters([{"name": "math", "uri": f"{bucket}/onnx-adapters"}], "LOCAL")
    path = artifacts.local_path(location)
    assert (
        name == "math"
        and path.read_bytes() == b"adapter"
        and path.is_relative_to(artifact_cache.cache_root())
    )


def test_the_gate_reads_a_report_on_s3(bucket):
    fs, _ = fsspec.core.url_to_fs(bucket)
    name = bucket.removeprefix("s3://")
    fs.pipe_file(
        f"{name}/good/report.json",
        json.dumps(
            {"verdict": {"evaluated": True, "passed": True, "reasons": ["accuracy 0.9 >= 0.5"]}}
        ).encode(),
    )
    fs.pipe_file(
        f"{name}/bad/report.json",
        json.dumps(
            {"verdict": {"evaluated": True, "passed": False, "reasons": ["accuracy FAILED 0.1 < 0.5"]}}
        ).encode(),
    )
    assert check_gate(f"{bucket}/good") == ["accuracy 0.9 >= 0.5"]
    assert check_gate(f"{bucket}/good/report.json") == ["accuracy 0.9 >= 0.5"]
    with pytest.raises(Conflict, match="accuracy FAILED"):
        check_gate(f"{bucket}/bad")


async def test_a_deployment_serves_a_model_on_s3_and_records_its_uri(bucket, tmp_path, tmp_path_factory,
                                                                     monkeypatch):  # fmt: skip
    model = tiny_checkpoint(tmp_path_factory)
    uri = f"{bucket}/ckpt"
    upload(model, uri, "checkpoint")
    monkeypatch.setenv(
        "SLMOPS_ARTIFACT_ROOT", f"{bucket}/artifacts"
    )  # the deployment artifact goes to S3 too
    key = predictor_key.ensure(tmp_path / "keys")  # predictors and routers require it, as under `slmops up`
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(key))
    deployments = Deployments(JobStore(f"sqlite:///{tmp_path}/serving.db"), poll_s=0.5)
    deployments.resume()
    try:
        await deployments.create({"name": "tiny", "model_uri": uri})
        deadline = time.monotonic() + 180
        while deployments.get("tiny").state != "READY":
            assert deployments.get("tiny").state == "DEPLOYING", deployments.get("tiny").reason
            assert time.monotonic() < deadline, "not ready in time"
            await asyncio.sleep(0.5)
        record = deployments.get("tiny")
        assert record.config["model_uri"] == uri
        rev = deployments.store.get(revision_id("tiny", 1))
        assert rev.config["model_uri"] == uri and rev.output_uri.startswith(f"{bucket}/artifacts/")
        chain = artifacts.lineage(rev.output_uri)
        assert [m.kind for m in chain] == ["deployment", "checkpoint"] and chain[1].uri == uri
        async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
            url = f"{record.result['url']}/openai/v1/completions"
            refused = await client.post(url, json={"model": "tiny", "prompt": "hello", "max_tokens": 2})
            reply = await client.post(url, headers={"Authorization": f"Bearer {key.read_text().strip()}"},
                                      json={"model": "tiny", "prompt": "hello", "max_tokens": 2})  # fmt: skip
        assert refused.status_code == 401, refused.text
        assert reply.status_code == 200, reply.text
    finally:
        await deployments.delete("tiny")
        await deployments.close()
