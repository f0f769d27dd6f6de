from __future__ import annotations

import json

import pytest

from slmops.core import artifacts
from slmops.core.errors import InvalidSpec, NotFound


def test_manifest_is_written_last_and_describes_payload(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n')
    assert not artifacts.is_artifact(str(folder))  # payload alone is not an artifact
    manifest = artifacts.finalize(
        str(folder),
        "dataset",
        spec={"a": 1},
        parents=[str(tmp_path / "p.jsonl")],
        metrics={"n": 1},
        trace_id="ab" * 16,
    )
    assert artifacts.is_artifact(str(folder))
    data = json.loads((folder / "manifest.json").read_text())
    assert data["kind"] == "dataset" and data["spec"] == {"a": 1} and data["metrics"] == {"n": 1}
    assert data["parents"] == [f"file://{tmp_path}/p.jsonl"]
    assert set(data["hashes"]) == {"train.jsonl"} and len(data["hashes"]["train.jsonl"]) == 64
    assert manifest.trace_id == "ab" * 16
    assert not (folder / "manifest.json.tmp").exists()


def test_finalize_rejects_unknown_kind_and_missing_folder(tmp_path):
    with pytest.raises(InvalidSpec, match="kind"):
        artifacts.finalize(str(tmp_path), "banana")
    with pytest.raises(NotFound):
        artifacts.finalize(str(tmp_path / "absent"), "dataset")


def test_lineage_walks_parents_back_to_the_source_file(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("{}\n")
    chain = []
    parent = str(prompts)
    for kind in ("dataset", "checkpoint", "onnx-model", "deployment"):
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "x").write_text(kind)
        artifacts.finalize(str(folder), kind, parents=[parent])
        parent = str(folder)
        chain.append(kind)
    kinds = [m.kind for m in artifacts.lineage(parent)]
    assert kinds == ["deployment", "onnx-model", "checkpoint", "dataset", "file"]


def test_confine_keeps_paths_inside_roots(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert artifacts.confine(str(root / "a"), [root]) == f"file://{root}/a"
    with pytest.raises(InvalidSpec, match="outside the allowed roots"):
        artifacts.confine(str(root / ".." / "elsewhere"), [root], "spec.model_uri")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidSpec):
        artifacts.confine(str(root / "link"), [root])
    assert artifacts.confine("s3://bucket/x", [root]) == "s3://bucket/x"
    with pytest.raises(InvalidSpec, match="empty"):
        artifacts.confine("", [root])


def test_hash_files_of_a_single_file_keys_it_by_the_empty_path(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "1+1="}\n')
    hashes = artifacts.hash_files(artifacts.to_uri(path))
    assert list(hashes) == [""] and len(hashes[""]) == 64
