"""The demo task: examples, disjoint sets, files, answer checking, tokenizer fit."""

from __future__ import annotations

import json
from pathlib import Path

from slmops.demo import task
from slmops.testing.tiny import count_parameters


def test_examples_are_correct_distinct_and_seeded():
    examples = task.make_examples(500, seed=3)
    assert examples == task.make_examples(500, seed=3)
    assert examples != task.make_examples(500, seed=4)
    assert len({e["prompt"] for e in examples}) == 500
    for e in examples:
        a, b = e["prompt"].rstrip("=").split("+")
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert e["prompt"].endswith("=") and int(e["answer"]) == int(a) + int(b)


def test_demo_sets_hold_out_the_evaluation_prompts():
    sets = task.demo_sets()
    sizes = {name: len(rows) for name, rows in sets.items()}
    assert sizes == {
        "eval": task.EVAL_PROMPTS,
        "teacher_validation": task.TEACHER_VALIDATION_EXAMPLES,
        "teacher_train": task.TEACHER_TRAIN_EXAMPLES,
        "synthesis": task.SYNTHESIS_PROMPTS,
    }
    prompts = {name: {e["prompt"] for e in rows} for name, rows in sets.items()}
    assert all(len(prompts[name]) == size for name, size in sizes.items())
    for name in ("teacher_validation", "teacher_train", "synthesis"):
        assert not prompts["eval"] & prompts[name], name
    for name in ("teacher_train", "synthesis"):
        assert not prompts["teacher_validation"] & prompts[name], name


def test_written_files(tmp_path):
    examples = task.make_examples(5)
    prompts = task.write_prompts(examples, tmp_path / "prompts.jsonl")
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    assert rows == [{"prompt": e["prompt"], "answer": e["answer"]} for e in examples]
    folder = task.write_dataset(examples[:3], examples[3:], tmp_path / "ds")
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    validation = (folder / "validation.jsonl").read_text().splitlines()
    assert train[0] == {"prompt": examples[0]["prompt"], "completion": examples[0]["answer"]}
    assert len(train) == 3 and len(validation) == 2


def test_is_correct():
    assert task.is_correct("68", "68")
    assert task.is_correct("68", " 68\n12+3=15")
    assert task.is_correct("101", "101<|endoftext|>")
    assert task.is_correct("68 ", "68.")
    assert not task.is_correct("68", "689")
    assert not task.is_correct("68", "6")
    assert not task.is_correct("68", "")
    assert not task.is_correct("68", "x68")


def test_each_digit_is_one_token_and_student_is_small(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmops.testing.tiny import build_model, train_tokenizer
    from slmops.training import model_init
    from slmops.training.config import ModelInitConfig, parse_override

    folder = train_tokenizer(task.tokenizer_corpus(), tmp_path / "tok", vocab_size=task.TOKENIZER_VOCAB_SIZE)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("47+85=132", add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == list("47+85=132")

    teacher = build_model(tmp_path / "teacher", folder, seed=task.SEED, **task.TEACHER_SHAPE)
    overrides = {k: parse_override(v) for k, v in task.STUDENT_OVERRIDES.items()}
    init = ModelInitConfig(model=str(teacher), from_config=True, config_overrides=overrides)
    config = model_init.model_config(init, str(teacher))
    model_init.check_model(config, tokenizer, task.STUDENT_HPARAMS["max_seq_length"])
    student = AutoModelForCausalLM.from_config(config)
    assert count_parameters(teacher) >= 5 * sum(p.numel() for p in student.parameters())
    # ONNX Runtime's attention kernels need head sizes that are multiples of 16.
    for shape in (task.TEACHER_SHAPE, overrides):
        assert (shape["hidden_size"] // shape["num_attention_heads"]) % 16 == 0


def test_chat_records_fit_the_chat_pipeline(tmp_path):
    from transformers import AutoTokenizer

    from slmops.core.chat_template import SHIPPED, SHIPPED_TOKENS, render
    from slmops.testing.tiny import train_tokenizer

    examples = task.make_examples(5)
    folder = task.write_chat_dataset(examples[:3], examples[3:], tmp_path / "chat")
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert train[0]["messages"] == [
        {"role": "system", "content": task.SYSTEM_PROMPT},
        {"role": "user", "content": examples[0]["prompt"]},
        {"role": "assistant", "content": examples[0]["answer"]},
    ]
    assert len((folder / "validation.jsonl").read_text().splitlines()) == 2
    # The longest record (a three-digit sum), rendered with ChatML, fits the chat pipeline's sequences.
    tokenizer = AutoTokenizer.from_pretrained(
        train_tokenizer(task.tokenizer_corpus(), tmp_path / "tok", task.TOKENIZER_VOCAB_SIZE)
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SHIPPED_TOKENS["chatml"])})
    record = task.chat_record({"prompt": "99+99=", "answer": "198"})
    text = render(SHIPPED["chatml"], record["messages"], {}, add_generation_prompt=False)
    assert 48 < len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= task.CHAT_MAX_SEQ_LENGTH
    # The committed held-out conversations are the evaluation set's.
    committed = Path(__file__).resolve().parents[2] / "examples" / "demo" / "chat-held-out.jsonl"
    rows = [json.loads(line) for line in committed.read_text().splitlines()]
    assert rows == [task.chat_record(e) for e in task.demo_sets()["eval"]]
