"""The local backend's bookkeeping, without predictors: splits, and which pids it may signal."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from slmops.serving.backends import Revision, ServingBackend
from slmops.serving.backends.local import LocalBackend, _created, _is_ours, _Process, _share


def test_it_satisfies_the_protocol(tmp_path):
    assert isinstance(LocalBackend(tmp_path), ServingBackend)


@pytest.mark.parametrize("split,expected", [
    ({1: 75, 2: 25}, {1: 75, 2: 25}),
    ({1: 75}, {1: 100}),
    ({1: 1, 2: 1, 3: 1}, {1: 34, 2: 33, 3: 33}),
    ({}, {}),
])  # fmt: skip
def test_share_keeps_proportions_and_sums_to_100(split, expected):
    assert _share(split) == expected


def test_only_the_process_that_was_started_is_ours(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        created = _created(child.pid)
        assert created > 0 and _is_ours(child.pid, created)
        # The same pid with another creation time is a stranger that reused the number: never ours.
        assert not _is_ours(child.pid, created - 5.0)
        assert not _is_ours(child.pid, 0.0)
        backend = LocalBackend(tmp_path)
        stranger = _Process(Revision(1, "file:///m", "file:///m"), "/m", 1, tmp_path / "log",
                            pid=child.pid, created=created - 5.0)  # fmt: skip
        backend._stop(stranger)  # a recorded pid that is no longer ours: forgotten, not signalled
        time.sleep(0.3)
        assert child.poll() is None and stranger.pid == 0
        ours = _Process(Revision(1, "file:///m", "file:///m"), "/m", 1, tmp_path / "log", pid=child.pid,
                        created=created)  # fmt: skip
        backend._stop(ours)
        assert child.wait(10) is not None
        assert not _is_ours(child.pid, created)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
