"""The files of an input a request names: listed within budgets before a byte is read, then hashed.

An input (a file or a folder, local or on an object store) is listed first:
each file's size and, for a local input, its type, so that a device, a FIFO
or a socket is refused rather than opened (reading /dev/zero never ends;
opening a FIFO waits for a writer), and an input holding more than
`max_input_files` files or `max_input_bytes` bytes (settings) is refused
rather than read. Only the listed regular files are then hashed, and reading
stops as soon as the byte budget is spent (a file that grew meanwhile).

Both take a URI that `confine` already returned (core/confinement.py); a
problem is an InvalidSpec naming the request's field.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slmops.core import settings
from slmops.core.artifacts import MANIFEST, NOT_PAYLOAD
from slmops.core.errors import InvalidSpec
from slmops.core.stores import filesystem, is_local, store_errors

CHUNK = 1 << 20


@dataclass(frozen=True)
class Listed:
    rel: str  # the path under the input ("" for the input itself when it is a file)
    path: str  # the filesystem's path
    size: int


@dataclass(frozen=True)
class Budget:
    files: int
    bytes: int

    @classmethod
    def configured(cls) -> Budget:
        return cls(int(settings.get("max_input_files")), int(settings.get("max_input_bytes")))


def _shown(uri: str) -> str:
    return uri if len(uri) <= 200 else uri[:197] + "..."


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class _Tally:
    """Files and bytes seen so far; InvalidSpec as soon as either budget is exceeded."""

    def __init__(self, uri: str, field_name: str, budget: Budget):
        self.uri, self.field_name, self.budget = uri, field_name, budget
        self.files = self.folders = self.bytes = 0

    def file(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.budget.files:
            raise InvalidSpec(self.field_name, f"{_shown(self.uri)} holds more than {self.budget.files} "
                                               "files (SLMOPS_MAX_INPUT_FILES); name a smaller input")  # fmt: skip
        if self.bytes > self.budget.bytes:
            raise InvalidSpec(self.field_name, f"{_shown(self.uri)} holds more than {self.budget.bytes} "
                                               "bytes (SLMOPS_MAX_INPUT_BYTES); name a smaller input")  # fmt: skip

    def folder(self) -> None:
        self.folders += 1
        if self.folders > self.budget.files:
            raise InvalidSpec(self.field_name, f"{_shown(self.uri)} holds more than {self.budget.files} "
                                               "folders (SLMOPS_MAX_INPUT_FILES); name a smaller input")  # fmt: skip


def _stat(path: str, rel: str, uri: str, field_name: str) -> os.stat_result:
    """A path's status, symbolic links followed; never opens it."""
    try:
        return os.stat(path)
    except OSError as exc:
        where = f"{_shown(uri)}: {rel}" if rel else _shown(uri)
        problem = (
            "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror})"
        )
        raise InvalidSpec(field_name, f"{where} {problem}") from None


def _entries(folder: str, prefix: str, uri: str, field_name: str) -> Iterator[os.DirEntry[str]]:
    """A folder's entries, one at a time (a huge folder is refused before it is listed whole)."""
    try:
        with os.scandir(folder) as entries:
            yield from entries
    except OSError as exc:
        where = f"{_shown(uri)}: {prefix.rstrip('/')}" if prefix else _shown(uri)
        raise InvalidSpec(field_name, f"{where} cannot be listed ({exc.strerror})") from None


def _list_local(uri: str, field_name: str, budget: Budget) -> list[Listed]:
    root = uri.removeprefix("file://")
    tally = _Tally(uri, field_name, budget)
    top = _stat(root, "", uri, field_name)
    if stat.S_ISREG(top.st_mode):
        tally.file(top.st_size)
        beside = os.path.join(os.path.dirname(root), MANIFEST)  # the manifest open_input reads for a file
        if os.path.lexists(beside) and not stat.S_ISREG(_stat(beside, MANIFEST, uri, field_name).st_mode):
            raise InvalidSpec(field_name, f"{_shown(uri)}: the {MANIFEST} beside it is not a regular file")
        return [Listed("", root, top.st_size)]
    if not stat.S_ISDIR(top.st_mode):
        raise InvalidSpec(
            field_name, f"{_shown(uri)} is {_kind(top.st_mode)}; an input is a file or a folder"
        )
    found: list[Listed] = []
    pending: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        (root, "", frozenset({(top.st_dev, top.st_ino)}))
    ]
    while pending:
        folder, prefix, above = pending.pop()
        for entry in _entries(folder, prefix, uri, field_name):
            rel = prefix + entry.name
            info = _stat(entry.path, rel, uri, field_name)
            if stat.S_ISDIR(info.st_mode):
                tally.folder()
                here = (info.st_dev, info.st_ino)
                if here in above:
                    raise InvalidSpec(field_name, f"{_shown(uri)}: {rel} links back to a folder above it")
                pending.append((entry.path, rel + "/", above | {here}))
            elif stat.S_ISREG(info.st_mode):
                tally.file(info.st_size)
                found.append(Listed(rel, entry.path, info.st_size))
            else:
                raise InvalidSpec(field_name, f"{_shown(uri)}: {rel} is {_kind(info.st_mode)}; "
                                              "an input holds regular files only")  # fmt: skip
    return sorted(found, key=lambda f: f.rel)


def _list_remote(uri: str, field_name: str, budget: Budget) -> list[Listed]:
    fs, root = filesystem(uri)
    tally = _Tally(uri, field_name, budget)
    root = root.rstrip("/")
    found: list[Listed] = []
    with store_errors(uri, "listing the input"):
        if fs.isfile(root):
            size = int(fs.size(root) or 0)
            tally.file(size)
            return [Listed("", root, size)]
        for folder, _, files in fs.walk(root, detail=True):
            tally.folder()
            for name, info in files.items():
                path = info.get("name", f"{folder}/{name}").rstrip("/")
                rel = path[len(root) :].strip("/")
                if not rel or not path.startswith(root + "/"):
                    continue
                size = int(info.get("size") or 0)
                tally.file(size)
                found.append(Listed(rel, path, size))
    return sorted(found, key=lambda f: f.rel)


def list_input(uri: str, field_name: str, budget: Budget | None = None) -> list[Listed]:
    """Every file of a confined input, checked against the budgets before any is read.

    InvalidSpec naming field_name when it does not exist, is empty, holds anything
    but regular files and folders (local), or more files or bytes than the budget."""
    budget = budget or Budget.configured()
    listed = (_list_local if is_local(uri) else _list_remote)(uri, field_name, budget)
    if not listed:
        raise InvalidSpec(field_name, f"{_shown(uri)} does not exist or holds no file")
    return listed


def _open(uri: str, file: Listed, field_name: str):
    if not is_local(uri):
        return filesystem(uri, fresh=False)[0].open(file.path, "rb")
    # O_NONBLOCK: a FIFO swapped in since the listing does not wait for a writer; fstat refuses it.
    fd = os.open(file.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidSpec(field_name, f"{_shown(uri)}: {file.rel or Path(file.path).name} is no longer a "
                                      "regular file")  # fmt: skip
    return os.fdopen(fd, "rb")


def hash_input(uri: str, field_name: str, budget: Budget | None = None) -> dict[str, str]:
    """sha256 of every payload file of a confined input, keyed by relative path ("" for a file),
    as artifacts.hash_files keys them; listed within the budgets first (list_input)."""
    budget = budget or Budget.configured()
    listed = list_input(uri, field_name, budget)
    left = budget.bytes
    hashes: dict[str, str] = {}
    with store_errors(uri, "hashing the input"):
        for file in listed:
            if file.rel in NOT_PAYLOAD:
                continue
            digest = hashlib.sha256()
            with _open(uri, file, field_name) as fh:
                while chunk := fh.read(min(CHUNK, left + 1)):
                    left -= len(chunk)
                    if left < 0:
                        raise InvalidSpec(field_name, f"{_shown(uri)} grew past {budget.bytes} bytes "
                                                      "(SLMOPS_MAX_INPUT_BYTES) while it was read")  # fmt: skip
                    digest.update(chunk)
            hashes[file.rel] = digest.hexdigest()
    return hashes
