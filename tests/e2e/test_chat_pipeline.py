"""The demo's chat variant (examples/demo-chat-pipeline.yaml) through the real stack, at a reduced
scale, against its completion variant (examples/demo-pipeline.yaml) at the same scale.

Both files run as they are but for their inputs and budgets: 32 two-digit sums instead of
thousands, the demo's teacher and student shapes, a few hundred steps each. At that scale a model
learns the sums it is shown, not addition, so every set is the same 32 questions: the teacher's
ground truth, the prompts it answers for the student (all but one of its answers go to the
student's training split), and the held-out set with the true sums. The chat teacher learns from
`messages` records rendered with ChatML, synthesis asks it through `/chat/completions` with the
system prompt and writes `messages` records, the student learns from those, is converted to int4
and served as a canary, and every target is evaluated through `/chat/completions` on the held-out
conversations. The chat student must reach at least the completion student's accuracy, measured
here with the same budgets, and the int4 chat student's retention must be in the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from slmops.cli.main import main as cli_main
from slmops.core import artifacts
from slmops.core.datasets import read_records
from slmops.demo import task
from slmops.testing.tiny import build_model, train_tokenizer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = {"chat": EXAMPLES / "demo-chat-pipeline.yaml", "completion": EXAMPLES / "demo-pipeline.yaml"}
QUESTIONS = 32
# Budgets that let each variant's teacher (the demo's shape) and student learn the 32 sums
# (measured: 100% of them after 200 and 300 steps); both variants get the same.
TEACHER_HPARAMS = {"max_steps": 240, "batch_size": 16, "learning_rate": 3e-3, "warmup_ratio": 0.05,
                   "weight_decay": 0.1, "checkpoint_every": 100_000, "seed": 1}  # fmt: skip
STUDENT_HPARAMS = {**TEACHER_HPARAMS, "max_steps": 320, "learning_rate": 5e-3, "seed": 0}


def tiny_inputs(folder: Path) -> list[dict[str, str]]:
    """The teacher's shape and tokenizer (room for a ChatML sequence) and the 32 questions."""
    tokenizer = train_tokenizer(task.tokenizer_corpus(), folder / "tok", task.TOKENIZER_VOCAB_SIZE)
    shape = {**task.TEACHER_SHAPE, "max_position_embeddings": task.CHAT_MAX_SEQ_LENGTH}
    build_model(folder / "teacher-config", tokenizer, seed=task.SEED, **shape)
    return task.make_examples(QUESTIONS + 4, seed=5)


def tiny_pipeline(folder: Path, variant: str, examples: list[dict[str, str]]) -> dict:
    """A variant's demo pipeline with the tiny inputs and budgets (everything else as in its file)."""
    questions, others = examples[:QUESTIONS], examples[QUESTIONS:]
    inputs = folder / variant
    if variant == "chat":
        task.write_chat_dataset(questions, others, inputs / "ground-truth")
        task.write_chat_prompts(questions, inputs / "held-out.jsonl")
    else:
        task.write_dataset(questions, others, inputs / "ground-truth")
        task.write_prompts(questions, inputs / "held-out.jsonl")
    (inputs / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": e["prompt"]}) + "\n" for e in questions)
    )

    data = yaml.safe_load(FILES[variant].read_text())
    data["name"] = f"tiny-demo-{variant}"
    stages = data["stages"]
    stages["ground-truth"]["uri"] = f"{variant}/ground-truth"
    stages["teacher-config"]["uri"] = "teacher-config"
    stages["prompts"]["uri"] = f"{variant}/prompts.jsonl"
    stages["held-out"]["uri"] = f"{variant}/held-out.jsonl"
    resources = {"num_workers": 1, "cpus_per_worker": 1}
    for name, budget in (("teacher", TEACHER_HPARAMS), ("student", STUDENT_HPARAMS)):
        spec = stages[name]["spec"]
        # Each variant keeps its file's max_seq_length: 16 for completions, 64 for ChatML.
        spec["hyperparameters"] = {**budget, "max_seq_length": spec["hyperparameters"]["max_seq_length"]}
        spec["resources"] = resources
    for name in ("teacher-endpoint", "student-endpoint"):  # apart from other tests' deployments
        stages[name]["spec"]["name"] = f"tiny-{variant}-{stages[name]['spec']['name']}"
    stages["answers"]["spec"].update(num_shards=2, validation_fraction=0.02)  # one answer held back
    # Int4 of a model this small strays further from fp32 than the demo's: the gate judges it.
    stages["student-int4"]["spec"]["verification"] = {"max_kl": 5.0}
    stages["evaluate"]["spec"].update(concurrency_levels=[1], quality_metrics=["rouge_l"], warmup_requests=0)
    return data


def run_file(data: dict, path: Path, capsys) -> tuple[int, dict]:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    capsys.readouterr()
    code = cli_main(["pipeline", "run", str(path), "--json"])
    out = capsys.readouterr()
    assert out.out, f"exit {code}: {out.err[-3000:]}"
    return code, json.loads(out.out)


def read_report(uri: str) -> dict:
    return json.loads((artifacts.local_path(uri) / "report.json").read_text())


def test_the_chat_student_keeps_at_least_what_the_completion_student_keeps(stack, capsys, tmp_path):
    examples = tiny_inputs(tmp_path)
    results, runs, seconds = {}, {}, {}
    for variant in ("completion", "chat"):
        data = tiny_pipeline(tmp_path, variant, examples)
        started = time.time()
        code, run = run_file(data, tmp_path / f"{variant}.yaml", capsys)
        seconds[variant] = {"all": round(time.time() - started)}
        seconds[variant].update(
            {s["name"]: round(s.get("seconds", 0)) for s in run["stages"] if s.get("seconds", 0) >= 1}
        )
        stages = {s["name"]: s for s in run["stages"]}
        # Every stage ran; the gate's verdict on the int4 canary may go either way at this scale (exit 3).
        assert code in (0, 3) and all(s["state"] == "SUCCEEDED" for s in stages.values()), (variant, run)
        runs[variant] = stages
        results[variant] = {t["name"]: t for t in read_report(run["report_uri"])["targets"]}
    accuracy = {
        v: {n: r["quality"]["accuracy"] for n, r in targets.items()} for v, targets in results.items()
    }
    print("accuracy:", accuracy, "seconds:", seconds)

    # The chat dataset is messages records with the system prompt and the teacher's answer.
    record = read_records(runs["chat"]["answers"]["output"]["uri"], "train.jsonl")[0]
    system, user, assistant = record["messages"]
    assert system == {"role": "system", "content": task.SYSTEM_PROMPT} and user["role"] == "user"
    assert assistant == {"role": "assistant", "content": record["completion"]}
    # The chat student's checkpoint carries ChatML and stops at its end of turn, <|im_end|>.
    student = artifacts.local_path(runs["chat"]["student"]["output"]["uri"])
    assert "<|im_start|>" in (student / "chat_template.jinja").read_text()
    end_of_turn = json.loads((student / "tokenizer.json").read_text())["added_tokens"]
    end_id = next(t["id"] for t in end_of_turn if t["content"] == "<|im_end|>")
    assert end_id in json.loads((student / "generation_config.json").read_text())["eos_token_id"]

    # A teacher that learnt the sums through its chat template (a student of a teacher that did not
    # would keep nothing worth comparing), and a chat student at least as good as the completion one.
    assert accuracy["chat"]["teacher"] >= 0.9, accuracy
    assert accuracy["completion"]["student"] > 0.5, accuracy
    assert accuracy["chat"]["student"] >= accuracy["completion"]["student"], accuracy
    # The int4 chat student's retention is in its report, and the gate judged it.
    retention = results["chat"]["student-int4"]["retention"]["accuracy"]
    assert retention == pytest.approx(accuracy["chat"]["student-int4"] / accuracy["chat"]["teacher"])
    assert runs["chat"]["gate"]["detail"]["passed"] in ("true", "false")
