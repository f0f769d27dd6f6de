"""Training on chat records: the chat template renders `messages`, each answer's prompt is what a chat
server sends, the loss covers the assistant turns and their end of turn, and the checkpoint keeps the
template and stops at its end-of-turn token."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from slmops.api.v1 import training_pb2 as pb
from slmops.core import artifacts
from slmops.core.chat_template import CHATML, SHIPPED_TOKENS, read_template, render
from slmops.core.errors import InvalidSpec
from slmops.testing.tiny import build_model, train_tokenizer
from slmops.training import chat, data, model_init
from slmops.training.config import ModelInitConfig
from tests.unit._training_spec_env import _problems, _spec, _write, build_root

CORPUS = ["hello world, how are you? fine thanks", "system user assistant: be brief", "2+3=5 7+7=14"]
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "world"},
    {"role": "user", "content": "how are you?"},
    {"role": "assistant", "content": "fine, thanks"},
]
IM_END, IM_START = SHIPPED_TOKENS["chatml"]


def _qwen_template() -> str:
    """Qwen2.5-Instruct's own chat template, as TRL ships it."""
    return (resources.files("trl") / "chat_templates" / "qwen2_5.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A tiny tokenizer with no chat template and no ChatML tokens."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(train_tokenizer(CORPUS, tmp_path_factory.mktemp("tok"), 300))


@pytest.fixture()
def chatml(plain):
    tok = plain.__class__.from_pretrained(plain.name_or_path)
    assert chat.apply(tok, "chatml") == [IM_END, IM_START]
    return tok


def _config(tok) -> dict:
    return {"bos_token": tok.bos_token, "eos_token": tok.eos_token}


def _labelled(example) -> list[int]:
    return [t for t, label in zip(example.input_ids, example.labels) if label != data.IGNORE_INDEX]


# -- tokenize_messages ----------------------------------------------------------------


def test_each_answers_prompt_is_what_a_chat_server_sends(chatml):
    example, truncated = data.tokenize_messages(chatml, CONVERSATION, 512)
    assert not truncated and len(example.input_ids) == len(example.labels)
    for turn in (2, 4):  # every assistant turn: its prompt ids are the rendering before it, tokenized
        prompt = render(CHATML, CONVERSATION[:turn], _config(chatml))
        prompt_ids = chatml(prompt, add_special_tokens=False)["input_ids"]
        assert example.input_ids[: len(prompt_ids)] == prompt_ids
        assert example.labels[len(prompt_ids) - 1] == data.IGNORE_INDEX
        assert example.labels[len(prompt_ids)] != data.IGNORE_INDEX  # the answer starts here
    # The whole sequence is the rendered conversation.
    full = render(CHATML, CONVERSATION, _config(chatml), add_generation_prompt=False)
    assert chatml.decode(example.input_ids) == full
    # Labels: both answers, each with its end-of-turn token; never the newline after it.
    im_end = chatml.convert_tokens_to_ids(IM_END)
    assert chatml.decode(_labelled(example)) == f"world{IM_END}fine, thanks{IM_END}"
    assert _labelled(example).count(im_end) == 2
    assert example.input_ids[-1] != im_end and example.labels[-1] == data.IGNORE_INDEX


def test_labels_all_covers_every_token(chatml):
    example, _ = data.tokenize_messages(chatml, CONVERSATION, 512, labels=data.Labels.ALL)
    assert example.labels == example.input_ids


def test_the_renderer_agrees_with_transformers_on_a_real_template(plain):
    tok = plain.__class__.from_pretrained(plain.name_or_path)
    tok.add_special_tokens({"additional_special_tokens": [IM_END, IM_START]})
    tok.chat_template = _qwen_template()
    for turns in (CONVERSATION[1:2], CONVERSATION[:2], CONVERSATION[:4], CONVERSATION):
        for generation in (True, False):
            expected = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation)
            assert (
                render(tok.chat_template, turns, _config(tok), add_generation_prompt=generation) == expected
            )
    # Qwen's template adds its default system turn when a record has none; the prompt ids still match.
    turns = CONVERSATION[1:3]
    example, _ = data.tokenize_messages(tok, turns, 512)
    encoded = tok.apply_chat_template(turns[:1], tokenize=True, add_generation_prompt=True, return_dict=True)
    prompt_ids = list(encoded["input_ids"])
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode(_labelled(example)) == f"world{IM_END}"
    assert chat.end_of_turn_id(tok) == tok.convert_tokens_to_ids(IM_END)


def test_a_template_that_is_not_prefix_stable_is_refused(chatml):
    chatml.chat_template = "{{ messages | length }}" + CHATML  # the turn count changes every earlier turn
    with pytest.raises(InvalidSpec) as info:
        data.tokenize_messages(chatml, CONVERSATION, 512)
    assert info.value.field == "spec.chat_template"
    assert "prefix-stable" in str(info.value)


def test_a_tokenizer_without_a_template_asks_for_one(plain):
    with pytest.raises(InvalidSpec) as info:
        data.tokenize_messages(plain, CONVERSATION, 512)
    assert info.value.field == "spec.chat_template" and "chatml" in str(info.value)


def test_long_conversations_are_truncated_and_a_full_prompt_dropped(chatml):
    whole, _ = data.tokenize_messages(chatml, CONVERSATION, 512)
    first_prompt = len(chatml(render(CHATML, CONVERSATION[:2], _config(chatml)))["input_ids"])
    cut, truncated = data.tokenize_messages(chatml, CONVERSATION, first_prompt + 2)
    assert truncated and cut.input_ids == whole.input_ids[: first_prompt + 2]
    assert cut.labels == whole.labels[: first_prompt + 2]
    assert data.tokenize_messages(chatml, CONVERSATION, first_prompt) == (None, False)
    assert data.tokenize_messages(chatml, CONVERSATION[:2], 512) == (None, False)  # no answer at all


def test_teacher_ids_replace_the_final_answer_and_carry_their_top_k(chatml):
    turns = CONVERSATION[:3]
    im_end = chatml.convert_tokens_to_ids(IM_END)
    ids = chatml("world", add_special_tokens=False)["input_ids"]
    teacher = [*reversed(ids), im_end]  # other ids than re-tokenizing gives, ending with the teacher's end
    top = {
        "token_ids": teacher,
        "top_ids": [[t, 7] for t in teacher],
        "top_logprobs": [[-0.1 * (n + 1), -3.0] for n in range(len(teacher))],
    }
    example, _ = data.tokenize_messages(chatml, turns, 512, top=top)
    prompt_ids = chatml(render(CHATML, turns[:2], _config(chatml)), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    answer = teacher[:-1]  # the template writes the end of turn: the teacher's own is dropped
    assert example.input_ids[:n] == prompt_ids
    assert example.input_ids[n : n + len(answer)] == answer
    assert example.input_ids[n + len(answer)] == im_end
    assert example.top_ids[n : n + len(answer)] == top["top_ids"][:-1]
    assert example.top_logprobs[n : n + len(answer)] == top["top_logprobs"][:-1]
    assert example.top_ids[:n] == [[]] * n  # the prompt has no rows
    assert example.top_ids[n + len(answer) :] == [[]] * (len(example.input_ids) - n - len(answer))
    assert len(example.top_ids) == len(example.top_logprobs) == len(example.input_ids)
    # collate aligns the rows with the positions.
    batch = data.collate([example], chatml.pad_token_id)
    assert batch["top_ids"][0, n].tolist() == top["top_ids"][0]
    assert batch["top_logprobs"][0, n + len(answer)].isinf().all()


def test_records_with_messages_are_rendered_and_messages_win(chatml):
    chat_record = {"messages": CONVERSATION[:3], "prompt": "hello", "completion": "world"}
    plain_record = {"prompt": "hello", "completion": "world"}
    split = data.tokenize_records(chatml, [chat_record, plain_record], 512)
    assert [len(e.input_ids) for e in split.examples][1] == len(chatml("helloworld")["input_ids"]) + 1
    assert split.examples[0].input_ids == data.tokenize_messages(chatml, CONVERSATION[:3], 512)[0].input_ids


# -- the template the run uses, and what the checkpoint keeps ----------------------------


def test_chatml_adds_its_tokens_only_when_missing(chatml):
    assert IM_END in chatml.get_vocab() and chatml.chat_template == CHATML
    assert chat.apply(chatml, "chatml") == []  # a tokenizer that has them (as Qwen2.5's does)
    im_end = chatml.convert_tokens_to_ids(IM_END)
    assert chat.eos_ids(chatml) == [chatml.eos_token_id, im_end]
    # A pretrained base's own stop ids are kept beside them.
    assert model_init.stop_ids(chatml, [im_end, 7]) == [chatml.eos_token_id, im_end, 7]
    assert model_init.stop_ids(chatml.__class__.from_pretrained(chatml.name_or_path)) == chatml.eos_token_id
    assert chat.apply(chatml, "") == [] and chatml.chat_template == CHATML


def test_the_checkpoint_keeps_the_template_and_stops_at_the_end_of_turn(plain, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from slmops.training.recipes import models

    base = build_model(tmp_path / "base", plain.name_or_path, hidden_size=32, num_hidden_layers=1)
    tok = AutoTokenizer.from_pretrained(base)
    chat.apply(tok, "chatml")
    model = model_init.load_model(ModelInitConfig(model=str(base)), str(base), tok, seed=0)
    assert model.get_input_embeddings().num_embeddings == len(tok) == len(plain) + 2
    models.save_checkpoint(model, tok, [], "chat")(str(tmp_path / "out"))
    out = tmp_path / "out"
    template, config = read_template(out)
    assert (
        template == CHATML
        and json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    )
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert GenerationConfig.from_pretrained(out).eos_token_id == [tok.eos_token_id, im_end]
    reloaded = AutoTokenizer.from_pretrained(out)
    assert reloaded.chat_template == CHATML and reloaded.convert_tokens_to_ids(IM_END) == im_end
    assert AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().num_embeddings == len(reloaded)


def test_check_takes_a_shipped_name_or_a_jinja_file_under_the_roots(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    assert chat.check("") == "" and chat.check("chatml") == "chatml"
    good = tmp_path / "mine.jinja"
    good.write_text(CHATML)
    assert chat.check(str(good)) == artifacts.to_uri(good)
    assert chat.load(artifacts.to_uri(good)) == (CHATML, ())
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m.content }")
    outside = Path(__file__).with_name("outside.jinja")
    for value, words in (
        ("llama9", "neither a shipped template"),
        (str(broken), "does not compile"),
        (str(outside), "allowed"),
        (str(tmp_path / "missing.jinja"), "cannot read"),
    ):
        with pytest.raises(InvalidSpec) as info:
            chat.check(value)
        assert info.value.field == "spec.chat_template" and words in str(info.value), (value, info.value)


# -- at Create: the spec's field, and what the base and dataset need ----------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = build_root(tmp_path_factory)
    record = {"messages": [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}]}
    _write(root / "chats", [record] * 4, [record])
    (root / "mine.jinja").write_text(CHATML)
    (root / "bad.jinja").write_text("{% if %}")
    return root


def test_create_checks_the_chat_template(root, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(root))
    chats = artifacts.to_uri(root / "chats")
    # A base without a template and messages records: name one.
    problems = _problems(_spec(root, dataset_uri=chats))
    assert set(problems) == {"spec.chat_template"} and "chatml" in problems["spec.chat_template"]
    assert _problems(_spec(root, dataset_uri=chats, chat_template="bad.jinja"))["spec.chat_template"]
    assert (
        "does not compile"
        in _problems(_spec(root, chat_template=str(root / "bad.jinja")))["spec.chat_template"]
    )
    # An adapter cannot add ChatML's tokens to its base.
    lora = _problems(_spec(root, method=pb.LORA, dataset_uri=chats, chat_template="chatml"))
    assert "adapter cannot add" in lora["spec.chat_template"]
    from slmops.training.spec import from_proto

    assert from_proto(_spec(root, dataset_uri=chats, chat_template="chatml")).chat_template == "chatml"
    named = from_proto(_spec(root, dataset_uri=chats, chat_template=str(root / "mine.jinja")))
    assert named.chat_template == artifacts.to_uri(root / "mine.jinja")
    # prompt/completion records need no template.
    assert from_proto(_spec(root)).chat_template == ""


def test_cli_flag_sets_the_spec_field(tmp_path, monkeypatch):
    from slmops.cli.main import build_parser
    from slmops.cli.train_commands import train_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.jinja").write_text(CHATML)
    parser = build_parser()
    args = parser.parse_args(["train", "--base", "b", "--dataset", "d", "--chat-template", "chatml"])
    assert train_spec(args).chat_template == "chatml"
    args = parser.parse_args(["train", "--base", "b", "--dataset", "d", "--chat-template", "mine.jinja"])
    assert train_spec(args).chat_template == artifacts.to_uri(tmp_path / "mine.jinja")
    assert train_spec(parser.parse_args(["train", "--base", "b", "--dataset", "d"])).chat_template == ""
