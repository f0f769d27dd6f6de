"""Evaluation jobs with an LLM judge, through the real local stack (`slmops up`: Ray, the services).

Two jobs evaluate the same two targets, `StandinServer` instances in this test
process (as in test_evaluation_job.py: a teacher that answers right and a
student wrong on every sum that is a multiple of 4), each with another judge:

- a tiny random Qwen2 checkpoint deployed on the stack's serving service, so the
  platform's own predictor, behind its router, judges through its OpenAI API
  with the predictor key the job sends to a platform URL. Its replies are noise:
  the test checks that every answer was put to it and counted (rated or
  unparseable) and that report.md and report.html show it;
- a `StandinServer` returning fixed ratings (9 for an answer equal to the
  reference, 2 for any other), standing in for a capable judge model that cannot
  run here, so the scores, their retention and a gate on it are checked to the
  digit in both reports.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from slmops.api.v1 import common_pb2, evaluation_pb2, serving_pb2
from slmops.cli import client
from slmops.cli.main import main as cli_main
from slmops.core import artifacts
from slmops.evaluation.judge import PROMPT
from slmops.testing.standin import StandinServer, arithmetic_answer

pytestmark = pytest.mark.integration

EXAMPLES = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(4)]
SERVED_PROMPTS = 4
WRONG = sum(1 for e in EXAMPLES if int(e["answer"]) % 4 == 0)
_SECTION = re.compile(r"REFERENCE:\n(.*?)\n\nANSWER:\n(.*?)\n\nRating:", re.S)


def student_answer(model: str, prompt: str) -> str:
    value = arithmetic_answer(model, prompt)
    return value + "1" if int(value) % 4 == 0 else value


def grader(model: str, prompt: str) -> str:
    reference, answer = _SECTION.search(prompt).groups()
    if answer.strip() == reference.strip():
        return "Rating: 9. Reason: the same as the reference."
    return "Rating: 2. Reason: not the reference answer."


def _tiny_judge(folder):
    """A 1-layer random Qwen2 whose context holds the judge's prompt (the shared tiny models' 128 does not)."""
    from slmops.testing.tiny import build_model, train_tokenizer

    texts = [PROMPT] + [e["prompt"] + e["answer"] for e in EXAMPLES]
    tokenizer = train_tokenizer(texts, folder.parent / "judge-tokenizer", vocab_size=400)
    return build_model(folder, tokenizer, hidden_size=32, num_hidden_layers=1, max_position_embeddings=1024)


def _evaluate(root, dataset_uri: str, teacher, student, judge_url: str, name: str,
              prompts: int) -> evaluation_pb2.EvaluationJob:  # fmt: skip
    spec = evaluation_pb2.EvaluationSpec(
        targets=[evaluation_pb2.EvalTarget(name="teacher", base_url=teacher.base_url, model="teacher"),
                 evaluation_pb2.EvalTarget(name="student", base_url=student.base_url, model="student")],
        dataset_uri=dataset_uri, reference="teacher", warmup_requests=0, quality_metrics=["rouge_l"], max_prompts=prompts,
        sampling=common_pb2.SamplingParams(max_tokens=8), output_uri=str(root / name),
        judge=evaluation_pb2.JudgeSpec(base_url=judge_url, model=name, concurrency=4),
        gate=evaluation_pb2.QualityGate(candidate="student", min_retention_by_metric={"judge": 0.95}),
    )  # fmt: skip
    stub = client.stub("evaluation")
    return client.call(stub.CreateEvaluationJob, evaluation_pb2.CreateEvaluationJobRequest(spec=spec))


def _finished(job_id: str, timeout: float = 300.0) -> evaluation_pb2.EvaluationJob:
    stub, deadline = client.stub("evaluation"), time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.call(stub.GetEvaluationJob, common_pb2.GetJobRequest(id=job_id))
        if job.status.state in (common_pb2.SUCCEEDED, common_pb2.FAILED, common_pb2.CANCELLED):
            return job
        time.sleep(0.5)
    raise AssertionError(f"evaluation job {job_id} did not finish in {timeout:.0f} s")


def _reports(job: evaluation_pb2.EvaluationJob) -> tuple[str, str]:
    assert job.status.state == common_pb2.SUCCEEDED, job.status.reason
    folder = artifacts.local_path(job.status.output.uri)
    return (folder / "report.md").read_text(), (folder / "report.html").read_text()


def test_evaluation_jobs_rate_every_answer_with_a_served_judge_and_report_the_scores(stack):
    root = stack["data_dir"] / "judge-eval"
    root.mkdir()
    dataset = root / "eval.jsonl"
    dataset.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    model = _tiny_judge(stack["data_dir"] / "models" / "judge-tiny")
    assert cli_main(["deploy", "judge-tiny", "--model", str(model)]) == 0
    try:
        serving = client.stub("serving")
        deployment = client.call(serving.GetDeployment, serving_pb2.GetDeploymentRequest(name="judge-tiny"))
        with (
            StandinServer() as teacher,
            StandinServer(student_answer) as student,
            StandinServer(grader) as fixed,
        ):
            # The tiny model decodes its 64 tokens of noise for each answer: a few prompts, one batch a target.
            served_job = _evaluate(root, artifacts.to_uri(dataset), teacher, student,
                                   f"{deployment.url}/openai/v1", "judge-tiny", SERVED_PROMPTS)  # fmt: skip
            fixed_job = _evaluate(root, artifacts.to_uri(dataset), teacher, student, fixed.base_url, "fixed",
                                  len(EXAMPLES))  # fmt: skip
            served, stood_in = _finished(served_job.id), _finished(fixed_job.id)
            assert len(fixed.requests) == 2 * len(EXAMPLES)
    finally:
        cli_main(["deploy", "judge-tiny", "--delete"])

    # The served tiny model: every answer of both targets put to it, and each reply rated or counted.
    md, page = _reports(served)
    assert "## LLM judge" in md and "`judge-tiny at http://127.0.0.1:" in md
    for name in ("teacher", "student"):
        row = re.search(rf"^\| {name} \| (\S+) \| (\S+) \| (\d+) \| (\d+) \| (\d+) \|$", md, re.M)
        assert row, md
        rated, unparseable, failed = map(int, row.groups()[2:])
        assert (rated + unparseable, failed) == (SERVED_PROMPTS, 0), row.group(0)
        result = next(r for r in served.results if r.name == name)
        assert ("judge" in result.quality) == (rated > 0)
    assert "Example ratings (shortened):" in md
    section = page.split("<h2>LLM judge</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<code>judge-tiny at http://127.0.0.1:" in section and section.count('<span class="swatch"') >= 2

    # The fixed-score judge: the scores, their retention and the gate on it, in the job and both reports.
    student_mean = ((len(EXAMPLES) - WRONG) * 9 + WRONG * 2) / len(EXAMPLES)
    result = next(r for r in stood_in.results if r.name == "student")
    assert result.quality["judge"] == pytest.approx(student_mean)
    assert result.retentions["judge"] == pytest.approx(student_mean / 9)
    assert stood_in.verdict.evaluated and not stood_in.verdict.passed
    assert stood_in.verdict.reasons == [
        f"student: FAILED: retention of judge {student_mean / 9:.3f} < min 0.950"
    ]
    md, page = _reports(stood_in)
    assert f"| teacher | 9.00 | 100.0% | {len(EXAMPLES)} | 0 | 0 |" in md
    assert f"| student | {student_mean:.2f} | {student_mean / 9:.1%} | {len(EXAMPLES)} | 0 | 0 |" in md
    assert "| student | 2 | 0+0= | 01 | 0 | not the reference answer. |" in md
    assert f"retention of judge {student_mean / 9:.3f} &lt; min 0.950" in page
    assert f"<td>{student_mean:.2f}</td><td>{student_mean / 9:.0%}</td>" in page
