"""An EvaluationSpec validated before any work: from_proto.

Each target is an OpenAI-compatible endpoint: a `base_url`, or a serving
`deployment` name that the evaluation service resolves to a base URL (filling
`base_url`) before the job runs. The models in config.py are the spec
(defaults, bounds, rules between fields); what they cannot know is checked
here, as a second pass: URLs, key names, the dataset and model files, and
the first records of a local dataset (conversations without a prompt need
chat targets: examples.py). Every problem comes back in one InvalidSpec,
named by its proto path (`spec.targets[1].base_url`, ...).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from slmops.api.v1 import evaluation_pb2
from slmops.core import artifacts, settings
from slmops.core.datasets import VALIDATION_FILE, split_exists
from slmops.core.errors import InvalidSpec, collect
from slmops.core.spec_checks import (
    Problems,
    check_api_key_env,
    check_http_url,
    check_local_uri,
    problems_from,
    proto_dict,
)
from slmops.evaluation.config import EvaluationConfig
from slmops.evaluation.examples import load_examples, target_problems

PEEK_RECORDS = 1000  # records of a local dataset read at Create (the job reads them all)


def _endpoint(section: dict[str, Any], field: str, problems: Problems) -> None:
    """An endpoint's URL carries no credentials and names a host jobs may call; its key is named by an
    allowed variable, one the operator allows to go to that host (a deployment's URL is checked by the job)."""
    if section.get("base_url"):
        check_http_url(section["base_url"], f"{field}.base_url", problems)
    check_api_key_env(section.get("api_key_env", ""), f"{field}.api_key_env", problems,
                      base_url=section.get("base_url", ""))  # fmt: skip


def _dataset(value: str, problems: Problems) -> str:
    field = "spec.dataset_uri"
    uri = check_local_uri(value, field, problems)
    if uri.startswith("file://") and not any(p[0] == field for p in problems):
        path = artifacts.local_path(uri)
        if path.is_dir() and not split_exists(uri, VALIDATION_FILE):
            problems.append(
                (field, f"{value!r} is a folder without a validation split (want a dataset or a JSONL file)")
            )
    return uri


def _chat_records(raw: dict[str, Any], problems: Problems) -> None:
    """A local dataset whose first records are conversations without a prompt needs chat targets (the job
    checks every record; a dataset it cannot read here is the job's to report)."""
    uri = raw["dataset_uri"]
    if not uri.startswith("file://") or any(p[0] == "spec.dataset_uri" for p in problems):
        return
    try:
        examples = load_examples(uri, PEEK_RECORDS)
    except (InvalidSpec, OSError, ValueError):  # UnicodeDecodeError and Arrow's errors are ValueErrors
        return
    targets = [t for t in raw.get("targets", []) if isinstance(t, dict)]
    problems.extend(target_problems(examples, [bool(t.get("chat")) for t in targets]))


def from_proto(spec: evaluation_pb2.EvaluationSpec) -> EvaluationConfig:
    """Validate an EvaluationSpec completely; raise one InvalidSpec listing every problem."""
    problems: Problems = []
    raw = proto_dict(spec)
    for index, target in enumerate(raw.get("targets", [])):
        _endpoint(target, f"spec.targets[{index}]", problems)
        if target.get("model_uri"):
            target["model_uri"] = check_local_uri(
                target["model_uri"], f"spec.targets[{index}].model_uri", problems
            )
    if "judge" in raw:
        _endpoint(raw["judge"], "spec.judge", problems)
    if raw.get("dataset_uri"):
        raw["dataset_uri"] = _dataset(raw["dataset_uri"], problems)
        _chat_records(raw, problems)
    if raw.get("output_uri"):
        try:
            raw["output_uri"] = artifacts.confine(
                raw["output_uri"], settings.allowed_roots(), "spec.output_uri"
            )
        except InvalidSpec as exc:
            problems.extend(exc.problems)
    try:
        config = EvaluationConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(problems_from(exc))
    collect(problems)
    return config
