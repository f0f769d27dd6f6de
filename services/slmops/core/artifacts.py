"""Artifact store: a folder of payload files plus a `manifest.json` written last.

A folder without a manifest is not an artifact, so a crash while writing never
leaves something that looks whole. URIs are fsspec URIs (`file://` by default);
every URI a request names goes through `confine` (core/confinement.py).

A job's output location must be new or empty (`check_new_output`); its payload
is written to a hidden sibling folder (`staged`) and moved into place before
the manifest is written. A job reading an input opens it with `open_input`:
under the artifact root only a sealed artifact is an input, and a sealed
artifact's files must match the hashes its manifest records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from slmops.core import settings
from slmops.core.confinement import confine as confine  # the one URI check, re-exported
from slmops.core.errors import AlreadyExists, InvalidSpec, NotFound

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
        hashes[rel] = _sha256(fs, path)
    return hashes


def _sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def size_bytes(uri: str) -> int:
    """Total bytes of the payload files under uri (a file or a folder)."""
    fs, root = _fs(uri)
    if fs.isfile(root):
        return int(fs.size(root))
    return sum(int(fs.size(p)) for p in fs.find(root) if not p.endswith("/" + MANIFEST))


def check_new_output(uri: str, field_name: str = "spec.output_uri") -> None:
    """AlreadyExists unless uri is new or an empty folder: a job never writes over an artifact."""
    fs, root = _fs(to_uri(uri))
    if not fs.exists(root):
        return
    if fs.isfile(root):
        raise AlreadyExists(f"{field_name}: {uri} is an existing file; name a new or empty folder")
    if fs.exists(f"{root}/{MANIFEST}"):
        raise AlreadyExists(f"{field_name}: {uri} is an existing artifact; name a new or empty folder")
    if fs.ls(root, detail=False):
        raise AlreadyExists(f"{field_name}: {uri} is a folder that is not empty; name a new or empty folder")


@contextmanager
def staged(uri: str) -> Iterator[str]:
    """A hidden sibling folder of uri to write its payload into, moved into place when the block ends.

    The folder is removed if the block fails; AlreadyExists if something took
    uri meanwhile. Seal the moved payload with `finalize(uri, ...)` after it.
    """
    uri = to_uri(uri)
    fs, root = _fs(uri)
    parent, _, name = root.rstrip("/").rpartition("/")
    if not name:
        raise InvalidSpec("output_uri", f"{uri} has no parent folder to stage its payload in")
    temp = f"{parent}/.{name}.partial-{uuid.uuid4().hex[:8]}"
    fs.makedirs(temp, exist_ok=True)
    try:
        yield fs.unstrip_protocol(temp)
        _move_into_place(fs, temp, root, uri)
    except BaseException:
        if fs.exists(temp):
            fs.rm(temp, recursive=True)
        raise


def _move_into_place(fs: fsspec.AbstractFileSystem, temp: str, root: str, uri: str) -> None:
    check_new_output(uri, "output_uri")
    if uri.startswith("file://"):
        try:  # one rename: it replaces an empty folder and fails on a full one
            os.rename(temp, root)
        except OSError as exc:
            raise AlreadyExists(f"output_uri: {uri} was filled while the job ran ({exc.strerror})") from exc
        return
    fs.mv(temp, root, recursive=True)


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


def _under(uri: str, root: str) -> bool:
    return uri == root or uri.startswith(root + "/")


def _enclosing_artifact(uri: str) -> str | None:
    """The sealed artifact uri lies in (itself or, under the artifact root, a folder above it)."""
    fs, path = _fs(uri)
    if fs.exists(f"{path}/{MANIFEST}"):
        return uri
    root = settings.artifact_root().rstrip("/")
    parent = uri.rsplit("/", 1)[0]
    if _under(uri, root):
        while parent != root and _under(parent, root):
            if fs.exists(f"{_fs(parent)[1]}/{MANIFEST}"):
                return parent
            parent = parent.rsplit("/", 1)[0]
    elif fs.isfile(path) and fs.exists(f"{_fs(parent)[1]}/{MANIFEST}"):
        return parent  # one file of an artifact kept outside the artifact root
    return None


def open_input(uri: str, field_name: str, *, verify: bool = True) -> Manifest | None:
    """Check an input a job reads; the manifest of the artifact it lies in, or None for a plain folder.

    Under the artifact root only a sealed artifact (or a file or folder inside
    one) is an input: a folder without a manifest is a job still writing or
    one that failed. With verify, the files read must match the manifest's
    hashes (InvalidSpec naming field_name otherwise). Plain folders outside
    the artifact root, such as a Hugging Face model folder, are inputs as they are.
    """
    uri = to_uri(uri).rstrip("/")
    artifact = _enclosing_artifact(uri)
    if artifact is None:
        if _under(uri, settings.artifact_root().rstrip("/")):
            raise InvalidSpec(field_name, f"{uri} is under the artifact root but is not a sealed artifact "
                                          "(no manifest.json): its job is still writing it, or failed")  # fmt: skip
        return None
    manifest = read_manifest(artifact)
    if verify:
        check_hashes(artifact, manifest, field_name, within=uri[len(artifact) :].lstrip("/"))
    return manifest


def check_hashes(uri: str, manifest: Manifest, field_name: str, within: str = "") -> None:
    """InvalidSpec unless the payload files (those under `within`, a relative path) match manifest.hashes."""
    fs, root = _fs(to_uri(uri))
    target = f"{root}/{within}" if within else root
    if fs.isfile(target):
        found = [target]
    else:
        found = [p for p in fs.find(target) if p[len(root) :].lstrip("/") != MANIFEST]
    actual = {p[len(root) :].lstrip("/"): p for p in found}
    recorded = {rel: h for rel, h in manifest.hashes.items() if not within or rel == within
                or rel.startswith(within.rstrip("/") + "/")}  # fmt: skip
    problems = [f"{rel} is missing" for rel in sorted(set(recorded) - set(actual))]
    problems += [f"{rel} is not in its manifest" for rel in sorted(set(actual) - set(recorded))]
    problems += [f"{rel} changed since it was sealed" for rel in sorted(set(recorded) & set(actual))
                 if _sha256(fs, actual[rel]) != recorded[rel]]  # fmt: skip
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InvalidSpec(field_name, f"artifact {uri} does not match its manifest: {shown}")


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
