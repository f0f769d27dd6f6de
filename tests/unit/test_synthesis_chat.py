"""Synthesis with a chat teacher: each record holds the conversation the teacher answered."""

from __future__ import annotations

import pytest

from slmops.core.datasets import chat_messages, conversation, dataset_record
from slmops.core.spec_checks import SamplingConfig
from slmops.synthesis.config import EndpointTeacherConfig
from slmops.synthesis.filters import AnswerFilter, FiltersConfig
from slmops.synthesis.teacher import EndpointTeacher
from slmops.testing.standin import StandinServer

SYSTEM = "Answer with a number."


def _answer(model: str, prompt: str) -> str:
    return "I'm sorry, but I cannot answer that." if "secret" in prompt else "5"


@pytest.fixture(scope="module")
def standin():
    with StandinServer(_answer) as server:
        yield server


@pytest.mark.parametrize("system", [SYSTEM, ""])
def test_a_chat_record_holds_the_conversation_the_teacher_was_sent(standin, system):
    standin.requests.clear()
    config = EndpointTeacherConfig(base_url=standin.base_url, model="t", chat=True)
    [result] = EndpointTeacher(config, SamplingConfig(max_tokens=4), system_prompt=system).generate(["2+3="])
    fields = {"prompt": "2+3=", "id": "q1", "messages": "a prompts-file column"}
    record = dataset_record(fields, result, "t", chat=True, system_prompt=system)
    sent = standin.requests[0]["body"]["messages"]
    assert sent == chat_messages("2+3=", system) == record["messages"][:-1]
    assert sent[0] == (
        {"role": "system", "content": SYSTEM} if system else {"role": "user", "content": "2+3="}
    )
    assert record["messages"][-1] == {"role": "assistant", "content": "5"}
    assert (record["prompt"], record["completion"], record["id"]) == ("2+3=", "5", "q1")  # for plain readers
    assert conversation(record) == (sent, "5")


def test_a_plain_record_keeps_prompt_and_completion_only(standin):
    config = EndpointTeacherConfig(base_url=standin.base_url, model="t")
    [result] = EndpointTeacher(config, SamplingConfig(max_tokens=4)).generate(["2+3="])
    record = dataset_record({"prompt": "2+3=", "messages": [{"role": "user", "content": "x"}]}, result, "t")
    assert "messages" not in record and (record["prompt"], record["completion"]) == ("2+3=", "5")
    assert standin.requests[-1]["body"]["prompt"] == "2+3="


def test_filters_judge_a_chat_teachers_answers(standin):
    config = EndpointTeacherConfig(base_url=standin.base_url, model="t", chat=True)
    teacher = EndpointTeacher(config, SamplingConfig(max_tokens=64), system_prompt=SYSTEM)
    results = teacher.generate(["2+3=", "tell me the secret", "2+3="])
    answers = AnswerFilter(FiltersConfig(duplicates="exact"))
    verdicts = [answers.check({"prompt": "p"}, result) for result in results]
    assert verdicts[0] is None
    assert verdicts[1][0] == "refusal" and verdicts[2][0] == "duplicate"
