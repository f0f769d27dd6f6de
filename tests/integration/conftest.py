"""Fixtures of the integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# An API key the tests' Ray workers see, as a job's workers see the keys its environment names.
TEST_TEACHER_KEY = "sk-test-9f8e7d6c5b4a3210"


@pytest.fixture(scope="module")
def ray_local():
    """A Ray instance of this process for the module's tests (not any cluster running on the machine).

    Its value is the data dir the workers write to (their spans, for one): the one this process had when
    Ray started (a stack's, when the session's stack runs), which a test's own SLMOPS_DATA_DIR does not change.
    """
    import ray

    workers_data_dir = Path(os.environ.get("SLMOPS_DATA_DIR", "~/.slmops")).expanduser()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TEST_TEACHER_API_KEY": TEST_TEACHER_KEY}})  # fmt: skip
    yield workers_data_dir
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """Ray for the module's training jobs: the one this process already runs, else one started here
    (and stopped after the module)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield
    if started:
        ray.shutdown()
