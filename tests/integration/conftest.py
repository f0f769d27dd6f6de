"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

# An API key the tests' Ray workers see, as a job's workers see the keys its environment names.
TEST_TEACHER_KEY = "sk-test-9f8e7d6c5b4a3210"


@pytest.fixture(scope="module")
def ray_local():
    """A Ray instance of this process for the module's tests (not any cluster running on the machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TEST_TEACHER_API_KEY": TEST_TEACHER_KEY}})  # fmt: skip
    yield
    ray.shutdown()
