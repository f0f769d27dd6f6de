"""Teachers: the OpenAI-compatible client (retries, keys, log-probabilities) and the local one.

The endpoint teacher talks to `StandinServer`, a local OpenAI-compatible HTTP
server in this process standing in for a remote paid teacher.
"""

from __future__ import annotations

import pytest

from slmops.core.endpoints import resolve_api_key
from slmops.core.errors import InvalidSpec, Unavailable
from slmops.core.spec_checks import SamplingConfig
from slmops.synthesis.config import EndpointTeacherConfig, LocalTeacherConfig
from slmops.synthesis.teacher import EndpointTeacher, LocalTeacher, backoff_delay
from slmops.synthesis.token_table import TokenTable, load_token_table
from slmops.testing.standin import StandinServer


def _teacher(server, sampling=None, **overrides) -> EndpointTeacher:
    config = EndpointTeacherConfig(**{"base_url": server.base_url, "model": "t", "backoff_s": 0.001,
                                      "max_attempts": 3, **overrides})  # fmt: skip
    return EndpointTeacher(config, sampling or SamplingConfig(max_tokens=8), threads=2)


def test_completions_and_top_logprobs(standin):
    results = _teacher(standin, SamplingConfig(max_tokens=8, top_logprobs=3)).generate(["12+30=", "3*4="])
    assert [r["completion"] for r in results] == ["42", "12"]
    assert results[0]["finish_reason"] == "stop" and results[0]["completion_tokens"] == 2
    # Without the teacher's tokenizer: strings and log-probabilities, no ids.
    assert results[0]["top_logprobs"] == {
        "token_ids": None,
        "tokens": ["4", "2"],
        "top_ids": None,
        "top_tokens": [["4", "0", "1"], ["2", "0", "1"]],
        "top_logprobs": [[-0.01, -4.0, -5.0], [-0.01, -4.0, -5.0]],
    }
    assert "vocab_size" not in results[0] and "unmapped_tokens" not in results[0]
    assert standin.requests[0]["body"]["logprobs"] == 3


def test_chat_with_system_prompt_and_top_logprobs(standin):
    teacher = EndpointTeacher(
        EndpointTeacherConfig(base_url=standin.base_url, model="t", chat=True),
        SamplingConfig(max_tokens=1, top_logprobs=2, stop=["\n"]),
        system_prompt="Answer with a number.",
    )
    [result] = teacher.generate(["20+22="])
    assert result["completion"] == "4" and result["finish_reason"] == "length"
    assert result["top_logprobs"] == {
        "token_ids": None,
        "tokens": ["4"],
        "top_ids": None,
        "top_tokens": [["4", "0"]],
        "top_logprobs": [[-0.01, -4.0]],
    }
    body = standin.requests[-1]["body"]
    assert body["messages"][0] == {"role": "system", "content": "Answer with a number."}
    assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["stop"] == ["\n"]


def test_429_500_502_503_504_are_retried(standin):
    for status in (503, 429, 500, 502, 504):
        standin.fail_next(1, status)
    [result] = _teacher(standin, max_attempts=6).generate(["1+1="])
    assert result["completion"] == "2" and result["attempts"] == 6
    assert [r["status"] for r in standin.requests] == [503, 429, 500, 502, 504, 200]
    assert result["prompt_tokens"] == 4 and result["completion_tokens"] == 1  # the stand-in's usage


def test_retries_are_bounded_and_other_errors_fail_fast(standin):
    standin.fail_next(10, 503)
    [result] = _teacher(standin).generate(["1+1="])
    assert "error" in result and "503" in result["error"]
    assert len(standin.requests) == 3 and result["attempts"] == 3 and result["status"] == 503

    standin._failures.clear()
    standin.requests.clear()
    standin.fail_next(1, 400)
    [result] = _teacher(standin).generate(["1+1="])
    assert "400" in result["error"] and len(standin.requests) == 1


def test_connection_errors_are_retried_then_reported():
    config = EndpointTeacherConfig(
        base_url="http://127.0.0.1:9/v1", model="t", backoff_s=0.001, max_attempts=2
    )
    [result] = EndpointTeacher(config, SamplingConfig()).generate(["x"])
    assert result["error"].startswith("APIConnectionError") and "127.0.0.1:9" in result["error"]


def test_api_key_comes_from_the_named_variable(standin, monkeypatch):
    monkeypatch.setenv("TEST_TEACHER_API_KEY", "secret-value")
    _teacher(standin, api_key_env="TEST_TEACHER_API_KEY").generate(["1+1="])
    assert standin.requests[-1]["authorization"] == "Bearer secret-value"
    monkeypatch.delenv("TEST_TEACHER_API_KEY")
    with pytest.raises(Unavailable, match="TEST_TEACHER_API_KEY"):
        resolve_api_key("TEST_TEACHER_API_KEY", standin.base_url)
    assert resolve_api_key("", "https://api.example.com/v1") == "none"


def test_backoff_grows_and_is_bounded():
    delays = [backoff_delay(n, 0.5, 4.0) for n in range(8)]
    assert 0.25 <= delays[0] <= 0.5 and 1.0 <= delays[2] <= 2.0
    assert max(delays) <= 4.0 and delays[-1] == pytest.approx(4.0)


# -- token ids from an endpoint's token text -------------------------------

SAY = "say "  # the echo stand-in answers what follows this


def _echo(model: str, prompt: str) -> str:
    return prompt.split(SAY, 1)[1]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer whose vocabulary has multi-byte UTF-8 tokens (é, été)."""
    from slmops.testing.tiny import train_tokenizer

    texts = [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)] + ["café été né"] * 50
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tok", vocab_size=300)


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def echo_server(tokenizer_dir):
    with StandinServer(_echo, tokenizer=str(tokenizer_dir)) as s:
        yield s


def test_every_id_of_a_byte_level_vocabulary_round_trips(hf_tokenizer):
    table = TokenTable(hf_tokenizer)
    assert table.kind == "byte_level" and table.vocab_size == len(hf_tokenizer)
    multi_byte = 0
    for token_id in range(len(hf_tokenizer)):
        data = table.bytes_of(token_id)
        text = hf_tokenizer.decode([token_id])
        if "\ufffd" in text:  # a token cut inside a character: only its bytes name it
            assert table.id_of(text) is None and table.id_of(text, list(data)) == token_id
            continue
        assert data == text.encode()  # the table's bytes are the tokenizer's own text
        assert table.id_of(text) == token_id and table.id_of(text, data) == token_id
        multi_byte += any(b >= 0x80 for b in data)
    assert multi_byte and table.id_of("é") == hf_tokenizer.convert_tokens_to_ids("Ã©")
    assert table.id_of("token_id:7") == 7 and table.id_of("token_id:99999") is None
    assert table.id_of("no such token") is None


class _FakeTokenizer:
    """Just enough of a transformers tokenizer for TokenTable."""

    def __init__(self, vocab: dict[str, int], added: dict[int, str]):
        from types import SimpleNamespace

        self.vocab = vocab
        self.added_tokens_decoder = {i: SimpleNamespace(content=t) for i, t in added.items()}

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)


def test_sentencepiece_vocabularies_and_unknown_kinds():
    vocab = {"<s>": 0, "<0x41>": 1, "<0xE6>": 2, "A": 3, "▁the": 4, "▁": 5, "<0x20>": 6}
    table = TokenTable(_FakeTokenizer(vocab, {0: "<s>"}))
    assert table.kind == "sentencepiece"
    assert table.id_of(" the") == 4 and table.id_of("<s>") == 0
    assert table.id_of("A") == 3 and table.id_of(" ") == 5  # a piece wins over a byte token
    assert table.id_of("\ufffd", [0xE6]) == 2
    # A byte-level vocabulary holding U+FFFD's own bytes: the text alone is ambiguous
    # (a token cut inside a character shows as U+FFFD too); its bytes are not.
    table = TokenTable(_FakeTokenizer({"Ġ": 0, "ï¿½": 1, "æ": 2}, {}))
    assert table.kind == "byte_level"
    assert table.id_of("\ufffd") is None and table.id_of("\ufffd", list("\ufffd".encode())) == 1
    with pytest.raises(ValueError, match="neither byte-level BPE nor SentencePiece"):
        TokenTable(_FakeTokenizer({"[CLS]": 0, "play": 1, "##ing": 2}, {0: "[CLS]"}))


@pytest.mark.parametrize("chat", [True, False])
def test_endpoint_tokens_get_the_ids_of_the_teachers_tokenizer(
    echo_server, tokenizer_dir, hf_tokenizer, chat
):
    config = EndpointTeacherConfig(
        base_url=echo_server.base_url, model="t", chat=chat, tokenizer=f"file://{tokenizer_dir}"
    )
    teacher = EndpointTeacher(config, SamplingConfig(max_tokens=32, top_logprobs=3))
    [result] = teacher.generate([SAY + "1+2=3 café été"])
    top = result["top_logprobs"]
    ids = hf_tokenizer.encode("1+2=3 café été", add_special_tokens=False)
    assert any(b >= 0x80 for i in ids for b in teacher.table.bytes_of(i))  # multi-byte tokens
    assert top["token_ids"] == ids and hf_tokenizer.decode(ids) == result["completion"]
    assert top["tokens"] == [hf_tokenizer.decode([i]) for i in ids]
    assert [row[0] for row in top["top_ids"]] == ids  # the stand-in's top-1 is the answer's token
    assert top["top_tokens"] == [[hf_tokenizer.decode([i]) for i in row] for row in top["top_ids"]]
    assert all(len(row) == 3 and row == sorted(row, reverse=True) for row in top["top_logprobs"])
    assert result["vocab_size"] == len(hf_tokenizer) and result["unmapped_tokens"] == 0


def test_a_token_that_cannot_be_mapped_leaves_the_record_without_ids(echo_server, tokenizer_dir):
    # 日 is three byte tokens; without their bytes (completions give only text, shown as U+FFFD)
    # no id can be known, so the record keeps its strings and loses every id.
    config = EndpointTeacherConfig(
        base_url=echo_server.base_url, model="t", tokenizer=f"file://{tokenizer_dir}"
    )
    teacher = EndpointTeacher(config, SamplingConfig(max_tokens=32, top_logprobs=2))
    [result] = teacher.generate([SAY + "4日"])
    top = result["top_logprobs"]
    assert top["token_ids"] is None and top["top_ids"] is None
    assert top["tokens"][0] == "4" and len(top["tokens"]) == 4 and len(top["top_logprobs"]) == 4
    # Three chosen tokens, and each again as the first of its position's top-2.
    assert result["unmapped_tokens"] == 6 and "vocab_size" not in result
    # The same answer through chat carries the bytes: every id is known.
    chat = EndpointTeacher(config.model_copy(update={"chat": True}), teacher.sampling)
    [result] = chat.generate([SAY + "4日"])
    assert result["top_logprobs"]["token_ids"] is not None and result["unmapped_tokens"] == 0


def test_a_tokenizer_that_cannot_be_loaded_is_an_invalid_spec(tmp_path):
    with pytest.raises(InvalidSpec) as info:
        load_token_table(f"file://{tmp_path}")
    assert info.value.field == "spec.endpoint.tokenizer"
    assert "cannot be loaded" in str(info.value)


# -- the local teacher ------------------------------------------------------

PROMPT, ANSWER = "1+2=", "3;4"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny Qwen2 fitted to answer PROMPT with ANSWER then EOS, so greedy decoding is known."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmops.testing.tiny import build_model, train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tok_dir = train_tokenizer(
        [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)], root / "tok", vocab_size=270
    )
    folder = build_model(root / "model", tok_dir, hidden_size=32, num_hidden_layers=1, seed=0)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok.encode(PROMPT) + tok.encode(ANSWER) + [tok.eos_token_id]
    batch = torch.tensor([ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        model(batch, labels=batch).loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    return folder


def _check_against_forward_pass(folder, top):
    """Each position's top-k are the k largest of log_softmax(the model's logits) there."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt_ids = tok.encode(PROMPT)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + top["token_ids"]])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)[len(prompt_ids) - 1 : -1]
    assert len(logprobs) == len(top["top_ids"]) == len(top["top_logprobs"])
    k = len(top["top_ids"][0])
    for row, ids, values in zip(logprobs, top["top_ids"], top["top_logprobs"]):
        assert torch.allclose(row[ids], torch.tensor(values), atol=1e-4)
        assert torch.allclose(row.topk(k).values, torch.tensor(values), atol=1e-4)
    assert top["tokens"] == tok.batch_decode([[i] for i in top["token_ids"]])
    assert top["top_tokens"] == [tok.batch_decode([[i] for i in row]) for row in top["top_ids"]]


def test_local_teacher_stores_ids_and_the_eos_position(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    sampling = SamplingConfig(max_tokens=8, top_logprobs=3)
    teacher = LocalTeacher(LocalTeacherConfig(model=f"file://{tiny_model}"), sampling)
    first, second = teacher.generate([PROMPT, PROMPT])
    assert first == second  # greedy is deterministic
    assert first["completion"] == ANSWER and first["finish_reason"] == "stop"
    top = first["top_logprobs"]
    # One position per completion token, plus the EOS that ended it.
    assert len(top["token_ids"]) == first["completion_tokens"] + 1
    assert top["token_ids"][-1] == tok.eos_token_id and top["top_ids"][-1][0] == tok.eos_token_id
    assert tok.decode(top["token_ids"], skip_special_tokens=True) == ANSWER
    assert first["vocab_size"] == len(tok)
    _check_against_forward_pass(tiny_model, top)


def test_local_teacher_logprobs_are_raw_and_a_stop_string_cuts_the_tokens(tiny_model):
    # Sampling with temperature and top-p: stored log-probabilities are still the raw
    # model's (generate's scores would be scaled and masked).
    sampling = SamplingConfig(max_tokens=8, top_logprobs=4, temperature=2.0, top_p=0.5, seed=1)
    teacher = LocalTeacher(LocalTeacherConfig(model=f"file://{tiny_model}"), sampling)
    [result] = teacher.generate([PROMPT])
    _check_against_forward_pass(tiny_model, result["top_logprobs"])

    stop = SamplingConfig(max_tokens=8, top_logprobs=2, stop=[";"])
    teacher = LocalTeacher(LocalTeacherConfig(model=f"file://{tiny_model}"), stop)
    [result] = teacher.generate([PROMPT])
    assert result["completion"] == "3" and result["finish_reason"] == "stop"
    top = result["top_logprobs"]
    assert result["completion_tokens"] == len(top["token_ids"]) == 1  # no EOS: the stop cut first
    _check_against_forward_pass(tiny_model, top)


def _same_answer(batched, alone):
    """Equal answers: text, ids and finish exactly, log-probabilities to float noise."""
    assert {k: v for k, v in batched.items() if k != "top_logprobs"} == {
        k: v for k, v in alone.items() if k != "top_logprobs"
    }
    top, single = batched["top_logprobs"], alone["top_logprobs"]
    assert {k: v for k, v in top.items() if k != "top_logprobs"} == {
        k: v for k, v in single.items() if k != "top_logprobs"
    }
    for row, expected in zip(top["top_logprobs"], single["top_logprobs"]):
        assert row == pytest.approx(expected, abs=1e-4)


def test_local_teacher_batches_prompts_of_different_lengths_like_one_at_a_time(tiny_model):
    from transformers import AutoTokenizer

    prompts = ["13+17=", PROMPT, "5+5=", "19+18=", PROMPT]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert len({len(tok.encode(p)) for p in prompts[:3]}) > 1  # the first batch is left padded
    sampling = SamplingConfig(max_tokens=6, top_logprobs=3)
    config = LocalTeacherConfig(model=f"file://{tiny_model}", batch_size=3)
    batched = LocalTeacher(config, sampling).generate(prompts)
    alone = LocalTeacher(config.model_copy(update={"batch_size": 1}), sampling)
    assert len(batched) == len(prompts)
    for prompt, result in zip(prompts, batched):
        [expected] = alone.generate([prompt])
        _same_answer(result, expected)
        assert "samples" not in result  # one answer per prompt
    assert batched[1]["completion"] == batched[4]["completion"] == ANSWER
    _check_against_forward_pass(tiny_model, batched[1]["top_logprobs"])
    # Rows of a batch end on EOS at different steps: the shorter ones go on as padding.
    assert len({r["completion_tokens"] for r in batched[:3]}) > 1


def test_local_teacher_gives_several_samples_per_prompt(tiny_model):
    sampling = SamplingConfig(max_tokens=6, top_logprobs=2, temperature=1.0, seed=3)
    config = LocalTeacherConfig(model=f"file://{tiny_model}", batch_size=2)
    teacher = LocalTeacher(config, sampling, samples=3)
    results = teacher.generate(["13+17=", PROMPT, "5+5="])
    assert results == teacher.generate(["13+17=", PROMPT, "5+5="])  # the seed fixes the draws
    for result in results:
        answers = result["samples"]
        assert len(answers) == 3
        assert result["completion_tokens"] == sum(a["completion_tokens"] for a in answers)
        first = {k: v for k, v in answers[0].items() if k != "completion_tokens"}
        assert {k: v for k, v in result.items() if k not in ("completion_tokens", "samples")} == first
        for answer in answers:
            top = answer["top_logprobs"]
            on_eos = answer["finish_reason"] == "stop"  # no stop strings: stop means EOS
            assert len(top["token_ids"]) == answer["completion_tokens"] + on_eos
            assert answer["vocab_size"] == result["vocab_size"]
    # The second prompt's answers are rows 3 to 5 of the first batch: each its own logits.
    for answer in results[1]["samples"]:
        _check_against_forward_pass(tiny_model, answer["top_logprobs"])


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture
def chat_model(tiny_model, tmp_path):
    """The tiny model with a chat template."""
    import json
    import shutil

    folder = shutil.copytree(tiny_model, tmp_path / "chat")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return folder


def test_local_teacher_renders_prompts_through_the_chat_template(chat_model):
    sampling = SamplingConfig(max_tokens=5, top_logprobs=2)
    plain = LocalTeacher(LocalTeacherConfig(model=f"file://{chat_model}"), sampling)
    chat_config = LocalTeacherConfig(model=f"file://{chat_model}", chat=True)
    with_system = LocalTeacher(chat_config, sampling, system_prompt="Add.")
    without = LocalTeacher(chat_config, sampling)
    assert with_system.generate([PROMPT, "5+5="]) == plain.generate(
        [f"system: Add.\nuser: {PROMPT}\nassistant: ", "system: Add.\nuser: 5+5=\nassistant: "]
    )
    assert without.generate([PROMPT]) == plain.generate([f"user: {PROMPT}\nassistant: "])
    assert with_system.generate([PROMPT]) != without.generate([PROMPT])


def test_local_teacher_stops_at_every_eos_id_its_generation_config_lists(tiny_model, tmp_path):
    """A chat checkpoint lists its end-of-turn token among generation_config's eos ids: the answer ends there."""
    import json
    import shutil

    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_model, tmp_path / "turns")
    tok = AutoTokenizer.from_pretrained(folder)
    answer_ids = tok.encode(ANSWER)
    end_of_turn = answer_ids[-1]  # stands in for <|im_end|>: the model writes it where the answer ends
    config_file = folder / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config_file.write_text(json.dumps({**config, "eos_token_id": [tok.eos_token_id, end_of_turn]}))
    sampling = SamplingConfig(max_tokens=8, top_logprobs=2)
    result = LocalTeacher(LocalTeacherConfig(model=f"file://{folder}"), sampling).generate([PROMPT])[0]
    assert result["finish_reason"] == "stop"
    assert result["completion"] == tok.decode(answer_ids[:-1], skip_special_tokens=True)
    assert result["top_logprobs"]["token_ids"] == answer_ids  # the answer's tokens, then the id that ended it


def test_local_chat_without_a_chat_template_is_an_invalid_spec(tiny_model):
    config = LocalTeacherConfig(model=f"file://{tiny_model}", chat=True)
    with pytest.raises(InvalidSpec) as info:
        LocalTeacher(config, SamplingConfig(max_tokens=4))
    assert info.value.field == "spec.local.chat" and "no chat template" in str(info.value)
