"""The fsspec filesystems artifacts live on, with bounded retries and errors that name the store.

An object store that stops answering must fail a job within tens of seconds,
not after minutes of retries: botocore's default (legacy mode, five attempts)
times s3fs's own retry loop (five more on timeouts) can hang a job for a long
time. `filesystem(uri)` installs bounded defaults for S3 in fsspec's
per-protocol configuration (`fsspec.config.conf`), so every fsspec call in
this process, the stage jobs' own included, gets them; an operator's own
`FSSPEC_S3` configuration wins over ours, key by key.

`store_errors(uri, doing)` turns what the store raises (botocore, aiohttp,
OSError) into `Unavailable` naming the URI and the endpoint, instead of a bare
botocore trace.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec

from slmops.core.errors import Unavailable

# Connect 5 s, read 20 s, two attempts per request (botocore's standard mode),
# two rounds of s3fs's own loop: a dead endpoint fails in seconds, a hung one in
# about a minute and a half at worst.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {
        "retries": {"max_attempts": 2, "mode": "standard"},
        "connect_timeout": 5,
        "read_timeout": 20,
    },
}
S3FS_RETRIES = 2  # s3fs's own retry loop around each call (a class attribute there, 5 by default)


def is_local(uri: str) -> bool:
    return uri.startswith("file://") or "://" not in uri


def _install_defaults() -> None:
    conf = fsspec.config.conf.setdefault("s3", {})
    for key, value in S3_DEFAULTS.items():
        if isinstance(value, dict) and isinstance(conf.get(key), dict):
            conf[key] = {**copy.deepcopy(value), **conf[key]}
        else:
            conf.setdefault(key, copy.deepcopy(value))


def filesystem(uri: str, *, fresh: bool = True) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) of an fsspec URI; fresh drops the listings a remote filesystem cached."""
    _install_defaults()
    fs, path = fsspec.core.url_to_fs(uri)
    if not is_local(uri):
        if hasattr(fs, "retries"):
            fs.retries = min(int(fs.retries), S3FS_RETRIES)
        if fresh:
            fs.invalidate_cache()  # another process may have written since this one listed
    return fs, path


def endpoint(uri: str) -> str:
    """The endpoint a remote URI is reached through, as far as this process knows it."""
    if is_local(uri):
        return ""
    scheme = uri.split("://", 1)[0].lower()
    if scheme in ("s3", "s3a"):
        conf = fsspec.config.conf.get("s3", {})
        return (conf.get("endpoint_url") or conf.get("client_kwargs", {}).get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or "AWS S3")  # fmt: skip
    return scheme


def describe(uri: str) -> str:
    """The URI and, for a remote store, its endpoint: what an error message names."""
    where = endpoint(uri)
    return f"{uri} (endpoint {where})" if where else uri


def is_store_error(exc: BaseException) -> bool:
    """Whether exc is the store failing (network, service, permissions) rather than the caller's logic."""
    if isinstance(exc, OSError):
        return True
    names = {cls.__module__.split(".", 1)[0] for cls in type(exc).__mro__}
    return bool(names & {"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs"})


def store_error(uri: str, doing: str, exc: BaseException) -> Unavailable:
    message = str(exc).strip() or type(exc).__name__
    return Unavailable(
        f"the artifact store failed while {doing} {describe(uri)}: {type(exc).__name__}: {message}"
    )


@contextmanager
def store_errors(uri: str, doing: str) -> Iterator[None]:
    """Unavailable naming uri and its endpoint for a store failure in the block (remote URIs only)."""
    try:
        yield
    except Exception as exc:
        if is_local(uri) or not is_store_error(exc):
            raise
        raise store_error(uri, doing, exc) from exc
