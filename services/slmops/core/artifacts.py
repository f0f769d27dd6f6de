"""Artifact store: a folder of payload files plus a `manifest.json` written last.

A folder without a manifest is not an artifact, so a crash while writing never
leaves something that looks whole. URIs are fsspec URIs (`file://` by default);
every URI a request names goes through `confine` (core/confinement.py).

A job's output location must be new or empty (`check_new_output`); its payload
is written to a hidden sibling folder (`staged`) and moved into place before
the manifest is written.

On an object store (s3://, gs://, az://) there are no folders and no rename:
the staged objects are copied into place one by one and the staging prefix is
deleted. While they are copied, and until the manifest is written, the output
holds an `UNSEALED` marker object: a location holding only a marked, unsealed
payload is what a failed attempt left (the store went away during the copy or
before the seal), so it still counts as empty, and the next attempt clears it
before copying. (Without a rename, two jobs racing for the same new output
are not excluded here; the check when a job is created is what refuses the
second.) Store failures surface as `Unavailable` naming the URI and the
endpoint (core/stores.py, which also bounds the store's retries).

A job reading an input opens it with `open_input`: under the artifact root
only a sealed artifact is an input, and a sealed artifact's files must match
the hashes its manifest records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
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
from slmops.core.stores import filesystem, is_local, store_errors

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
UNSEALED = ".slmops-unsealed.json"  # on an object store: a payload copied into place, not sealed yet
NOT_PAYLOAD = (MANIFEST, UNSEALED)
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
    return filesystem(uri)


def files_under(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, str]:
    """{relative path: path} of every object under root (none if root is absent); keys end in no '/'."""
    root = root.rstrip("/")
    found: dict[str, str] = {}
    for path in fs.find(root):
        rel = path[len(root) :].strip("/")
        if rel and path.startswith(root + "/") and not path.endswith("/"):
            found[rel] = path
    return found


def hash_files(uri: str) -> dict[str, str]:
    """sha256 of every payload file under uri, keyed by relative path ("" for uri itself when it is a file)."""
    fs, root = _fs(uri)
    with store_errors(uri, "hashing"):
        if fs.isfile(root):
            return {"": _sha256(fs, root)}
        return {
            rel: _sha256(fs, path)
            for rel, path in sorted(files_under(fs, root).items())
            if rel not in NOT_PAYLOAD
        }


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
    return sum(int(fs.size(p)) for rel, p in files_under(fs, root).items() if rel not in NOT_PAYLOAD)


def check_new_output(uri: str, field_name: str = "spec.output_uri") -> None:
    """AlreadyExists unless uri is new or an empty folder: a job never writes over an artifact.

    On an object store a location holding only an unsealed payload (the UNSEALED
    marker and what a failed attempt copied beside it) counts as empty.
    """
    uri = to_uri(uri)
    fs, root = _fs(uri)
    if not is_local(uri):
        with store_errors(uri, "checking the output location"):
            if "/" in root.strip("/") and fs.isfile(root):
                raise AlreadyExists(f"{field_name}: {uri} is an existing file; name a new or empty folder")
            found = files_under(fs, root)
        if MANIFEST in found:
            raise AlreadyExists(f"{field_name}: {uri} is an existing artifact; name a new or empty folder")
        if found and UNSEALED not in found:
            raise AlreadyExists(
                f"{field_name}: {uri} is a folder that is not empty; name a new or empty folder"
            )
        return
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
    uri meanwhile; Unavailable naming the store if a remote store fails (in
    the block or during the move). Seal the moved payload with
    `finalize(uri, ...)` after it.
    """
    uri = to_uri(uri)
    fs, root = _fs(uri)
    parent, _, name = root.rstrip("/").rpartition("/")
    if not name or (not parent and not is_local(uri)):
        raise InvalidSpec("output_uri", f"{uri} has no parent folder to stage its payload in")
    temp = f"{parent}/.{name}.partial-{uuid.uuid4().hex[:8]}"
    if is_local(uri):
        fs.makedirs(temp, exist_ok=True)  # an object store has no folders to make
    try:
        with store_errors(uri, "writing the payload of"):
            yield fs.unstrip_protocol(temp)
        _move_into_place(fs, temp, root, uri)
    except BaseException:
        _discard(fs, temp, uri)
        raise


def _discard(fs: fsspec.AbstractFileSystem, temp: str, uri: str) -> None:
    """Remove a staging folder, as far as the store lets us (it may be the store that failed)."""
    try:
        if files_under(fs, temp) or fs.exists(temp):
            fs.rm(temp, recursive=True)
    except Exception as exc:  # noqa: BLE001 - the failure being raised matters more than this one
        log.warning("could not remove the staging folder %s of %s: %s", fs.unstrip_protocol(temp), uri, exc)


def _move_into_place(fs: fsspec.AbstractFileSystem, temp: str, root: str, uri: str) -> None:
    check_new_output(uri, "output_uri")
    if is_local(uri):
        try:  # one rename: it replaces an empty folder and fails on a full one
            os.rename(temp, root)
        except OSError as exc:
            raise AlreadyExists(f"output_uri: {uri} was filled while the job ran ({exc.strerror})") from exc
        return
    # No rename on an object store: mark the location unsealed, clear what a failed attempt left, copy.
    with store_errors(uri, "copying the payload into"):
        payload = files_under(fs, temp)
        marker = {"staging": fs.unstrip_protocol(temp), "started": dt.datetime.now(dt.UTC).isoformat()}
        fs.pipe_file(f"{root}/{UNSEALED}", json.dumps(marker).encode())
        leftovers = [path for rel, path in files_under(fs, root).items() if rel != UNSEALED]
        if leftovers:
            log.info("clearing %d objects a failed attempt left in %s", len(leftovers), uri)
            fs.rm(leftovers)
        if payload:
            fs.copy(list(payload.values()), [f"{root}/{rel}" for rel in payload])
    _discard(fs, temp, uri)


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
    with store_errors(uri, "sealing"):
        if not (fs.exists(root) if is_local(uri) else files_under(fs, root)):
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
        if not is_local(uri):  # one PUT: the object is there whole or not at all
            fs.pipe_file(f"{root}/{MANIFEST}", manifest.to_json().encode())
            _unmark(fs, root, uri)
            return manifest
        tmp = f"{root}/{MANIFEST}.tmp"
        with fs.open(tmp, "w") as fh:
            fh.write(manifest.to_json())
        fs.mv(tmp, f"{root}/{MANIFEST}")
    return manifest


def _unmark(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> None:
    """Remove the UNSEALED marker of a sealed artifact (one left behind is ignored: the manifest decides)."""
    try:
        if fs.exists(f"{root}/{UNSEALED}"):
            fs.rm_file(f"{root}/{UNSEALED}")
    except Exception as exc:  # noqa: BLE001 - the artifact is sealed; the marker no longer counts
        log.warning("could not remove %s from the sealed artifact %s: %s", UNSEALED, uri, exc)


def read_manifest(uri: str) -> Manifest:
    """The manifest of the artifact at uri; NotFound if the folder is not an artifact."""
    uri = to_uri(uri)
    fs, root = _fs(uri)
    path = f"{root}/{MANIFEST}"
    with store_errors(uri, "reading the manifest of"):
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


def enclosing_artifact(uri: str) -> str | None:
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
    with store_errors(uri, "opening the input"):
        artifact = enclosing_artifact(uri)
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
    uri = to_uri(uri)
    fs, root = _fs(uri)
    within = within.strip("/")
    recorded = {rel: h for rel, h in manifest.hashes.items() if not within or rel == within
                or rel.startswith(within + "/")}  # fmt: skip
    with store_errors(uri, "checking the files of"):
        if within and fs.isfile(f"{root}/{within}"):
            actual = {within: f"{root}/{within}"}
        else:
            actual = {rel: p for rel, p in files_under(fs, root).items()
                      if rel not in NOT_PAYLOAD and (not within or rel.startswith(within + "/"))}  # fmt: skip
        mismatch(uri, recorded, {rel: _sha256(fs, p) for rel, p in actual.items() if rel in recorded},
                 set(actual) - set(recorded), field_name)  # fmt: skip


def mismatch(
    uri: str, recorded: dict[str, str], actual: dict[str, str], extra: set[str], field_name: str
) -> None:
    """InvalidSpec naming each file that is missing, extra (not in the manifest) or changed; None if all match."""
    problems = [f"{rel} is missing" for rel in sorted(set(recorded) - set(actual))]
    problems += [f"{rel} is not in its manifest" for rel in sorted(extra)]
    problems += [f"{rel} changed since it was sealed" for rel in sorted(set(recorded) & set(actual))
                 if actual[rel] != recorded[rel]]  # fmt: skip
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
