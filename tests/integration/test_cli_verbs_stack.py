"""`slmops synth` with every quality filter, the teacher's tokenizer and a system prompt, then `list`,
`logs`, `watch`, `get` and `cancel` (of a job and of a pipeline run), through the real local stack.

The teacher is `StandinServer`, a local OpenAI-compatible server standing in for
a remote one (a hosted teacher cannot be reached here), with a tiny byte-level
tokenizer so that its tokens, and so the ids the job stores, are that tokenizer's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from slmops.cli.main import main as cli_main
from slmops.core.datasets import read_split
from slmops.testing.standin import StandinServer, arithmetic_answer
from slmops.testing.tiny import train_tokenizer

pytestmark = pytest.mark.integration

SYSTEM = "Answer with a number."
# (prompt, the reference answer): which filter each row meets, in the filters' order.
ROWS = [(f"{i}+{i}=", str(2 * i)) for i in range(5, 13)] + [  # accepted: two characters, the reference
    ("500+500=", "1000"),  # truncated: four tokens, max_tokens 3
    ("1+1=", "2"),  # length: under two characters
    ("word", "ab"),  # json_schema: "ab" is not JSON
    ("7+8=", "99"),  # reference: the teacher says 15
    ("6+6=", "12"),  # duplicate of 6+6= above
]
SCHEMA = {"type": "integer", "minimum": 0}


def _answer(model: str, prompt: str) -> str:
    return "ab" if "word" in prompt else arithmetic_answer(model, prompt)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def workdir(stack) -> Path:
    folder = stack["data_dir"] / f"cli-verbs-{uuid.uuid4().hex[:6]}"  # a root the services may read
    folder.mkdir()
    return folder


def test_synth_filters_tokenizer_and_system_prompt_then_list_logs_watch(stack, workdir, capsys):
    prompts = workdir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in ROWS))
    schema = workdir / "answer.schema.json"
    schema.write_text(json.dumps(SCHEMA))
    # bytes only (256 and two specials): a digit is a token
    tokenizer = train_tokenizer([p + a for p, a in ROWS], workdir / "tokenizer", 258)
    label = f"suite=cli-{uuid.uuid4().hex[:8]}"
    with StandinServer(_answer, tokenizer=str(tokenizer)) as teacher:
        code, out, err = _run(capsys, "synth", "--prompts", str(prompts), "--teacher-url", teacher.base_url,
                              "--teacher-model", "teacher", "--chat", "--system-prompt", SYSTEM,
                              "--teacher-tokenizer", str(tokenizer), "--top-logprobs", "2", "--max-tokens", "3",
                              "--filter-truncated", "--min-length", "2", "--max-length", "3",
                              "--json-schema", str(schema), "--reference-column", "answer", "--dedup", "exact",
                              "--validation-fraction", "0.2", "--num-shards", "2", "--label", label, "--json")  # fmt: skip
        asked = [r["body"] for r in teacher.requests if r["path"] == "/v1/chat/completions"]
    assert code == 0, err
    job = json.loads(out)  # one JSON document
    metrics = job["status"]["metrics"]
    assert {k: metrics[f"filtered_{k}"] for k in ("truncated", "length", "json_schema", "reference", "duplicate")} \
        == dict.fromkeys(("truncated", "length", "json_schema", "reference", "duplicate"), 1), metrics  # fmt: skip
    assert metrics["accepted"] == 8 and job["spec"]["endpoint"]["tokenizer"] == tokenizer.resolve().as_uri()
    assert asked and all(body["messages"][0] == {"role": "system", "content": SYSTEM} for body in asked)
    dataset = job["status"]["output"]["uri"]
    records = read_split(dataset, "train") + read_split(dataset, "validation")
    assert sorted(r["completion"] for r in records) == sorted(a for _, a in ROWS[:8])
    for record in records:
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
        assert record["messages"][0]["content"] == SYSTEM
        assert len(record["top_logprobs"]["token_ids"]) == len(record["completion"])  # a digit is a token
    job_id = job["id"]

    code, out, _ = _run(capsys, "get", job_id, "--json")
    assert code == 0 and json.loads(out)["status"]["metrics"] == metrics

    code, out, _ = _run(capsys, "logs", job_id)
    lines = out.splitlines()
    assert code == 0 and "synth" in lines[0] and "SUCCEEDED" in lines[-3 if "Ray job" in out else -2]
    (ray_line,) = [line for line in lines if line.startswith("Ray job slmops-")]
    assert Path(ray_line.split(": ", 1)[1]).is_file(), ray_line  # the driver log of the stack's Ray head
    code, out, _ = _run(capsys, "logs", job_id, "--json")
    document = json.loads(out)
    assert document["state"] == "SUCCEEDED" and document["events"][0]["sequence"] == "1"
    assert [int(e["sequence"]) for e in document["events"]] == list(range(1, len(document["events"]) + 1))
    assert len(document["events"]) == len(lines) - 2

    code, out, err = _run(capsys, "watch", job_id)
    assert code == 0 and out.startswith(f"{job_id}: SUCCEEDED") and "SUCCEEDED" in err

    code, out, _ = _run(capsys, "list", "synth", "--label", label, "--json")
    assert code == 0 and [item["id"] for item in json.loads(out)] == [job_id]
    code, out, _ = _run(capsys, "list", "--state", "succeeded", "--json")
    assert job_id in {item.get("id") for item in json.loads(out) if item["kind"] == "synth"}
    code, out, _ = _run(capsys, "list", "--state", "failed", "--label", label, "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = _run(capsys, "list")
    assert code == 0 and any(line.split()[:3] == ["synth", job_id, "SUCCEEDED"] for line in out.splitlines())


def test_a_pipeline_run_followed_and_cancelled_with_get_cancel_and_watch(stack, workdir, capsys):
    prompts = workdir / "slow-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i}+{i}="}) + "\n" for i in range(30)))
    with StandinServer(delay_s=1.0) as teacher:
        pipeline = workdir / "slow.yaml"
        pipeline.write_text(
            "stages:\n"
            f"  prompts: {{kind: prompts, uri: {prompts.name}}}\n"
            "  answers:\n"
            "    kind: synthesize\n"
            "    prompts: prompts\n"
            f"    spec: {{endpoint: {{base_url: '{teacher.base_url}', model: teacher, max_concurrency: 1}},\n"
            "           sampling: {max_tokens: 4}, num_shards: 2}\n"
        )
        code, out, err = _run(capsys, "pipeline", "run", str(pipeline), "--no-wait")
        assert code == 0, err
        run_id = out.strip()
        assert run_id.startswith("pipe-")

        logs = subprocess.Popen([sys.executable, "-m", "slmops.cli", "logs", run_id, "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))  # fmt: skip
        deadline = time.time() + 60
        while time.time() < deadline:  # until the synthesize stage has created its job
            code, out, _ = _run(capsys, "get", run_id, "--json")
            stages = json.loads(out).get("stages", [])
            if any(stage.get("job_id", "").startswith("synth-") for stage in stages):
                break
            time.sleep(0.3)
        code, out, _ = _run(capsys, "cancel", run_id, "--json")
        assert code == 0 and json.loads(out)["id"] == run_id
        followed, problems = logs.communicate(timeout=60)  # --follow ends with the run
        assert logs.returncode == 0, problems
        lines = followed.splitlines()
        assert lines[-3].startswith(f"{run_id}: CANCELLED") and "CANCELLED" in lines[-4], followed
        assert lines[-2].startswith("stage jobs: answers synth-"), followed  # a job with logs of its own
        tail = lines[-3:]
        assert Path(tail[2].removeprefix("pipeline service log: ")).is_file(), followed

    code, out, err = _run(capsys, "watch", run_id)
    assert code == 1 and out.startswith(f"{run_id}: CANCELLED"), (out, err)
    code, out, _ = _run(capsys, "get", run_id, "--json")
    run = json.loads(out)
    assert code == 1 and run["status"]["state"] == "CANCELLED" and run["stages"], run
    code, out, _ = _run(capsys, "get", run_id)
    assert f"{run_id}: CANCELLED" in out and "answers" in out
    code, out, _ = _run(capsys, "list", "pipeline", "--state", "cancelled", "--json")
    assert run_id in [item["id"] for item in json.loads(out)]
