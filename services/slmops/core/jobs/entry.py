"""Entrypoint of every Ray job: `python -m slmops.core.jobs.entry <stage>`.

Reads the job's config and output URI from the environment, continues the
caller's trace, runs `slmops.<stage>.job.run`, and prints the result as the
last log line for the service to collect. SIGTERM (how Ray stops a job)
raises `JobCancelled` in the job, which may keep what it has finished during
Ray's grace period before the SIGKILL.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import traceback

from slmops.core import tracing
from slmops.core.errors import JobCancelled
from slmops.core.progress import cancel_on_sigterm, emit_result, stdout_progress

STAGES = ("synthesis", "training", "conversion", "evaluation")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in STAGES:
        print(f"usage: python -m slmops.core.jobs.entry {{{'|'.join(STAGES)}}}", file=sys.stderr)
        return 2
    stage = args[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = json.loads(os.environ.get("SLMOPS_JOB_CONFIG", "{}"))
    output_uri = os.environ["SLMOPS_JOB_OUTPUT"]
    job_id = os.environ.get("SLMOPS_JOB_ID", "")
    tracing.setup_tracing(f"{stage}-job")
    module = importlib.import_module(f"slmops.{stage}.job")
    cancel_on_sigterm(install=True)  # Ray stops a job with SIGTERM, then SIGKILL after a grace
    try:
        with tracing.span_from_env(f"{stage}.job", {"slmops.job_id": job_id, "slmops.stage": stage}):
            result = module.run(config, output_uri, stdout_progress, trace_id=tracing.current_trace_id())
    except JobCancelled as exc:
        print(f"SLMOPS_ERROR cancelled: {exc}", flush=True)
        return 128 + signal.SIGTERM
    except Exception as exc:
        traceback.print_exc()
        print(f"SLMOPS_ERROR {type(exc).__name__}: {exc}", flush=True)
        return 1
    finally:
        tracing.shutdown_tracing()
    emit_result(result or {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
