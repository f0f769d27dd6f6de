from __future__ import annotations

import pytest

from slmops.core.errors import InvalidSpec
from slmops.pipeline.definition import parse


def test_stages_parse_in_flow_order():
    definition = parse(
        """
name: distill
evaluation: {reference: teacher, targets: [{name: teacher, deployment: teacher}]}
training: {method: SFT_DISTILL, base: {model: m, from_config: true, config_overrides: {hidden_size: "64"}}}
synthesis: {prompts_uri: /data/p.jsonl, endpoint: {base_url: "http://t/v1", model: big}}
conversion: {precision: INT4}
serving: {name: student}
"""
    )
    assert definition.name == "distill"
    assert definition.order() == ["synthesis", "training", "conversion", "serving", "evaluation"]
    assert definition.stages["training"].base.config_overrides["hidden_size"] == "64"
    assert definition.stages["synthesis"].endpoint.model == "big"


def test_every_problem_is_reported_with_its_stage():
    with pytest.raises(InvalidSpec) as info:
        parse("training: {method: NOPE}\nconversion: {}\nmystery: 1\n")
    fields = dict(info.value.problems)
    assert "mystery" in fields["spec.definition_yaml"]
    assert "spec.definition_yaml.training" in fields
    assert "spec.definition_yaml.conversion.model_uri" in fields


@pytest.mark.parametrize("text", ["", "[1, 2]", "a: [", "name: only-a-name"])
def test_bad_files_are_invalid(text):
    with pytest.raises(InvalidSpec) as info:
        parse(text)
    assert info.value.field.startswith("spec.definition_yaml")


def test_a_stage_without_its_input_needs_one():
    with pytest.raises(InvalidSpec, match="evaluation.dataset_uri"):
        parse("evaluation: {targets: [{name: a, base_url: 'http://x/v1'}]}")
    definition = parse("conversion: {model_uri: /m}\nserving: {name: s}")
    assert definition.order() == ["conversion", "serving"]
