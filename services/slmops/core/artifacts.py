"""Artifact store: a folder of payload files plus a `manifest.json` written last.

A folder without a manifest is not an artifact, so a crash while writing never
leaves something that looks whole. URIs are fsspec URIs (`file://` by default);
local paths are confined to the configured artifact roots.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from slmops.core.errors import InvalidSpec, NotFound

MANIFEST = "manifest.json"
KINDS = ("dataset", "checkpoint", "adapter", "onnx-model", "report", "deployment", "prompts")


@dataclass
class Manifest:
    id: str
    kind: str
    uri: str
    created: str
    spec: dict[str, Any] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    trace_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def to_uri(path_or_uri: str | os.PathLike[str]) -> str:
    """A local path becomes an absolute file:// URI; a URI is returned as is."""
    text = str(path_or_uri)
    if "://" in text:
        return text
    return "file://" + str(Path(text).expanduser().resolve())


def local_path(uri: str) -> Path:
    """The local filesystem path of a file:// URI (or a plain path)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise InvalidSpec("uri", f"{uri!r} is not on the local filesystem")
    return Path(uri)


def confine(uri: str, roots: Iterable[str | os.PathLike[str]], field_name: str = "uri") -> str:
    """Return uri as a URI if it lies under one of roots, else raise InvalidSpec.

    Remote schemes (s3://, gs://, ...) are allowed as they are: their access is
    governed by the bucket's credentials, not by this process's filesystem.
    """
    if not uri:
        raise InvalidSpec(field_name, "must not be empty")
    full = to_uri(uri)
    if not full.startswith("file://"):
        return full
    path = Path(os.path.realpath(local_path(full)))
    for root in roots:
        base = Path(os.path.realpath(Path(root).expanduser()))
        if path == base or base in path.parents:
            return "file://" + str(path)
    allowed = ", ".join(str(r) for r in roots)
    raise InvalidSpec(field_name, f"{uri!r} is outside the allowed roots ({allowed})")


def new_id(kind: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}"


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def hash_files(uri: str) -> dict[str, str]:
    """sha256 of every payload file under uri, keyed by relative path."""
    fs, root = _fs(uri)
    hashes: dict[str, str] = {}
    for path in sorted(fs.find(root)):
        rel = path[len(root) :].lstrip("/")
        if rel == MANIFEST:
            continue
        digest = hashlib.sha256()
        with fs.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        hashes[rel] = digest.hexdigest()
    return hashes


def size_bytes(uri: str) -> int:
    """Total bytes of the payload files under uri (a file or a folder)."""
    fs, root = _fs(uri)
    if fs.isfile(root):
        return int(fs.size(root))
    return sum(int(fs.size(p)) for p in fs.find(root) if not p.endswith("/" + MANIFEST))


def finalize(
    uri: str,
    kind: str,
    *,
    spec: dict[str, Any] | None = None,
    parents: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    trace_id: str = "",
    extra: dict[str, Any] | None = None,
    artifact_id: str | None = None,
) -> Manifest:
    """Seal the payload already written under uri by writing its manifest last."""
    if kind not in KINDS:
        raise InvalidSpec("kind", f"unknown artifact kind {kind!r}; one of {', '.join(KINDS)}")
    uri = to_uri(uri)
    fs, root = _fs(uri)
    if not fs.exists(root):
        raise NotFound("artifact", uri)
    manifest = Manifest(
        id=artifact_id or new_id(kind),
        kind=kind,
        uri=uri,
        created=dt.datetime.now(dt.UTC).isoformat(),
        spec=spec or {},
        parents=[to_uri(p) for p in (parents or []) if p],
        metrics=metrics or {},
        hashes=hash_files(uri),
        trace_id=trace_id,
        extra=extra or {},
    )
    tmp = f"{root}/{MANIFEST}.tmp"
    with fs.open(tmp, "w") as fh:
        fh.write(manifest.to_json())
    fs.mv(tmp, f"{root}/{MANIFEST}")
    return manifest


def read_manifest(uri: str) -> Manifest:
    """The manifest of the artifact at uri; NotFound if the folder is not an artifact."""
    uri = to_uri(uri)
    fs, root = _fs(uri)
    path = f"{root}/{MANIFEST}"
    if not fs.exists(path):
        raise NotFound("artifact", uri)
    with fs.open(path, "r") as fh:
        return Manifest.from_dict(json.load(fh))


def is_artifact(uri: str) -> bool:
    try:
        read_manifest(uri)
    except NotFound:
        return False
    return True


def lineage(uri: str, max_depth: int = 32) -> list[Manifest]:
    """The chain from the artifact at uri back through its first parents."""
    chain: list[Manifest] = []
    current: str | None = to_uri(uri)
    seen: set[str] = set()
    while current and current not in seen and len(chain) < max_depth:
        seen.add(current)
        try:
            manifest = read_manifest(current)
        except NotFound:
            chain.append(Manifest(id="", kind="file", uri=current, created=""))
            break
        chain.append(manifest)
        current = manifest.parents[0] if manifest.parents else None
    return chain
