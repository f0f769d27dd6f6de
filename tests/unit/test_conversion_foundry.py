"""Foundry Local packages of a tiny ORT GenAI folder: layout, PromptTemplate, sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.conversion.foundry import foundry_package, prompt_template, size_report
from slmops.core import chat_template
from slmops.core.errors import AlreadyExists, InvalidSpec
from tests.integration._models import copy_with, tiny_checkpoint, tiny_onnx

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Gemma-like: no system role, the assistant is called "model".
NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
LAST_MESSAGE_ONLY = "{{ messages[-1]['content'] }}"
SYSTEM, USER = "You are terse.", "What is 2 + 3?"
TURNS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
    {"role": "assistant", "content": "5."},
    {"role": "user", "content": "And 4 + 4?"},
]


def _set_template(template: str | None):
    def edit(folder: Path) -> None:
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text())
        config["chat_template"] = template
        path.write_text(json.dumps(config))
        (folder / "adapters").mkdir()
        (folder / "adapters" / "alpha.onnx_adapter").write_bytes(b"\x01adapter weights")
        (folder / "manifest.json").write_text('{"kind": "onnx-model"}')

    return edit


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny int4 folder with a ChatML template, an adapter and an artifact manifest."""
    dest = tmp_path_factory.mktemp("foundry") / "chatml"
    return copy_with(tiny_onnx(tmp_path_factory, "int4"), dest, _set_template(CHATML))


def _fill(template: dict[str, str], messages: list[dict[str, str]]) -> str:
    """Foundry Local's reading: each message in its role's string, the last user one in `prompt`."""
    keys = [m["role"] for m in messages[:-1]] + ["prompt"]
    return "".join(template[k].replace("{Content}", m["content"]) for k, m in zip(keys, messages))


def _descriptor(package: Path) -> dict:
    return json.loads((package / "inference_model.json").read_text(encoding="utf-8"))


def test_package_holds_every_model_file_and_adapters(model, tmp_path):
    import onnxruntime_genai as og

    package = foundry_package(model, tmp_path / "cache", "tiny-chat:1")
    assert package == tmp_path / "cache" / "slmops" / "tiny-chat-1"
    expected = {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}
    expected = (expected - {"manifest.json"}) | {"inference_model.json"}
    assert {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} == expected
    assert "adapters/alpha.onnx_adapter" in expected
    for name in expected - {"inference_model.json"}:
        assert (package / name).read_bytes() == (model / name).read_bytes(), name
    # the ONNX payload is hard-linked, the small JSON files copied
    assert (package / "model.onnx.data").stat().st_ino == (model / "model.onnx.data").stat().st_ino
    assert (package / "genai_config.json").stat().st_ino != (model / "genai_config.json").stat().st_ino
    assert not list(package.parent.glob(".*"))  # no scratch folder left
    og.Model(str(package))  # still a folder ORT GenAI loads


def test_inference_model_json_template_renders_the_predictors_prompt(model, tmp_path):
    descriptor = _descriptor(foundry_package(model, tmp_path, "tiny-chat"))
    assert descriptor["Name"] == "tiny-chat"
    template = descriptor["PromptTemplate"]
    assert set(template) == {"system", "user", "assistant", "prompt"}
    assert all(text.count("{Content}") == 1 for text in template.values())
    assert template["user"] == "<|im_start|>user\n{Content}<|im_end|>\n"
    jinja, config = chat_template.read_template(model)
    for messages in (TURNS[:2], TURNS):
        assert _fill(template, messages) == chat_template.render(jinja, messages, config)


def test_without_a_chat_template_the_fallback_transcript_is_used(tmp_path_factory, tmp_path):
    folder = copy_with(tiny_onnx(tmp_path_factory, "int4"), tmp_path / "plain", _set_template(None))
    template = _descriptor(foundry_package(folder, tmp_path / "out", "plain"))["PromptTemplate"]
    for messages in (TURNS[:2], TURNS):
        assert _fill(template, messages) == chat_template.fallback_prompt(messages)
    assert _fill(template, TURNS[:2]) == f"system: {SYSTEM}\nuser: {USER}\nassistant:"


def test_a_template_without_system_role_gets_no_system_string(tmp_path_factory, tmp_path):
    folder = copy_with(tiny_onnx(tmp_path_factory, "int4"), tmp_path / "g", _set_template(NO_SYSTEM))
    template = prompt_template(folder)
    assert "system" not in template
    jinja, config = chat_template.read_template(folder)
    assert _fill(template, TURNS[1:]) == chat_template.render(jinja, TURNS[1:], config)


def test_refuses_a_template_with_no_content_form_and_bad_names(model, tmp_path_factory, tmp_path):
    folder = tiny_onnx(tmp_path_factory, "int4")
    folder = copy_with(folder, tmp_path / "last", _set_template(LAST_MESSAGE_ONLY))
    with pytest.raises(InvalidSpec) as refused:
        foundry_package(folder, tmp_path / "out", "last")
    assert refused.value.field == "chat_template"
    assert not (tmp_path / "out").exists()
    with pytest.raises(InvalidSpec) as bad:
        foundry_package(model, tmp_path / "out", "no/slashes", publisher="")
    assert [field for field, _ in bad.value.problems] == ["name", "publisher"]
    with pytest.raises(InvalidSpec) as not_genai:
        foundry_package(tiny_checkpoint(tmp_path_factory), tmp_path / "out", "hf")
    assert not_genai.value.field == "model_dir"


def test_an_existing_package_is_replaced_only_when_asked(model, tmp_path):
    first = foundry_package(model, tmp_path, "again")
    (first / "stale.txt").write_text("old")
    with pytest.raises(AlreadyExists):
        foundry_package(model, tmp_path, "again")
    assert foundry_package(model, tmp_path, "again", overwrite=True) == first
    assert not (first / "stale.txt").exists()


def test_size_report_sums_the_files(model, tmp_path_factory):
    source = tiny_checkpoint(tmp_path_factory)
    report = size_report(model, source)
    sizes = {p.relative_to(model).as_posix(): p.stat().st_size for p in model.rglob("*") if p.is_file()}
    del sizes["manifest.json"]
    assert report["files"] == sizes
    assert report["total_bytes"] == sum(sizes.values())
    assert set(report["source_files"]) == {"model.safetensors", "config.json"}
    source_bytes = (source / "model.safetensors").stat().st_size + (source / "config.json").stat().st_size
    assert report["source_bytes"] == source_bytes
    assert report["ratio"] == pytest.approx(report["total_bytes"] / source_bytes)
    assert 0 < report["ratio"] < 1  # int4 is smaller than the fp32 checkpoint
    with pytest.raises(InvalidSpec) as no_weights:
        size_report(model, model)
    assert no_weights.value.field == "source_dir"
