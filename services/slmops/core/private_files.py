"""Local state readable by its owner only, and files that rotate by size.

The data dir and what the platform keeps under it (job databases, tokens and
keys, logs, spans, the stack record, artifacts) belong to the user who runs
it: folders 0700, files 0600. The processes `slmops up` starts run with umask
077 (CHILD_UMASK), so what they and their children write is private too;
`tighten` fixes a data dir made before that.

Service logs and the local span file rotate at SLMOPS_LOG_MAX_BYTES: `name`
becomes `name.1`, `name.1` becomes `name.2`, ..., and the oldest beyond
KEEP_ROTATED is dropped.
"""

from __future__ import annotations

import fcntl
import logging.handlers
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from slmops.core import settings

DIR_MODE = 0o700
FILE_MODE = 0o600
CHILD_UMASK = 0o077
KEEP_ROTATED = 3
_OPEN_TO_OTHERS = 0o077


def private_dir(path: Path) -> Path:
    """path as a folder, made readable by this user only when it is made here."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """A descriptor of path (created when missing), which is readable by this user only."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & _OPEN_TO_OTHERS:
            os.fchmod(fd, FILE_MODE)
    except PermissionError:
        pass  # another user's file: left as it is
    return fd


def write_private(path: Path, text: str) -> None:
    """Replace path's content with text; the file is readable by this user only."""
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as fh:
        fh.write(text)


def tighten(data_dir: Path) -> int:
    """Take group and other access away from data_dir and everything under it; how many paths changed.

    Links are not followed: what they point to is not the data dir's.
    """
    changed = 0
    for root, dirs, files in os.walk(data_dir):
        for path in (root, *(os.path.join(root, name) for name in (*dirs, *files))):
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode) or not mode & _OPEN_TO_OTHERS:
                    continue
                os.chmod(path, stat.S_IMODE(mode) & ~_OPEN_TO_OTHERS)
            except OSError:
                continue  # gone meanwhile, or not this user's
            changed += 1
    return changed


def log_max_bytes() -> int:
    """SLMOPS_LOG_MAX_BYTES as a positive number of bytes (ValueError naming the variable otherwise)."""
    raw = settings.get("log_max_bytes")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(
            f"{settings.VARS['log_max_bytes'].env} must be a positive number of bytes, not {raw!r}"
        )
    return value


def rotated_name(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def rotated_files(path: Path, keep: int = KEEP_ROTATED) -> list[Path]:
    """path's rotated files and path itself, oldest first; only those that exist."""
    candidates = [rotated_name(path, i) for i in range(keep, 0, -1)] + [path]
    return [p for p in candidates if p.is_file()]


def rotate(path: Path, keep: int = KEEP_ROTATED) -> None:
    """path -> path.1 -> path.2 ... -> path.<keep>; what was path.<keep> is dropped."""
    for index in range(keep - 1, 0, -1):
        older = rotated_name(path, index)
        if older.exists():
            os.replace(older, rotated_name(path, index + 1))
    if path.exists():
        os.replace(path, rotated_name(path, 1))


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_lines(path: Path, lines: Sequence[bytes], max_bytes: int, keep: int = KEEP_ROTATED) -> None:
    """Append whole lines to path, rotating it before a line that would take it past max_bytes.

    Several processes may append to one file: a lock file beside it (`<name>.lock`)
    lets one at a time write or rotate. A single line longer than max_bytes gets
    a file of its own.
    """
    private_dir(path.parent)
    lock_fd = open_private(path.with_name(f"{path.name}.lock"), os.O_WRONLY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        fd = open_private(path)
        try:
            size, pending = os.fstat(fd).st_size, bytearray()
            for line in lines:
                if size + len(pending) and size + len(pending) + len(line) > max_bytes:
                    _write_all(fd, pending)
                    os.close(fd)
                    fd = -1
                    rotate(path, keep)
                    fd = open_private(path)
                    size, pending = 0, bytearray()
                pending += line
            _write_all(fd, pending)
        finally:
            if fd >= 0:
                os.close(fd)
    finally:
        os.close(lock_fd)  # releases the lock


class RotatingLogHandler(logging.handlers.RotatingFileHandler):
    """A log file rotated at SLMOPS_LOG_MAX_BYTES with KEEP_ROTATED older files, each readable by this user only."""

    def __init__(self, path: Path, max_bytes: int | None = None):
        private_dir(path.parent)
        super().__init__(
            path, maxBytes=max_bytes or log_max_bytes(), backupCount=KEEP_ROTATED, encoding="utf-8"
        )

    def _open(self) -> IO[Any]:
        fd = open_private(Path(self.baseFilename))
        return open(fd, "a", encoding=self.encoding, errors=self.errors)  # noqa: SIM115 (the handler closes it)
