"""The store's filesystems: bounded retries for S3 (an operator's own fsspec configuration wins) and errors naming the store."""

from __future__ import annotations

import fsspec
import pytest

from slmops.core import stores
from slmops.core.errors import Unavailable


@pytest.fixture
def clean_conf(monkeypatch):
    monkeypatch.setitem(fsspec.config.conf, "s3", {})
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()
    yield fsspec.config.conf["s3"]
    S3FileSystem.clear_instance_cache()


def test_s3_gets_bounded_retries_and_timeouts(clean_conf):
    fs, path = stores.filesystem("s3://bucket/ckpt")
    assert path == "bucket/ckpt" and fs.retries <= stores.S3FS_RETRIES
    config = fs.config_kwargs
    assert config["retries"] == {"max_attempts": 2, "mode": "standard"}
    assert config["connect_timeout"] == 5 and config["read_timeout"] == 20


def test_an_operators_own_configuration_wins(clean_conf):
    clean_conf["config_kwargs"] = {"read_timeout": 120}
    fs, _ = stores.filesystem("s3://bucket/ckpt")
    assert fs.config_kwargs["read_timeout"] == 120 and fs.config_kwargs["retries"]["max_attempts"] == 2


def test_store_errors_name_the_uri_and_endpoint_and_leave_other_errors_alone(clean_conf):
    with pytest.raises(Unavailable, match=r"while reading s3://bucket/x \(endpoint http://127.0.0.1:9\): "
                                          r"ConnectionRefusedError"):  # fmt: skip
        with stores.store_errors("s3://bucket/x", "reading"):
            raise ConnectionRefusedError("refused")
    with pytest.raises(ValueError), stores.store_errors("s3://bucket/x", "reading"):
        raise ValueError("a bug of the caller, not the store")
    with pytest.raises(FileNotFoundError), stores.store_errors("file:///tmp/x", "reading"):
        raise FileNotFoundError("local errors stay as they are")
