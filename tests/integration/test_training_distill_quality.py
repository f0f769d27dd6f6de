"""Logit distillation keeps more of the teacher than SFT distillation, on the demo's task.

A teacher in the demo's shape learns two-digit addition from ground truth;
it answers synthesis prompts as a local teacher, keeping its top-8
log-probabilities with token ids. Students in the demo's student shape then
train with the same budget (same steps, batch, learning rate and seed): on the
answers alone (SFT_DISTILL), on the stored top-k (offline LOGIT_DISTILL), and
beside the teacher itself (online LOGIT_DISTILL). Held-out accuracy is measured
by greedy generation.
"""

from __future__ import annotations

import json

import pytest

from slmops.core import artifacts
from slmops.core.datasets import dataset_record
from slmops.core.spec_checks import SamplingConfig
from slmops.demo import task
from slmops.synthesis.config import LocalTeacherConfig
from slmops.synthesis.teacher import LocalTeacher
from slmops.testing.tiny import build_model, train_tokenizer
from slmops.training import job
from slmops.training.config import parse_override

# About 3.5 min on 2 idle cores; the limit leaves room for a machine shared with other work.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

# Half the demo's budgets: the verdict is the same as with the full ones, measured on 2 cores
# (teacher 82.5%, SFT 12%, offline 39.5%, online 17.5%; with the demo's budgets 98.5%, 14%, 78%, 23%).
TEACHER_BUDGET = {**task.TEACHER_HPARAMS, "epochs": 5, "checkpoint_every": 100_000}
STUDENT_BUDGET = {**task.STUDENT_HPARAMS, "epochs": 15, "checkpoint_every": 100_000}


def _accuracy(model_dir, examples) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    correct = 0
    with torch.no_grad():
        for example in examples:
            encoded = tokenizer(example["prompt"], return_tensors="pt", add_special_tokens=False)
            out = model.generate(
                **encoded, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            text = tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += task.is_correct(example["answer"], text)
    return correct / len(examples)


def test_logit_distill_keeps_at_least_what_sft_distill_keeps(tmp_path):
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    try:
        sets = task.demo_sets()
        tokenizer = train_tokenizer(task.tokenizer_corpus(), tmp_path / "tok", task.TOKENIZER_VOCAB_SIZE)
        teacher_init = build_model(tmp_path / "teacher-init", tokenizer, seed=task.SEED, **task.TEACHER_SHAPE)
        truth = task.write_dataset(sets["teacher_train"], sets["teacher_validation"], tmp_path / "truth")
        teacher = job.run(
            {
                "method": "full",
                "base": {"model": artifacts.to_uri(teacher_init)},
                "dataset_uri": artifacts.to_uri(truth),
                "hyperparameters": TEACHER_BUDGET,
                "resources": task.RESOURCES,
            },
            str(tmp_path / "teacher"),
            lambda *a, **k: None,
        )["output_uri"]

        answerer = LocalTeacher(
            LocalTeacherConfig(model=teacher), SamplingConfig(max_tokens=4, top_logprobs=8)
        )
        prompts = sets["synthesis"][:2000]
        records = [
            dataset_record({"prompt": p["prompt"]}, answerer.complete(p["prompt"]), "teacher")
            for p in prompts
        ]
        dataset = tmp_path / "synthesis"
        dataset.mkdir()
        for name, rows in (("train.jsonl", records[:1800]), ("validation.jsonl", records[1800:])):
            (dataset / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

        overrides = {key: parse_override(value) for key, value in task.STUDENT_OVERRIDES.items()}
        base = {"model": teacher, "from_config": True, "config_overrides": overrides}
        common = {
            "base": base,
            "dataset_uri": artifacts.to_uri(dataset),
            "hyperparameters": STUDENT_BUDGET,
            "resources": task.RESOURCES,
        }
        distill = {"loss": "forward_kl", "temperature": 2.0, "alpha": 0.5}
        runs = {
            "sft_distill": {"method": "sft_distill"},
            "offline": {"method": "logit_distill", "distill": distill},
            "online": {"method": "logit_distill", "distill": {**distill, "teacher": teacher}},
        }
        held_out = sets["eval"][:200]
        accuracy = {"teacher": _accuracy(artifacts.local_path(teacher), held_out)}
        steps = {}
        for name, extra in runs.items():
            result = job.run({**common, **extra}, str(tmp_path / name), lambda *a, **k: None)
            steps[name] = result["metrics"]["steps"]
            accuracy[name] = _accuracy(artifacts.local_path(result["output_uri"]), held_out)
        print("held-out accuracy:", accuracy)
        assert len(set(steps.values())) == 1  # the same budget
        assert accuracy["teacher"] >= 0.3, accuracy  # a teacher worth distilling
        assert accuracy["offline"] >= accuracy["sft_distill"], accuracy
        assert accuracy["online"] >= accuracy["sft_distill"], accuracy
    finally:
        if started:
            ray.shutdown()
