"""Engines on a tiny Qwen2 model: transformers on the checkpoint, ORT GenAI on its conversion."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from slmops.core.errors import InvalidSpec
from slmops.predictor.engines import Generation, StopScanner
from slmops.predictor.loading import load_engine
from tests.integration._models import copy_with, tiny_checkpoint, tiny_onnx

PROMPT = "hello world"


@pytest.fixture(scope="module")
def hf_engine(tmp_path_factory):
    return load_engine(tiny_checkpoint(tmp_path_factory))


@pytest.fixture(scope="module")
def ort_engine(tmp_path_factory):
    engine = load_engine(tiny_onnx(tmp_path_factory, "int4"))
    yield engine
    engine.close()


@pytest.fixture(params=["transformers", "ort-genai"])
def engine(request, hf_engine, ort_engine):
    return hf_engine if request.param == "transformers" else ort_engine


def test_load_engine_picks_the_runtime_from_the_folder(hf_engine, ort_engine):
    assert hf_engine.name == "transformers"
    assert ort_engine.name == "ort-genai"
    assert Path(ort_engine.model_dir, "genai_config.json").is_file()


def test_an_onnx_folder_is_served_without_importing_torch(ort_engine):
    code = (
        "import sys; from slmops.predictor.loading import load_engine; "
        f"engine = load_engine({ort_engine.model_dir!r}); engine.generate('hello', max_tokens=2); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_load_engine_rejects_missing_and_foreign_folders(tmp_path):
    with pytest.raises(InvalidSpec, match="is not a folder"):
        load_engine(tmp_path / "absent")
    with pytest.raises(InvalidSpec, match="neither genai_config.json"):
        load_engine(tmp_path)


def test_greedy_generation_is_deterministic_and_honours_max_tokens(engine):
    first = engine.generate(PROMPT, max_tokens=7)
    again = engine.generate(PROMPT, max_tokens=7)
    assert isinstance(first, Generation)
    assert first == again
    assert first.completion_tokens == 7
    assert first.finish_reason == "length"
    assert first.prompt_tokens == len(engine.encode(PROMPT))
    assert first.text


def test_stream_yields_the_same_text_as_generate(engine):
    pieces = engine.stream(PROMPT, max_tokens=9)
    collected = []
    while True:
        try:
            collected.append(next(pieces))
        except StopIteration as done:
            result = done.value
            break
    assert len(collected) > 1
    assert "".join(collected) == result.text == engine.generate(PROMPT, max_tokens=9).text


def test_stop_string_cuts_the_text_and_finishes_with_stop(engine):
    full = engine.generate(PROMPT, max_tokens=12).text
    stop = full[3:6]  # a string the greedy continuation is known to contain
    cut = engine.generate(PROMPT, max_tokens=12, stop=["never-there", stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]
    assert cut.completion_tokens < 12
    assert "".join(engine.stream(PROMPT, max_tokens=12, stop=[stop])) == cut.text


def test_seeded_sampling_is_reproducible(engine):
    one = engine.generate("the", max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    two = engine.generate("the", max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    assert one == two
    assert one.completion_tokens == 8


def test_bad_options_and_overlong_prompts_are_invalid_specs(engine):
    with pytest.raises(InvalidSpec) as bad:
        engine.generate(PROMPT, max_tokens=0, temperature=-1, top_p=0)
    assert [f for f, _ in bad.value.problems] == ["max_tokens", "temperature", "top_p"]
    with pytest.raises(InvalidSpec, match="context holds 128"):
        engine.generate("hello " * 200)


def test_token_budget_is_clamped_to_the_context(engine):
    prompt = "hello " * 20
    used = len(engine.encode(prompt))
    result = engine.generate(prompt, max_tokens=1000)
    assert result.completion_tokens == 128 - used
    assert result.finish_reason == "length"


def test_chat_template_falls_back_to_a_plain_transcript(engine):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert engine.apply_chat_template(messages) == "system: be brief\nuser: hi\nassistant:"
    with pytest.raises(InvalidSpec) as bad:
        engine.apply_chat_template([{"role": "robot", "content": "x"}])
    assert bad.value.field == "messages[0].role"


def test_engines_serialise_concurrent_requests(ort_engine):
    expected = ort_engine.generate(PROMPT, max_tokens=20)
    results: list[Generation] = []

    def call() -> None:
        results.append(ort_engine.generate(PROMPT, max_tokens=20))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _with_template(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = TEMPLATE
    path.write_text(json.dumps(config))


def test_both_engines_render_the_tokenizers_chat_template(tmp_path_factory, tmp_path):
    hf = load_engine(copy_with(tiny_checkpoint(tmp_path_factory), tmp_path / "hf", _with_template))
    ort = load_engine(copy_with(tiny_onnx(tmp_path_factory), tmp_path / "ort", _with_template))
    messages = [{"role": "user", "content": "hi"}]
    expected = "<|user|>hi<|endoftext|><|assistant|>"
    assert hf.apply_chat_template(messages) == expected
    assert ort.apply_chat_template(messages) == expected
    ort.close()


def test_eos_ends_generation_with_stop(tmp_path_factory, tmp_path, hf_engine, ort_engine):
    """Make the greedy first token the EOS id: generation then stops at once."""
    first = ort_engine.encode(ort_engine.generate(PROMPT, max_tokens=1).text)[0]

    def ort_eos(folder: Path) -> None:
        config = json.loads((folder / "genai_config.json").read_text())
        config["model"]["eos_token_id"] = first
        (folder / "genai_config.json").write_text(json.dumps(config))

    ort = load_engine(copy_with(Path(ort_engine.model_dir), tmp_path / "ort", ort_eos))
    result = ort.generate(PROMPT, max_tokens=10)
    ort.close()
    assert result == Generation("", ort_engine.encode(PROMPT).__len__(), 1, "stop")

    hf_first = hf_engine.encode(hf_engine.generate(PROMPT, max_tokens=1).text)[0]

    def hf_eos(folder: Path) -> None:
        config = json.loads((folder / "generation_config.json").read_text())
        config["eos_token_id"] = hf_first
        (folder / "generation_config.json").write_text(json.dumps(config))

    hf = load_engine(copy_with(Path(hf_engine.model_dir), tmp_path / "hf", hf_eos))
    assert hf.generate(PROMPT, max_tokens=10).finish_reason == "stop"
    assert hf.generate(PROMPT, max_tokens=10).completion_tokens == 1


def test_fp32_conversion_matches_transformers_greedy_output(tmp_path_factory, hf_engine):
    ort = load_engine(tiny_onnx(tmp_path_factory, "fp32"))
    for prompt in (PROMPT, "the quick brown", "question: what is"):
        assert ort.generate(prompt, max_tokens=12).text == hf_engine.generate(prompt, max_tokens=12).text
    ort.close()


@pytest.mark.parametrize(
    ("pieces", "stops", "emitted", "stopped"),
    [
        (["ab", "cd", "ef"], [], "abcdef", False),
        (["ab", "c", "d|", "ef"], ["d|"], "abc", True),
        (["hel", "lo wo", "rld"], ["o w", "rl"], "hell", True),
        (["x<", "/", "s>", "y"], ["</s>"], "x", True),
        (["x<", "y"], ["</s>"], "x<y", False),
    ],
)
def test_stop_scanner(pieces, stops, emitted, stopped):
    scanner = StopScanner(stops)
    out, hit = "", False
    for piece in pieces:
        text, hit = scanner.push(piece)
        out += text
        if hit:
            break
    out += scanner.flush()
    assert (out, hit) == (emitted, stopped)
