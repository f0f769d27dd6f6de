"""Quality filters: which of the teacher's answers become training records.

An answer meets the filters in this order; the first that drops it names why
(the answer goes to `filtered.jsonl` with that name, and the job's metrics
count `filtered_<name>`):

- `empty`: nothing but whitespace (on unless keep_empty);
- `truncated`: the teacher stopped at max_tokens (`finish_reason == "length"`; drop_truncated);
- `refusal`: matches one of the refusal patterns (case-insensitive regexes; a
  default set unless keep_refusals);
- `length`: fewer than min_chars or more than max_chars characters;
- `json_schema`: not JSON, or JSON that does not match the schema;
- `reference`: disagrees with the prompt's reference answer (reference_column;
  exact, normalized, or contains);
- `duplicate`: the same answer as one already accepted (exact), or the same
  once case, punctuation and spacing are ignored (near).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator

DEFAULT_REFUSALS = (
    r"\bI(?: am|'m) (?:sorry|afraid)\b.{0,40}\b(?:can(?:no|')t|unable|not able)\b",
    r"\bI can(?:no|')t (?:help|assist|comply|provide|answer)\b",
    r"\bas an AI(?: language)? model\b",
    r"\bI(?: am|'m) (?:unable|not able) to (?:help|assist|comply|provide|answer)\b",
)
FILTERS = ("empty", "truncated", "refusal", "length", "json_schema", "reference", "duplicate")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"is not a regular expression: {exc}") from None
    return pattern


class FiltersConfig(BaseModel):
    """synthesis.proto's AnswerFilters: each default and bound stated here."""

    keep_empty: bool = False
    drop_truncated: bool = False
    refusal_patterns: list[Annotated[str, AfterValidator(_regex)]] = Field(
        default_factory=lambda: list(DEFAULT_REFUSALS)
    )
    keep_refusals: bool = False
    min_chars: int = Field(0, ge=0)
    max_chars: int = Field(0, ge=0)  # 0: no bound
    json_schema: dict[str, Any] | None = None  # the message's JSON text, parsed
    reference_column: str = ""
    reference_match: Literal["exact", "normalized", "contains"] = "normalized"
    duplicates: Literal["keep", "exact", "near"] = "keep"

    @field_validator("max_chars")
    @classmethod
    def _at_least_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_chars", 0)
        if value and value < low:
            raise ValueError(f"is below min_chars ({value} < {low})")
        return value

    @field_validator("json_schema", mode="before")
    @classmethod
    def _schema(cls, value: Any) -> Any:
        import jsonschema

        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"is not JSON: {exc}") from None
        if value is not None:
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"is not a valid JSON Schema: {exc.message}") from None
        return value if isinstance(value, dict) else None


def normalize(text: str) -> str:
    """Lowercase, without punctuation, with single spaces: what near-duplicates share."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


class AnswerFilter:
    """The filters of one job; `check` says which one drops an answer (None keeps it)."""

    def __init__(self, config: FiltersConfig):
        self.config = config
        self.refusals = (
            [] if config.keep_refusals else [re.compile(p, re.IGNORECASE) for p in config.refusal_patterns]
        )
        self.validator = None
        if config.json_schema is not None:
            import jsonschema

            self.validator = jsonschema.validators.validator_for(config.json_schema)(config.json_schema)
        self.seen: set[str] = set()
        self.counts: Counter[str] = Counter()

    def check(self, fields: dict[str, Any], result: dict[str, Any]) -> tuple[str, str] | None:
        """(filter, detail) for an answer a filter drops; None for one it keeps (and remembers)."""
        dropped = self._check(fields, result)
        if dropped is not None:
            self.counts[dropped[0]] += 1
            return dropped
        if self.config.duplicates != "keep":
            self.seen.add(self._key(result["completion"]))
        return None

    def _key(self, text: str) -> str:
        return text if self.config.duplicates == "exact" else normalize(text)

    def _check(self, fields: dict[str, Any], result: dict[str, Any]) -> tuple[str, str] | None:
        cfg, text = self.config, result["completion"]
        if not cfg.keep_empty and not text.strip():
            return "empty", "the answer is empty"
        if cfg.drop_truncated and result.get("finish_reason") == "length":
            return "truncated", "the teacher stopped at max_tokens"
        for pattern in self.refusals:
            if pattern.search(text):
                return "refusal", f"matches {pattern.pattern!r}"
        if len(text) < cfg.min_chars or (cfg.max_chars and len(text) > cfg.max_chars):
            return "length", f"{len(text)} characters, outside [{cfg.min_chars}, {cfg.max_chars or 'any'}]"
        if self.validator is not None:
            try:
                document = json.loads(text)
            except ValueError as exc:
                return "json_schema", f"not JSON ({exc})"
            error = next(iter(self.validator.iter_errors(document)), None)
            if error is not None:
                return "json_schema", f"does not match the schema: {error.message}"[:300]
        if cfg.reference_column:
            expected = str(fields.get(cfg.reference_column, ""))
            if not _agrees(text, expected, cfg.reference_match):
                return (
                    "reference",
                    f"disagrees with {cfg.reference_column} {expected!r} ({cfg.reference_match})",
                )
        if cfg.duplicates != "keep" and self._key(text) in self.seen:
            return "duplicate", f"the same answer ({cfg.duplicates}) as an earlier one"
        return None

    def metrics(self) -> dict[str, float]:
        return {f"filtered_{name}": float(self.counts.get(name, 0)) for name in FILTERS if self._on(name)}

    def _on(self, name: str) -> bool:
        cfg = self.config
        return {"empty": not cfg.keep_empty, "truncated": cfg.drop_truncated, "refusal": bool(self.refusals),
                "length": bool(cfg.min_chars or cfg.max_chars), "json_schema": self.validator is not None,
                "reference": bool(cfg.reference_column), "duplicate": cfg.duplicates != "keep"}[name]  # fmt: skip


def _agrees(text: str, expected: str, how: str) -> bool:
    if how == "exact":
        return text.strip() == expected.strip()
    if how == "contains":
        return normalize(expected) in normalize(text)
    return normalize(text) == normalize(expected)
