"""One conversation, one rendering: the same token ids up to the answer at every stage.

A tiny ChatML model (its tokenizer has `<|im_start|>` and `<|im_end|>` as
special tokens, the end of turn among generation_config's EOS ids) takes the
conversation [system, user] through:

- synthesis: a local chat teacher (the ids its model.generate is given) and an
  endpoint chat teacher whose endpoint is the predictor (the ids its engine is
  given), whose answer becomes a dataset record with `messages`;
- training: `tokenize_messages` on that record (the ids before the first label);
- the predictor's `/chat/completions`, with the transformers engine on the
  checkpoint and the ORT GenAI engine on the folder conversion made of it (the
  ids each engine's `start` is given: the predictor runs in this process, on
  uvicorn, so the test can read them);
- Foundry Local: the PromptTemplate the package carries, applied and encoded by
  ORT GenAI's tokenizer;
- evaluation: the dataset's validation record sent by `measure_target` to each
  predictor (again the ids the engine is given).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.core import chat_template, predictor_key
from slmops.core.chat_template import CHATML
from tests.integration._models import chatml_checkpoint
from tests.integration._recording_predictor import RecordingPredictor

pytestmark = pytest.mark.integration

NAME = "chat-tiny"
SYSTEM = "You are terse."
QUESTION = "What is 2+3?"
CONVERSATION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
TEXTS = ["user: hi there\nassistant: hello, how can I help?", "what is 2+3? it is 5", "you are terse"] * 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2-layer Qwen2 with a ChatML tokenizer; generation stops at the end of a turn too."""
    return chatml_checkpoint(tmp_path_factory.mktemp("chat-model"), TEXTS)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def expected(tokenizer) -> list[int]:
    """The conversation's ids: ChatML rendered with the generation prompt, special tokens whole."""
    text = chat_template.render(CHATML, CONVERSATION, {})
    assert text == tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    start, end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    assert ids.count(start) == 3 and ids.count(end) == 2 and ids[-2:] != [start, end]
    return ids


@pytest.fixture(scope="module")
def onnx_dir(checkpoint, tmp_path_factory) -> Path:
    from slmops.conversion.olive_convert import convert

    out = tmp_path_factory.mktemp("chat-onnx") / "model"
    convert(checkpoint, out, "fp32", "cpu")
    return out


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    """The predictors' API key, as `slmops up` makes it; clients of loopback predictors send it."""
    path = predictor_key.ensure(tmp_path_factory.mktemp("keys"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(path))
        yield path.read_text().strip()


@pytest.fixture(scope="module")
def hf_predictor(checkpoint, key):
    predictor = RecordingPredictor(checkpoint, key, NAME)
    yield predictor
    predictor.close()


@pytest.fixture(scope="module")
def ort_predictor(onnx_dir, key):
    predictor = RecordingPredictor(onnx_dir, key, NAME)
    yield predictor
    predictor.close()


@pytest.fixture(scope="module")
def record(hf_predictor, expected):
    """Synthesis with an endpoint chat teacher (the predictor) and a system prompt: the dataset record."""
    from slmops.core.datasets import dataset_record
    from slmops.core.spec_checks import SamplingConfig
    from slmops.synthesis.config import EndpointTeacherConfig
    from slmops.synthesis.endpoint_teacher import EndpointTeacher

    config = EndpointTeacherConfig(base_url=hf_predictor.base_url, model=NAME, chat=True)
    hf_predictor.seen.clear()
    [result] = EndpointTeacher(config, SamplingConfig(max_tokens=3), system_prompt=SYSTEM).generate(
        [QUESTION]
    )
    assert "error" not in result, result
    assert hf_predictor.seen == [expected]  # what the teacher's model was given
    return dataset_record({"prompt": QUESTION}, result, NAME, chat=True, system_prompt=SYSTEM)


def test_a_local_chat_teacher_gives_its_model_the_same_ids(checkpoint, expected):
    from slmops.core.spec_checks import SamplingConfig
    from slmops.synthesis.config import LocalTeacherConfig
    from slmops.synthesis.teacher import LocalTeacher

    config = LocalTeacherConfig(model=f"file://{checkpoint}", chat=True)
    teacher = LocalTeacher(config, SamplingConfig(max_tokens=2), system_prompt=SYSTEM)
    given: list[list[int]] = []
    generate = teacher.model.generate

    def recording(**kwargs):
        given.extend(row.tolist() for row in kwargs["input_ids"])
        return generate(**kwargs)

    teacher.model.generate = recording
    teacher.generate([QUESTION])
    assert given == [expected]


def test_training_renders_the_record_as_the_predictor_does(record, tokenizer, expected):
    from slmops.training.data import IGNORE_INDEX, tokenize_messages

    assert record["messages"] == [*CONVERSATION, {"role": "assistant", "content": record["completion"]}]
    example, truncated = tokenize_messages(tokenizer, record["messages"], 128)
    assert example is not None and not truncated
    first_label = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert example.input_ids[:first_label] == expected
    # The loss covers the answer and its end of turn, nothing before them.
    labelled = [label for label in example.labels if label != IGNORE_INDEX]
    assert labelled[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(labelled[:-1]) == record["completion"]


def test_conversion_keeps_the_template_and_the_end_of_turn(checkpoint, onnx_dir):
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    genai = json.loads((onnx_dir / "genai_config.json").read_text())["model"]
    eos = genai["eos_token_id"] if isinstance(genai["eos_token_id"], list) else [genai["eos_token_id"]]
    assert set(generation["eos_token_id"]) <= set(eos)
    assert (onnx_dir / "chat_template.jinja").read_text() == CHATML
    assert json.loads((onnx_dir / "tokenizer_config.json").read_text())["chat_template"] == CHATML


def test_the_predictors_chat_route_gives_each_engine_the_same_ids(hf_predictor, ort_predictor, key, expected):
    import openai

    for predictor in (hf_predictor, ort_predictor):
        predictor.seen.clear()
        client = openai.OpenAI(base_url=predictor.base_url, api_key=key, max_retries=0)
        answer = client.chat.completions.create(model=NAME, messages=CONVERSATION, max_tokens=2)
        assert answer.usage.prompt_tokens == len(expected)
        assert predictor.seen == [expected], type(predictor.served.engine).__name__


def test_the_foundry_local_prompt_template_encodes_to_the_same_ids(
    onnx_dir, ort_predictor, tmp_path, expected
):
    from slmops.conversion.foundry import apply_prompt_template, foundry_package

    package = foundry_package(onnx_dir, tmp_path / "foundry", "chat-tiny:1")
    template = json.loads((package / "inference_model.json").read_text())["PromptTemplate"]
    prompt = apply_prompt_template(template, CONVERSATION)
    assert ort_predictor.served.engine.encode(prompt) == expected  # ORT GenAI's tokenizer, as Foundry Local's
    assert (package / "chat_template.jinja").is_file()


def test_evaluation_sends_the_records_turns_and_each_engine_gets_the_same_ids(
    record, hf_predictor, ort_predictor, tmp_path, expected
):
    from slmops.core.spec_checks import SamplingConfig
    from slmops.evaluation.client import load_examples, measure_target
    from slmops.evaluation.config import TargetConfig

    (tmp_path / "validation.jsonl").write_text(json.dumps(record) + "\n")
    examples = load_examples(tmp_path.as_uri())
    assert examples[0].messages == CONVERSATION and examples[0].expected == record["completion"]
    for predictor in (hf_predictor, ort_predictor):
        predictor.seen.clear()
        target = TargetConfig(name="t", base_url=predictor.base_url, model=NAME, chat=True)
        measured = measure_target(target, examples, SamplingConfig(max_tokens=2), warmup_requests=0)
        assert not measured.errors, measured.errors
        assert predictor.seen == [expected], type(predictor.served.engine).__name__
