"""The README's CLI block, run for real, in order, on this machine.

The README's quick start is `make demo` (the demo pipeline, run by
tests/e2e/test_pipeline.py), so this test runs the command block of its "CLI"
section instead: each command as the README writes it (optional `[...]` parts
included), through `.venv/bin/slmops` in a subprocess, against a stack that its
own `slmops up` starts in a temporary data dir, with these substitutions, each
because the real thing cannot run here or would take too long:

- `slmops up` gets `--free-ports --num-cpus 2`: other stacks may hold 50051-50056;
- the hosted teacher (`https://api.example.com/v1`) is `StandinServer`, a local
  OpenAI-compatible server (no remote endpoint can be reached); the local teacher
  (`<hf-model-dir-or-hub-id>`) is a tiny ChatML Qwen2 built here (no hub download),
  on the CPU (`--device cuda` dropped), with `--max-tokens 8`;
- the student is `--override num_hidden_layers=1` of that teacher (the README's
  hidden_size=256, 4 layers is bigger than a tiny teacher), trained for 4 steps;
- `<onnx-model-uri>` and `<int4-model-uri>` are the one int4 model conversion made;
  the bench's `teacher` deployment serves the tiny teacher (the README assumes one),
  and `held-out.jsonl` holds that teacher's own greedy answers, so every quality
  figure has a reference above 0;
- the bench gets `--max-tokens 16`;
- `slmops serve` gets a free port and `--grpc-port 0` instead of 8080/8081;
- `--json` is added where the test reads a job's id or output.

Not run here: `convert --adapter` (needs a LoRA training run:
tests/integration/test_conversion_adapters_job.py), `pipeline run` and
`pipeline get` (the demo itself), and the README's other blocks (the training
recipes: tests/integration/test_training_recipes.py; PostgreSQL and S3: the
`production_stack` tests).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_docs_commands import ROOT, argv, doc_lines, shell_lines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]  # about 5 minutes on 2 idle cores
MAX_TOKENS = 16  # the bench's --max-tokens, and the teacher's held-out answers

SLMOPS = str(Path(sys.executable).parent / "slmops")
SKIPPED = {
    "slmops convert --model <base-uri> --adapter": "needs a LoRA adapter from a training run of its own",
    "slmops pipeline run": "the demo itself (make demo; tests/e2e/test_pipeline.py)",
}
INTENTS = ("add", "subtract")


def cli_block() -> list[tuple[int, str]]:
    """(line, command) of the README's CLI section's shell block, `# or: slmops ...` included, in order."""
    readme = ROOT / "README.md"
    headings = [(n, line) for n, line, fenced in doc_lines(readme) if not fenced and line.startswith("#")]
    start = next(n for n, line in headings if line == "## CLI")
    end = next(n for n, _ in headings if n > start)
    commands = []
    for number, text in shell_lines(readme):
        if start < number < end:
            command, _, comment = text.partition(" #")
            parts = [command, *re.findall(r"\bor: (\S.*)", comment)]
            commands += [(number, part.strip()) for part in parts if part.strip().startswith("slmops ")]
    return commands


def readme_python_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return snippet


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Shell:
    """Runs README commands with the stack's data dir and records what each printed."""

    def __init__(self, data_dir: Path, workdir: Path, env: dict[str, str]):
        self.data_dir, self.workdir, self.env = data_dir, workdir, env

    def run(self, words: list[str], timeout: float = 300) -> tuple[int, str, str]:
        done = subprocess.run([SLMOPS, *words[1:]], cwd=self.workdir, env=self.env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        return done.returncode, done.stdout, done.stderr

    def ok(self, words: list[str], timeout: float = 300) -> str:
        code, out, err = self.run(words, timeout)
        assert code == 0, f"{' '.join(words)} exited {code}:\n{out}\n{err[-3000:]}"
        return out

    def job(self, words: list[str], timeout: float = 600) -> dict[str, Any]:
        """A job command run with --json, its job as JSON. On a loaded machine a service's first Create
        (importing what its checks need) can pass the CLI's 30 s deadline although the job was created:
        then the job is found with `slmops list` and followed with `slmops watch`, as a user would."""
        code, out, err = self.run([*words, "--json"], timeout)
        if code and "DEADLINE_EXCEEDED" in err:
            print(f"note: {words[1]}: Create passed its deadline; finding the job", file=sys.stderr)
            found = json.loads(self.ok(["slmops", "list", words[1], "--json"]))
            if not found:
                return self.job(words, timeout)
            self.run(["slmops", "watch", found[0]["id"]], timeout)
            return json.loads(self.ok(["slmops", "get", found[0]["id"], "--json"]))
        assert code == 0, f"{' '.join(words)} exited {code}:\n{out}\n{err[-3000:]}"
        return json.loads(out)


def _replace(words: list[str], old: str, new: str) -> list[str]:
    assert old in words, (old, words)
    return [new if w == old else w for w in words]


def _drop(words: list[str], flag: str, values: int = 1) -> list[str]:
    at = words.index(flag)
    return words[:at] + words[at + 1 + values :]


def _chat_teacher(folder: Path) -> Path:
    """A 2-layer Qwen2 with a ChatML tokenizer (generation stops at the end of a turn too)."""
    from transformers import AutoTokenizer, GenerationConfig

    from slmops.core.chat_template import CHATML, SHIPPED_TOKENS
    from slmops.testing import tiny

    texts = [f"Question: what is {a}+{a}? {2 * a}" for a in range(20)] + ["user: hi\nassistant: hello"] * 4
    tokenizer_dir = tiny.train_tokenizer(texts, folder.parent / "teacher-tokenizer", 300)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SHIPPED_TOKENS["chatml"])})
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(tokenizer_dir)
    model = tiny.build_model(folder, tokenizer_dir, hidden_size=64, num_hidden_layers=2,
                             max_position_embeddings=256, seed=0)  # fmt: skip
    generation = GenerationConfig.from_pretrained(model)
    generation.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    generation.save_pretrained(model)
    return model


@pytest.fixture(scope="module")
def shell(tmp_path_factory) -> Iterator[Shell]:
    data_dir = tmp_path_factory.mktemp("readme-stack")
    workdir = data_dir / "work"  # under the data dir: a root the services may read
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLMOPS_")}  # no other stack's addresses
    env.update(SLMOPS_DATA_DIR=str(data_dir), SLMOPS_JOB_POLL_S="0.5", TEACHER_API_KEY="sk-test-teacher")
    yield Shell(data_dir, workdir, env)
    subprocess.run([SLMOPS, "down"], env=env, capture_output=True, timeout=120)  # also after a failure


def test_the_readme_cli_block_runs_as_written(shell: Shell):
    from slmops.testing.standin import StandinServer

    commands = cli_block()
    assert [c for _, c in commands][:2] == ["slmops up", "slmops status [--settings]"]
    assert commands[-1][1] == "slmops down"
    work = shell.workdir
    rows = [
        {
            "question": f"what is {i}+{i}?",
            "prompt": f"{i}+{i}=",
            "intent": INTENTS[i % 2],
            "answer": str(2 * i),
        }
        for i in range(20)
    ]
    (work / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "answer.schema.json").write_text(json.dumps({"type": "integer", "minimum": 0}))
    teacher_dir = _chat_teacher(work / "teacher")
    state: dict[str, Any] = {}

    def up(words: list[str]) -> None:
        shell.ok([*words, "--free-ports", "--num-cpus", "2"], timeout=240)
        assert (shell.data_dir / "stack.json").is_file()

    def status(words: list[str]) -> None:
        out = shell.ok(words)
        assert "SERVING" in out and "SLMOPS_DATA_DIR" in out  # --settings lists the variables

    def synth_hosted(words: list[str]) -> None:
        with StandinServer() as teacher:
            job = shell.job(_replace(words, "https://api.example.com/v1", teacher.base_url))
            asked = [r["body"] for r in teacher.requests if r["path"].endswith("/completions")]
        assert job["status"]["state"] == "SUCCEEDED" and asked
        assert all(body["prompt"].startswith("Question: what is") for body in asked)  # --template
        assert job["status"]["metrics"]["cost"] > 0  # --price-in / --price-out

    def synth_local(words: list[str]) -> None:
        words = _replace(words, "<hf-model-dir-or-hub-id>", str(teacher_dir))
        job = shell.job([*_drop(words, "--device"), "--max-tokens", "8"])
        assert job["status"]["state"] == "SUCCEEDED", job
        state["synth_id"], state["dataset"] = job["id"], job["status"]["output"]["uri"]
        stats = json.loads(Path(state["dataset"].removeprefix("file://"), "stats.json").read_text())
        assert set(stats["labels"]["train"]) == set(INTENTS), stats  # --label-column

    def synth_filters(words: list[str]) -> None:
        words = _replace(words, "<tokenizer-dir-or-hub-id>", str(teacher_dir))
        with StandinServer(tokenizer=str(teacher_dir)) as teacher:
            job = shell.job(_replace(words, "http://127.0.0.1:8000/v1", teacher.base_url))
            asked = [r["body"] for r in teacher.requests if r["path"].endswith("/chat/completions")]
        assert job["status"]["state"] == "SUCCEEDED", job
        assert asked and all(body["messages"][0]["role"] == "system" for body in asked)  # --system-prompt
        assert job["status"]["metrics"]["filtered_length"] == 5, job  # 0..8: under --min-length 2
        assert job["spec"]["labels"] == {"team": "math"}

    def list_jobs(words: list[str]) -> None:
        shell.ok(words)  # nothing is running now: an empty list, exit status 0
        out = shell.ok(["slmops", "list", "synth", "--label", "team=math"])
        assert "synth" in out and "SUCCEEDED" in out, out

    def get(words: list[str]) -> None:
        if "<job-id>" not in words:  # a deployment
            out = shell.ok(words)
            assert "OpenAI base URL" in out and "student-2 alone" in out, out
            return
        out = shell.ok(_replace(words, "<job-id>", state["synth_id"]))
        assert state["synth_id"] in out and "SUCCEEDED" in out

    def logs(words: list[str]) -> None:
        out = shell.ok(_replace(words, "<job-id>", state["synth_id"]), timeout=60)
        assert "SUCCEEDED" in out, out

    def watch(words: list[str]) -> None:
        out = shell.ok(_replace(words, "<job-id>", state["synth_id"]), timeout=60)
        assert out.startswith(f"{state['synth_id']}: SUCCEEDED"), out

    def train(words: list[str]) -> None:
        words = _replace(
            _replace(words, "<dataset-uri>", state["dataset"]), "<model-dir-or-hub-id>", str(teacher_dir)
        )
        words = _replace(
            _replace(words, "hidden_size=256", "hidden_size=64"), "num_hidden_layers=4", "num_hidden_layers=1"
        )
        job = shell.job([*words, "--max-steps", "4", "--max-seq-length", "64"])
        assert job["status"]["state"] == "SUCCEEDED", job
        state["checkpoint"] = job["status"]["output"]["uri"]

    def convert(words: list[str]) -> None:
        job = shell.job(_replace(words, "<checkpoint-uri>", state["checkpoint"]))
        assert job["status"]["state"] == "SUCCEEDED", job
        state["int4"] = job["status"]["output"]["uri"]
        assert (Path(state["int4"].removeprefix("file://")) / "foundry").is_dir()  # --foundry-local

    def deploy(words: list[str]) -> None:
        placeholder = "<int4-model-uri>" if "--canary" in words else "<onnx-model-uri>"
        out = shell.ok(_replace(words, placeholder, state["int4"]))
        assert out.startswith("student: READY"), out
        state["url"] = re.search(r"OpenAI base URL: (\S+)", out).group(1)
        if "--canary" in words:
            assert re.search(r"student-2\s+20%", out) and re.search(r"student-1\s+80%", out), out
            # The README's bench measures a deployment named teacher: serve the tiny teacher as one, and
            # write the held-out answers as that teacher gives them.
            teacher_out = shell.ok(["slmops", "deploy", "teacher", "--model", str(teacher_dir)])
            held_out(re.search(r"OpenAI base URL: (\S+)", teacher_out).group(1))

    def held_out(base_url: str) -> None:
        key = (shell.data_dir / "auth" / "predictor-key").read_text().strip()
        lines = []
        for row in rows[:6]:
            body = json.dumps(
                {"model": "teacher", "prompt": row["prompt"], "max_tokens": MAX_TOKENS, "temperature": 0}
            )
            request = urllib.request.Request(f"{base_url}/completions", body.encode(), method="POST", headers={
                "content-type": "application/json", "authorization": f"Bearer {key}"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())["choices"][0]["text"]
            lines.append(json.dumps({"prompt": row["prompt"], "answer": answer}) + "\n")
        (work / "held-out.jsonl").write_text("".join(lines))

    def bench(words: list[str]) -> None:
        code, out, err = shell.run([*words, "--max-tokens", str(MAX_TOKENS)], timeout=600)
        assert code in (0, 3), f"exit {code}:\n{out}\n{err[-3000:]}"  # 3: the gate failed, as a gate may
        report_uri = re.search(r"report: (\S+)/report\.html", err).group(1)
        state["report"] = report_uri
        report = json.loads((Path(report_uri.removeprefix("file://")) / "report.json").read_text())
        student = next(r for r in report["results"] if r["name"] == "student")
        # --quality adds to the defaults: the gate's rouge_l has its figure, as do the extra metrics.
        assert {"rouge_l", "chrf", "bleu", "semantic_similarity"} <= set(student["quality"]), student
        assert "rouge_l" in student["retentions"], student
        reasons = report["verdict"]["reasons"]
        assert any("retention of rouge_l" in r for r in reasons) and not any("unknown" in r for r in reasons)
        state["gate_passed"] = report["verdict"]["passed"]
        assert (code == 0) == state["gate_passed"]

    def promote(words: list[str]) -> None:
        code, out, err = shell.run(_replace(words, "<evaluation-report-uri>", state["report"]))
        if state["gate_passed"]:
            assert code == 0 and "student: READY" in out, (out, err)
        else:
            assert code != 0 and "gate" in err.lower(), (out, err)  # a failed gate blocks the promotion

    def rollback(words: list[str]) -> None:
        out = shell.ok(words)
        assert re.search(r"student-1\s+100%", out), out  # all traffic back to revision 1

    def bench_then_promote(words: list[str]) -> None:
        state.setdefault("promote_words", words)

    def pipeline_commands(words: list[str]) -> None:
        assert words[:3] == ["slmops", "pipeline", "validate"]
        schema = json.loads(shell.ok(["slmops", "pipeline", "schema"]))
        assert "stages" in json.dumps(schema)
        shell.ok(
            ["slmops", "pipeline", "validate", str(ROOT / "examples" / "demo-pipeline.yaml")], timeout=120
        )

    def lineage(words: list[str]) -> None:
        out = shell.ok(_replace(words, "<artifact-uri>", state["int4"]))
        for uri in (state["int4"], state["checkpoint"], state["dataset"]):
            assert uri in out, out
        assert "prompts.jsonl" in out and "(source file)" in out

    def serve(words: list[str]) -> None:
        port = _free_port()
        words = _replace(
            _replace(words, "MODEL_DIR", state["int4"].removeprefix("file://")), "8080", str(port)
        )
        words = _drop(words, "--adapter")  # no adapter here
        process = subprocess.Popen([SLMOPS, *words[1:], "--grpc-port", "0"], cwd=work, env=shell.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            line = ""
            deadline = time.time() + 120
            while "SLMOPS_PREDICTOR_READY" not in line and time.time() < deadline and process.poll() is None:
                line = process.stdout.readline()
            assert "SLMOPS_PREDICTOR_READY" in line, (
                process.stderr.read() if process.poll() is not None else line
            )
            answer = _python_snippet(f"http://127.0.0.1:{port}/openai/v1", model=None)
            assert answer.returncode == 0, answer.stderr
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)

    def _python_snippet(base_url: str, model: str | None) -> subprocess.CompletedProcess:
        snippet = readme_python_snippet()
        snippet = snippet.replace("http://127.0.0.1:PORT/openai/v1", base_url)
        snippet = snippet.replace(
            '"~/.slmops/auth/predictor-key"', repr(str(shell.data_dir / "auth" / "predictor-key"))
        )
        if model is None:  # the folder's own name is the served model's
            snippet = snippet.replace('model="student"', f"model={Path(state['int4']).name!r}")
        return subprocess.run([sys.executable, "-c", snippet], env=shell.env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    def down(words: list[str]) -> None:
        # The README's openai snippet, against the student deployment, before the stack stops.
        snippet = _python_snippet(state["url"], model="student")
        assert snippet.returncode == 0, snippet.stderr
        shell.ok(words, timeout=120)
        code, _, _ = shell.run(["slmops", "status"], timeout=60)
        assert code != 0  # nothing answers any more

    steps: list[tuple[str, Callable[[list[str]], None]]] = [
        ("slmops up", up),
        ("slmops status", status),
        ("slmops synth --prompts prompts.jsonl --teacher-url https://api.example.com", synth_hosted),
        ("slmops synth --prompts prompts.jsonl --teacher-url http://127.0.0.1:8000/v1", synth_filters),
        ("slmops list", list_jobs),
        ("slmops logs", logs),
        ("slmops watch", watch),
        ("slmops synth --prompts prompts.jsonl --teacher-model-path", synth_local),
        ("slmops get", get),
        ("slmops train", train),
        ("slmops convert --model <checkpoint-uri>", convert),
        ("slmops deploy", deploy),
        ("slmops promote", bench_then_promote),  # after the bench, which makes the report it requires
        ("slmops rollback", rollback),
        ("slmops bench", bench),
        ("slmops pipeline validate", pipeline_commands),
        ("slmops lineage", lineage),
        ("slmops serve", serve),
        ("slmops down", down),
    ]
    ran = []
    for number, text in commands:
        if any(text.startswith(prefix) for prefix in SKIPPED):
            continue
        matches = [step for prefix, step in steps if text.startswith(prefix)]
        assert matches, f"README.md:{number}: {text!r} is neither run by this test nor listed in SKIPPED"
        if matches[0] is rollback and "promote_words" in state:
            continue  # run after the promotion, below
        started = time.monotonic()
        matches[0](argv(text))
        print(
            f"{time.monotonic() - started:6.1f}s  README.md:{number}: {text[:80]}",
            file=sys.stderr,
            flush=True,
        )
        ran.append(text)
        if matches[0] is bench:
            promote(state["promote_words"])
            rollback(["slmops", "rollback", "student"])
    assert any(t.startswith("slmops bench") for t in ran) and ran[-1] == "slmops down"
