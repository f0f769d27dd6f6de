"""Sealed artifacts on an object store, fetched to this machine for what reads local folders.

The local backend's predictors read folders on this machine, so a model (or an
adapter artifact) at an s3://, gs:// or az:// URI is fetched first, as KServe's
storage initializer would fetch it: into `<data_dir>/cache/models/<manifest
id>`, every file checked against the manifest's sha256 while it is
downloaded, into a temporary folder renamed into place once whole (its
manifest.json copied last). A complete copy whose manifest records the same
hashes is used again; anything else there is fetched anew. Only a sealed
artifact is fetched: without a manifest there are no hashes to check it by.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import uuid
from pathlib import Path

from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, NotFound
from slmops.core.stores import filesystem, store_errors

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def cache_root() -> Path:
    return settings.data_dir() / "cache" / "models"


def localize(uri: str, field: str) -> Path:
    """The local path of uri: itself for a local URI; for a remote one, its place in the fetched artifact."""
    if artifacts.to_uri(uri).startswith("file://"):
        return artifacts.local_path(artifacts.to_uri(uri))
    uri = uri.rstrip("/")
    with store_errors(uri, "opening"):
        artifact = artifacts.enclosing_artifact(uri)
    if artifact is None:
        with store_errors(uri, "opening"):
            fs, path = filesystem(uri)
            exists = fs.exists(path)
        if not exists:
            raise NotFound("artifact", uri)
        raise InvalidSpec(field, f"{uri} is not a sealed artifact (no manifest.json): the local backend fetches "
                                 "from an object store only what a manifest's hashes can check")  # fmt: skip
    folder = fetch(artifact, field)
    within = uri[len(artifact) :].strip("/")
    return folder / within if within else folder


def fetch(uri: str, field: str) -> Path:
    """The local copy of the sealed artifact at uri, fetched (and checked) unless a complete one is cached."""
    manifest = artifacts.read_manifest(uri)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", manifest.id) or "artifact"
    dest = cache_root() / name
    if _complete(dest, manifest.hashes):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.parent / f".{name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _download(uri, manifest, temp, field)
        if dest.exists():  # an incomplete or different copy: replaced
            shutil.rmtree(dest, ignore_errors=True)
        try:
            temp.rename(dest)
        except OSError:
            if not _complete(dest, manifest.hashes):  # another fetch of the same artifact won the race
                raise
        log.info("fetched %s into %s", uri, dest)
        return dest
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def download(uri: str, dest: Path, field: str) -> Path:
    """The sealed artifact at uri downloaded into dest (a new folder), every file checked; dest."""
    _download(uri, artifacts.read_manifest(uri), dest, field)
    return dest


def _complete(folder: Path, hashes: dict[str, str]) -> bool:
    try:
        cached = json.loads((folder / artifacts.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return cached.get("hashes") == hashes and all((folder / rel).is_file() for rel in hashes)


def _download(uri: str, manifest: artifacts.Manifest, temp: Path, field: str) -> None:
    """Every payload file of the artifact into temp, hashed on the way; InvalidSpec naming each mismatch."""
    fs, root = filesystem(uri)
    actual: dict[str, str] = {}
    with store_errors(uri, "fetching"):
        files = {
            rel: p for rel, p in artifacts.files_under(fs, root).items() if rel not in artifacts.NOT_PAYLOAD
        }
        for rel in sorted(set(files) & set(manifest.hashes)):
            target = temp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with fs.open(files[rel], "rb") as src, open(target, "wb") as out:
                for chunk in iter(lambda: src.read(CHUNK), b""):  # noqa: B023 - consumed in this iteration
                    digest.update(chunk)
                    out.write(chunk)
            actual[rel] = digest.hexdigest()
    artifacts.mismatch(uri, manifest.hashes, actual, set(files) - set(manifest.hashes), field)
    (temp / artifacts.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")  # last: the copy is whole
