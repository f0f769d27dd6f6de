"""The demo task: examples, disjoint sets, files, answer checking, tokenizer fit."""

from __future__ import annotations

import json

from slmops.demo import task
from slmops.models.tiny import count_parameters


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
    held_out = {e["prompt"] for e in sets["eval"]}
    for name in ("teacher_validation", "teacher_train", "synthesis"):
        assert not held_out & {e["prompt"] for e in sets[name]}, name
    assert not {e["prompt"] for e in sets["teacher_validation"]} & {
        e["prompt"] for e in sets["teacher_train"]
    }


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
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from slmops.models.tiny import build_model, train_tokenizer

    folder = train_tokenizer(task.tokenizer_corpus(), tmp_path / "tok", vocab_size=task.TOKENIZER_VOCAB_SIZE)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("47+85=132", add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == list("47+85=132")

    teacher = build_model(tmp_path / "teacher", folder, **task.TEACHER_SHAPE)
    config = AutoConfig.from_pretrained(teacher)
    for key, value in task.STUDENT_OVERRIDES.items():
        setattr(config, key, int(value))
    config.layer_types = None
    student = AutoModelForCausalLM.from_config(type(config).from_dict(config.to_dict()))
    student_params = sum(p.numel() for p in student.parameters())
    assert count_parameters(teacher) >= 5 * student_params
