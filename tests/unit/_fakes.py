"""Stand-ins shared by unit tests for what cannot run in them."""

from __future__ import annotations

from slmops.core.errors import Unavailable
from slmops.core.ray_jobs import RayJobStatus


class FakeRay:
    """What StageJobs and the capacity check use of RayJobs, with no cluster behind it."""

    def __init__(self) -> None:
        self.total: dict[str, float] | None = {"CPU": 4.0, "GPU": 0.0}  # None: Ray cannot be asked
        self.submitted: list[str] = []
        self.stopped: set[str] = set()

    def cluster_resources(self) -> dict[str, float]:
        if self.total is None:
            raise Unavailable("Ray cluster resources at http://nowhere:8265 unavailable")
        return dict(self.total)

    def submit(self, stage, job_id, *args, **kwargs) -> str:
        self.submitted.append(job_id)
        return f"ray-{job_id}"

    def status(self, submission_id: str) -> RayJobStatus:
        return RayJobStatus("STOPPED" if submission_id in self.stopped else "PENDING", "")

    def logs(self, submission_id: str) -> str:
        return ""

    def stop(self, submission_id: str) -> bool:
        self.stopped.add(submission_id)
        return True

    def find(self, stage: str, job_id: str) -> str:
        return ""
