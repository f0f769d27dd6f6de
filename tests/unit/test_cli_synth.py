"""`slmops synth` flags become the SynthesisSpec the service validates.

No server: the parser and `synth_spec` are called directly, and each spec is
checked with the service's own validation.
"""

from __future__ import annotations

import json

import pytest

from slmops.cli.common import render, synth_figures
from slmops.cli.main import build_parser
from slmops.cli.synth_commands import synth_spec
from slmops.core.errors import InvalidSpec
from slmops.synthesis.config import EndpointTeacherConfig, LocalTeacherConfig
from slmops.synthesis.spec import from_proto


@pytest.fixture
def prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "intent": "add"}) + "\n" for i in range(4)))
    return str(path)


def _spec(*flags: str):
    return synth_spec(build_parser().parse_args(["synth", *flags]))


def test_an_endpoint_teacher_with_samples_a_label_and_sampling(prompts):
    spec = _spec("--prompts", prompts, "--teacher-url", "https://api.example.com/v1", "--teacher-model", "big",
                 "--temperature", "0.8", "--top-p", "0.9", "--stop", "\n\n", "--stop", "END", "--seed", "7",
                 "--samples", "3", "--label-column", "intent", "--num-shards", "16", "--price-in", "0.5")  # fmt: skip
    config = from_proto(spec)
    assert isinstance(config.teacher, EndpointTeacherConfig) and config.teacher.model == "big"
    assert (config.samples_per_prompt, config.label_column, config.num_shards, config.seed) == (
        3,
        "intent",
        16,
        7,
    )
    assert (config.sampling.top_p, config.sampling.stop, config.sampling.seed) == (0.9, ["\n\n", "END"], 7)
    assert config.teacher.price_prompt_per_million == 0.5


def test_a_local_teacher_in_batches_with_its_chat_template(prompts, tmp_path):
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    spec = _spec("--prompts", prompts, "--teacher-model-path", str(folder), "--chat", "--batch-size", "4",
                 "--system-prompt", "Be brief.")  # fmt: skip
    config = from_proto(spec)
    assert isinstance(config.teacher, LocalTeacherConfig)
    assert (config.teacher.chat, config.teacher.batch_size, config.system_prompt) == (True, 4, "Be brief.")


def test_one_teacher_is_required_and_bad_values_are_named(prompts):
    with pytest.raises(SystemExit):
        _spec("--prompts", prompts)
    with pytest.raises(SystemExit, match="--teacher-model"):
        _spec("--prompts", prompts, "--teacher-url", "https://api.example.com/v1")
    with pytest.raises(SystemExit, match="--api-key-env, --price-in only apply to an endpoint teacher"):
        _spec("--prompts", prompts, "--teacher-model-path", "org/teacher", "--api-key-env", "X_API_KEY",
              "--price-in", "1")  # fmt: skip
    spec = _spec("--prompts", prompts, "--teacher-url", "https://api.example.com/v1", "--teacher-model", "big",
                 "--samples", "2", "--label-column", "topic")  # fmt: skip
    with pytest.raises(InvalidSpec) as caught:
        from_proto(spec)
    fields = {field for field, _ in caught.value.problems}
    assert {"spec.samples_per_prompt", "spec.label_column"} <= fields  # greedy samples; no such field


def test_the_summary_says_what_a_cancel_left_unasked():
    table = render(
        synth_figures({"num_prompts": 10, "answered": 4, "not_asked": 6, "filtered_empty": 1, "cost": 0.25})
    )
    assert "not asked (cancelled)" in table and "filtered: empty" in table and "0.2500" in table
