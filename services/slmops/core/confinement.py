"""Which URIs a request may name. Every URI in a request, input or output, goes through `confine`.

- Only the schemes the operator allows (SLMOPS_ALLOWED_SCHEMES; `file` covers
  plain paths). `local://` is refused always: it is fsspec's second name for
  file:// and would slip past a check that looks for `file://`.
- fsspec chained URLs (`simplecache::s3://...`) are refused: a request names a
  location, never a stack of filesystems, caches and their options.
- Credentials inside a URI (`s3://key:secret@bucket`) are refused: they would
  reach job records, manifests and logs.
- A local path must resolve (symbolic links followed) under an allowed root,
  and may neither lie in nor hold the platform's own state: the data dir's
  job databases, auth and Ray tokens, logs, traces and stack record, and the
  secret files other settings name. A local folder's own symbolic links must
  stay inside the roots too, or a job reading the folder would follow them out.

Remote locations are governed by the bucket's credentials, not by this
process's filesystem, so a remote URI with an allowed scheme is accepted as is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from slmops.core import settings
from slmops.core.errors import InvalidSpec

# What the data dir holds that no request may read or write (see settings, auth, local_ray, cli/stack).
PRIVATE_STATE = ("db", "auth", "ray", "logs", "traces", "stack.json")
# Settings that name files holding secrets.
SECRET_FILE_SETTINGS = ("auth_token_file", "tls_key_file", "tls_client_key_file", "ray_auth_token_path")
MAX_FOLDER_ENTRIES = 100_000  # a folder input larger than this is refused rather than half-checked
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


def allowed_schemes() -> list[str]:
    return [s.strip().lower() for s in settings.get("allowed_schemes").split(",") if s.strip()]


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def private_paths() -> list[Path]:
    """Files and folders that hold the platform's own state and secrets."""
    data = _real(settings.get("data_dir"))
    paths = [data / name for name in PRIVATE_STATE]
    for name in SECRET_FILE_SETTINGS:
        if settings.get(name):
            paths.append(_real(settings.get(name)))
    database = settings.get("database_url")
    if database.startswith("sqlite:///"):
        db = _real(database[len("sqlite:///") :].split("?", 1)[0])
        paths += [db, *(db.with_name(db.name + suffix) for suffix in ("-journal", "-wal", "-shm"))]
    return paths


def _inside(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _private_problem(path: Path, private: list[Path]) -> str:
    for secret in private:
        if _inside(path, secret):
            return f"is the platform's own state ({secret}); requests may not name it"
        if path in secret.parents:
            return f"holds the platform's own state ({secret}); name a folder inside it instead"
    return ""


def _link_problem(folder: Path, roots: list[Path], private: list[Path]) -> str:
    """A symbolic link inside folder that points outside the roots or at private state."""
    seen = 0
    for current, dirs, files in os.walk(folder, followlinks=False):
        for name in (*dirs, *files):
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                return f"holds more than {MAX_FOLDER_ENTRIES} entries; name a smaller folder"
            entry = Path(current, name)
            if not entry.is_symlink():
                continue
            target = _real(entry)
            rel = entry.relative_to(folder)
            if not any(_inside(target, root) for root in roots):
                return f"holds a symbolic link {rel} that points outside the allowed roots"
            if _private_problem(target, private):
                return f"holds a symbolic link {rel} that points at the platform's own state"
    return ""


def _quoted(text: str) -> str:
    """A request's URI quoted in a problem, cut short."""
    shown = repr(text)
    return shown if len(shown) <= 200 else shown[:197] + "..."


def _check_remote(uri: str, field_name: str) -> None:
    authority = uri.split("://", 1)[1].split("/", 1)[0]
    userinfo = authority.rpartition("@")[0]
    if ":" in userinfo:
        raise InvalidSpec(
            field_name, "must not carry credentials (user:secret@); the store's own credentials apply"
        )


def confine(uri: str, roots: Iterable[str | os.PathLike[str]] | None = None, field_name: str = "uri") -> str:
    """The canonical URI (file:// for local paths) of uri if a request may name it; else InvalidSpec.

    roots defaults to the configured allowed roots (settings.allowed_roots()).
    """
    if not uri:
        raise InvalidSpec(field_name, "must not be empty")
    text = str(uri)
    if "::" in text:
        raise InvalidSpec(field_name, "chained URLs (a::b://...) are not accepted; name one location")
    schemes = allowed_schemes()
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() == "local":
        raise InvalidSpec(field_name, "local:// is not accepted; use file:///path or a plain path")
    if sep and (not _SCHEME.match(scheme) or scheme not in schemes):
        raise InvalidSpec(
            field_name, f"scheme {_quoted(scheme)} is not allowed here (allowed: {', '.join(schemes)})"
        )
    if sep and scheme != "file":
        _check_remote(text, field_name)
        return text
    if "file" not in schemes:
        raise InvalidSpec(
            field_name, f"local paths are not allowed here (allowed schemes: {', '.join(schemes)})"
        )
    if sep and not rest.startswith("/"):
        raise InvalidSpec(field_name, "a file:// URI takes an absolute path (file:///data/model)")
    path = _real(rest if sep else os.path.abspath(os.path.expanduser(text)))
    root_list = list(settings.allowed_roots() if roots is None else roots)
    real_roots = [_real(r) for r in root_list]
    if not any(_inside(path, root) for root in real_roots):
        allowed = ", ".join(str(r) for r in root_list)
        raise InvalidSpec(field_name, f"{_quoted(text)} is outside the allowed roots ({allowed})")
    private = private_paths()
    problem = _private_problem(path, private)
    if not problem and path.is_dir():
        problem = _link_problem(path, real_roots, private)
    if problem:
        raise InvalidSpec(field_name, f"{_quoted(text)} {problem}")
    return "file://" + str(path)
