"""Evaluation report artifacts as an evaluation job seals them, for the serving tests that look for them."""

from __future__ import annotations

import json

from slmops.core import artifacts, settings
from slmops.evaluation.config import EvaluationConfig

NAME = "student"


def report(candidate_url: str, *, passed: bool | None, gate: bool = True, model: str = NAME,
           verdict: bool = True) -> str:  # fmt: skip
    """A report artifact as an evaluation job seals it: the candidate reached at candidate_url."""
    uri = f"{settings.artifact_root()}/reports/{artifacts.new_id('evalu')}"
    targets = [{"name": "int4", "base_url": f"{candidate_url}/openai/v1", "model": model},
               {"name": "teacher", "base_url": "http://teacher.example/v1", "model": "big"}]  # fmt: skip
    gate_spec = {"candidate": "int4", "min_retention": 0.9} if gate else None
    # The manifest's spec is the job's validated config, as job.py seals it.
    spec = EvaluationConfig.model_validate({"targets": targets, "reference": "teacher", "gate": gate_spec,
                                            "dataset_uri": "file:///data/held-out.jsonl"}).model_dump(mode="json")  # fmt: skip
    with artifacts.staged(uri) as staging:
        body = {"results": []}
        if verdict:
            reasons = ["int4: ok: retention 0.950 >= min 0.900"] if passed else [
                "int4: FAILED: retention 0.500 < min 0.900"]  # fmt: skip
            body["verdict"] = {"evaluated": gate, "passed": bool(passed) and gate,
                               "reasons": reasons if gate else ["no gate configured"]}  # fmt: skip
        (artifacts.local_path(staging) / "report.json").write_text(json.dumps(body))
    artifacts.finalize(uri, "report", spec=spec)
    return uri
