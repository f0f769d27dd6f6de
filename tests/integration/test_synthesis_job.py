"""The synthesis job end to end through real Ray Data.

The teacher is `slmops.testing.standin.StandinServer`, a local
OpenAI-compatible HTTP server in this test process that stands in for a remote
paid teacher (none can be reached from here). It answers arithmetic prompts
deterministically and can be told to fail requests, which proves the retry path.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from slmops.core import artifacts, tracing
from slmops.core.datasets import read_split
from slmops.core.errors import Unavailable
from slmops.testing.standin import StandinServer, arithmetic_answer

pytestmark = pytest.mark.integration

TRACE_ID = "ab" * 16
TRACEPARENT = f"00-{TRACE_ID}-{'e' * 16}-01"
PROMPTS = [
    {"prompt": f"{a}+{b}=", "answer": str(a + b), "id": f"q{a}-{b}"} for a in range(3) for b in range(4)
]


@pytest.fixture(scope="module")
def teacher():
    with StandinServer() as server:
        yield server


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return tmp_path


def _records(out: Path) -> list[dict]:
    """Every record of a dataset folder, train then validation."""
    return read_split(artifacts.to_uri(out), "train") + read_split(artifacts.to_uri(out))


def _config(teacher: StandinServer, prompts: Path, **teacher_overrides) -> dict:
    return {
        "prompts_uri": artifacts.to_uri(prompts),
        "teacher": {
            "kind": "endpoint",
            "base_url": teacher.base_url,
            "model": "teacher-x",
            "max_concurrency": 3,
            "backoff_s": 0.05,
            **teacher_overrides,
        },
        "sampling": {"max_tokens": 8, "top_logprobs": 2},
        "validation_fraction": 0.25,
        "seed": 7,
        "num_shards": 3,
    }


@pytest.mark.reliability("the teacher answers 503", expected="retried; the dataset is complete")
def test_synthesis_job_writes_a_dataset_and_retries_a_503(ray_local, teacher, workdir):
    from slmops.synthesis.job import run

    teacher.requests.clear()
    teacher.fail_next(1, status=503)
    events = []
    out = workdir / "dataset"
    # As the job runner does: the job runs inside a span continuing the caller's trace.
    with tracing.span_from("test.synthesis", TRACEPARENT):
        result = run(
            _config(teacher, workdir / "prompts.jsonl"),
            str(out),
            lambda f, m, **kw: events.append((f, m, kw)),
            trace_id=TRACE_ID,
        )

    metrics = result["metrics"]
    assert result["output_uri"] == artifacts.to_uri(out)
    assert metrics["num_prompts"] == 12 and metrics["answered"] == 12 and metrics["rejected"] == 0
    assert metrics["retries"] == 1 and metrics["attempts"] == 13
    assert metrics["num_train"] == 9 and metrics["num_validation"] == 3
    # One 503, then every prompt answered once: 13 requests, each carrying the job's trace.
    statuses = [r["status"] for r in teacher.requests]
    assert statuses.count(503) == 1 and statuses.count(200) == 12
    assert all(
        re.match(rf"00-{TRACE_ID}-[0-9a-f]{{16}}-[0-9a-f]{{2}}$", r["traceparent"] or "")
        for r in teacher.requests
    )

    train, validation = read_split(artifacts.to_uri(out), "train"), read_split(artifacts.to_uri(out))
    records = train + validation
    assert sorted(r["id"] for r in records) == sorted(p["id"] for p in PROMPTS)
    for record in records:
        assert record["completion"] == record["answer"]  # the stand-in answers correctly
        assert record["teacher"]["model"] == "teacher-x"
        assert record["teacher"]["completion_tokens"] == len(record["answer"])
        top = record["top_logprobs"]  # no tokenizer given: strings without ids
        assert top["tokens"] == list(record["answer"]) and top["token_ids"] is None
        assert top["top_tokens"][0][0] == record["answer"][0] and len(top["top_logprobs"][0]) == 2
        assert "vocab_size" not in record["teacher"]
        assert "messages" not in record  # a plain completions teacher: prompt and completion only

    manifest = artifacts.read_manifest(artifacts.to_uri(out))
    assert manifest.kind == "dataset"
    assert manifest.parents == [artifacts.to_uri(workdir / "prompts.jsonl")]
    assert manifest.trace_id == TRACE_ID
    assert set(manifest.hashes) == {"data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet",
                                    "preview.jsonl", "stats.json", "rejects.jsonl", "filtered.jsonl"}  # fmt: skip
    assert (out / "rejects.jsonl").read_text() == ""
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_prompts"] == 12 and stats["teacher"]["base_url"] == teacher.base_url

    # Progress: once per shard, ending at 1.0.
    shard_events = [e for e in events if e[1].startswith("shard ")]
    assert len(shard_events) >= 1 and shard_events[-1][2]["answered"] == 12
    assert events[-1][0] == 1.0


def test_rejects_are_kept_with_their_reasons_and_too_many_fail_the_job(ray_local, workdir, monkeypatch):
    """Every prompt ends answered or rejected; past the threshold the job fails and keeps both, with the cost.

    The teacher's API key is sent on every request and written nowhere: not in the dataset, the rejects,
    the spans or the logs under the data folder.
    """
    from slmops.synthesis.job import run
    from tests.integration.conftest import TEST_TEACHER_KEY as secret

    monkeypatch.setenv("TEST_TEACHER_API_KEY", secret)  # the job's own process (its probe) sees it too

    poisoned = {"q0-3", "q1-2", "q2-1"}  # their prompts always get a 500
    lines = [
        json.dumps({**p, "prompt": ("poison " if p["id"] in poisoned else "") + p["prompt"]}) for p in PROMPTS
    ]
    (workdir / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    with StandinServer(
        faults={429: 0.2, 502: 0.1}, retry_after="0", fail_prompts=("poison",), seed=1
    ) as server:
        config = _config(server, workdir / "prompts.jsonl", max_attempts=3, backoff_s=0.01,
                         price_prompt_per_million=2.0, price_completion_per_million=8.0,
                         api_key_env="TEST_TEACHER_API_KEY")  # fmt: skip
        config["max_reject_fraction"] = 0.2
        with pytest.raises(Unavailable, match=r"failed on 3 of 12 prompts .*line \d+, 3 attempts.* kept in"):
            run(config, str(workdir / "dataset"), lambda *a, **k: None)
        requests = len(server.requests)
        assert all(r["authorization"] == f"Bearer {secret}" for r in server.requests)
    out = workdir / "dataset"
    tracing.shutdown_tracing()
    time.sleep(1.0)  # the workers flush their spans every 0.5 s
    # The workers' spans go to their own data folder (the one Ray started with: the test's folder is this process's).
    spans = [f for f in (*workdir.rglob("spans.jsonl"), ray_local / "traces" / "spans.jsonl") if f.is_file()]
    assert any("synthesis.teacher_request" in f.read_text() for f in spans)
    written = [f for f in workdir.rglob("*") if f.is_file()] + spans
    assert any(f.name == "rejects.jsonl" for f in written)
    assert not [f for f in written if secret.encode() in f.read_bytes()]
    assert artifacts.is_artifact(artifacts.to_uri(out))  # what was answered is kept, sealed
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"].split()[0] for r in rejects) == ["poison"] * 3
    assert all(r["status"] == 500 and r["attempts"] == 3 and "500" in r["reason"] for r in rejects)
    answered = _records(out)
    assert sorted(r["id"] for r in answered) == sorted(p["id"] for p in PROMPTS if p["id"] not in poisoned)
    metrics = artifacts.read_manifest(artifacts.to_uri(out)).metrics
    assert (metrics["answered"], metrics["rejected"], metrics["attempts"]) == (9, 3, requests)
    expected = (metrics["prompt_tokens"] * 2.0 + metrics["teacher_completion_tokens"] * 8.0) / 1e6
    assert metrics["cost"] == pytest.approx(expected) and metrics["cost"] > 0


def test_synthesis_job_stores_token_ids_with_the_teachers_tokenizer(ray_local, workdir):
    """The teacher's tokenizer maps returned tokens to ids; a record it cannot map loses its ids."""
    from transformers import AutoTokenizer

    from slmops.synthesis.job import run
    from slmops.testing.tiny import train_tokenizer

    tokenizer = train_tokenizer([p["prompt"] + p["answer"] for p in PROMPTS], workdir / "tok", 260)

    def answer(model: str, prompt: str) -> str:  # 日 is three byte tokens: no id from text alone
        return arithmetic_answer(model, prompt) + ("日" if prompt == "0+0=" else "")

    out = workdir / "dataset"
    with StandinServer(answer, tokenizer=str(tokenizer)) as server:
        config = _config(server, workdir / "prompts.jsonl", tokenizer=artifacts.to_uri(tokenizer))
        result = run(config, str(out), lambda *a, **k: None)

    assert result["metrics"]["unmapped_logprob_records"] == 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["unmapped_logprob_records"] == 1 and stats["teacher"]["tokenizer"]
    tok = AutoTokenizer.from_pretrained(tokenizer)
    records = _records(out)
    for record in records:
        top = record["top_logprobs"]
        if record["prompt"] == "0+0=":
            assert top["token_ids"] is None and top["top_ids"] is None
            assert "vocab_size" not in record["teacher"]
            continue
        assert tok.decode(top["token_ids"]) == record["completion"] == record["answer"]
        assert [row[0] for row in top["top_ids"]] == top["token_ids"]
        assert record["teacher"]["vocab_size"] == len(tok)


def test_a_teacher_served_by_slmops_gives_top_k_with_token_ids(ray_local, workdir, tmp_path_factory):
    """The real predictor as the teacher (chat, whose logprobs carry bytes): they map back to its ids."""
    from slmops.predictor.loading import load_engine
    from slmops.synthesis.job import run
    from tests.integration._models import tiny_checkpoint
    from tests.integration.test_predictor_server import Predictor

    checkpoint = tiny_checkpoint(tmp_path_factory)
    server = Predictor(checkpoint, workdir / "predictor", name="teacher-x")
    try:
        url = server.wait_ready(timeout=120)
        fake = type("Teacher", (), {"base_url": f"{url}/v1"})()
        config = _config(fake, workdir / "prompts.jsonl", tokenizer=artifacts.to_uri(checkpoint), chat=True)
        result = run(config, str(workdir / "dataset"), lambda *a, **k: None)
    finally:
        server.stop()
    assert result["metrics"]["unmapped_logprob_records"] == 0
    engine = load_engine(checkpoint)
    records = _records(workdir / "dataset")
    assert len(records) == len(PROMPTS)
    for record in records:
        top = record["top_logprobs"]
        prompt = engine.apply_chat_template([{"role": "user", "content": record["prompt"]}])
        expected = engine.generate(prompt, max_tokens=8, logprobs=2)
        ids = [e.token_id for e in expected.logprobs]
        assert top["token_ids"] == ids
        assert top["top_ids"] == [[i for i, _ in e.top] for e in expected.logprobs]
        assert top["top_logprobs"][0] == pytest.approx([lp for _, lp in expected.logprobs[0].top], abs=1e-4)


@pytest.mark.reliability(
    "a synthesis job dies midway", expected="the rerun asks only for what was not committed"
)
def test_a_job_that_dies_midway_asks_again_only_for_what_it_had_not_committed(ray_local, workdir):
    from slmops.synthesis.job import run

    class Died(Exception):
        """The job's process going away right after its first shard was committed."""

    def die_after_the_first_shard(fraction, message, **metrics):
        if message.startswith("shard "):
            raise Died

    out, parts = workdir / "dataset", workdir / ".dataset.parts"
    with StandinServer() as server:
        config = _config(server, workdir / "prompts.jsonl")
        with pytest.raises(Died):
            run(config, str(out), die_after_the_first_shard)
        committed = sum(len(p.read_text().splitlines()) for p in parts.glob("part-*.jsonl"))
        assert 0 < committed < len(PROMPTS) and not out.exists()
        before, messages = len(server.requests), []
        result = run(config, str(out), lambda fraction, message, **metrics: messages.append(message))
        asked_again = [r["body"]["prompt"] for r in server.requests[before:]]
    assert len(asked_again) == len(PROMPTS) - committed  # nothing committed was bought twice
    assert any(m.startswith(f"resuming: {committed} of {len(PROMPTS)}") for m in messages)
    assert result["metrics"]["answered"] == len(PROMPTS) and not parts.exists()
    records = _records(out)
    assert sorted(r["id"] for r in records) == sorted(p["id"] for p in PROMPTS)


def test_filters_drop_answers_into_filtered_jsonl_with_their_counts(ray_local, workdir):
    from slmops.synthesis.job import run
    from slmops.testing.standin import arithmetic_answer

    def answer(model: str, prompt: str) -> str:
        if prompt.startswith("0+"):
            return "I'm sorry, but I can't help with that."
        return "" if prompt.startswith("1+0") else arithmetic_answer(model, prompt)

    with StandinServer(answer) as server:
        config = _config(server, workdir / "prompts.jsonl")
        config["sampling"] = {"max_tokens": 64}
        config["filters"] = {"reference_column": "answer", "duplicates": "exact"}
        result = run(config, str(workdir / "dataset"), lambda *a, **k: None)
    metrics = result["metrics"]
    # 0+b: four refusals; 1+0: one empty; of the rest, answers already given once are duplicates.
    assert (metrics["filtered_refusal"], metrics["filtered_empty"], metrics["filtered_reference"]) == (
        4,
        1,
        0,
    )
    filtered = [
        json.loads(line) for line in (workdir / "dataset" / "filtered.jsonl").read_text().splitlines()
    ]
    by_filter = {
        name: [f for f in filtered if f["filter"] == name] for name in ("refusal", "empty", "duplicate")
    }
    assert len(by_filter["refusal"]) == 4 and by_filter["refusal"][0]["why"].startswith("matches")
    assert metrics["filtered_duplicate"] == len(by_filter["duplicate"]) > 0
    assert metrics["answered"] == len(PROMPTS) and metrics["accepted"] + len(filtered) == len(PROMPTS)


def test_several_answers_per_prompt_each_a_record_and_a_split_stratified_by_label(ray_local, workdir):
    from slmops.synthesis.job import run

    labelled = workdir / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({**p, "kind": "zero" if p["prompt"].startswith("0+") else "other"}) + "\n"
                                for p in PROMPTS))  # fmt: skip
    with StandinServer() as server:
        config = _config(server, labelled)
        config["sampling"] = {"max_tokens": 8, "temperature": 0.7}
        config.update(samples_per_prompt=3, label_column="kind", validation_fraction=0.25)
        result = run(config, str(workdir / "dataset"), lambda *a, **k: None)
        bodies = [r["body"] for r in server.requests]
    assert len(bodies) == len(PROMPTS) and all(b["n"] == 3 for b in bodies)  # one request per prompt
    metrics = result["metrics"]
    assert metrics["accepted"] == 3 * len(PROMPTS) and metrics["answered"] == len(PROMPTS)
    records = _records(workdir / "dataset")
    assert Counter((r["id"], r["sample"]) for r in records) == Counter(
        (p["id"], s) for p in PROMPTS for s in range(3)
    )
    assert all(r["teacher"]["completion_tokens"] == len(r["answer"]) for r in records)
    assert metrics["teacher_completion_tokens"] == sum(r["teacher"]["completion_tokens"] for r in records)
    stats = json.loads((workdir / "dataset" / "stats.json").read_text())
    assert stats["labels"]["validation"] == {"zero": 3, "other": 6}  # a quarter of each: 12 and 24 records


def test_a_local_teacher_answers_in_batches_on_ray_with_token_ids(ray_local, workdir):
    """A Hugging Face teacher inside the job's Ray workers: batched, chat-templated, top-k with ids."""
    from transformers import AutoTokenizer

    from slmops.synthesis.job import run
    from slmops.testing.tiny import build_model, train_tokenizer

    tokenizer = train_tokenizer([p["prompt"] + p["answer"] for p in PROMPTS], workdir / "tok", 260)
    model = build_model(workdir / "teacher", tokenizer, hidden_size=32, num_hidden_layers=1, seed=0)
    config_file = model / "tokenizer_config.json"
    settings = json.loads(config_file.read_text())
    settings["chat_template"] = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    config_file.write_text(json.dumps(settings))
    config = {
        "prompts_uri": artifacts.to_uri(workdir / "prompts.jsonl"),
        "teacher": {"kind": "local", "model": artifacts.to_uri(model), "chat": True, "batch_size": 5},
        "sampling": {"max_tokens": 4, "top_logprobs": 3},
        "system_prompt": "Add.",
        "num_shards": 2,
    }
    result = run(config, str(workdir / "dataset"), lambda *a, **k: None)
    assert result["metrics"]["answered"] == len(PROMPTS)
    tok = AutoTokenizer.from_pretrained(model)
    records = _records(workdir / "dataset") + [json.loads(line) for line in
                                               (workdir / "dataset" / "filtered.jsonl").read_text().splitlines()]  # fmt: skip
    assert len(records) == len(PROMPTS)
    for record in _records(workdir / "dataset"):
        top = record["top_logprobs"]  # the teacher's own ids, k per position
        assert tok.decode(top["token_ids"], skip_special_tokens=True).startswith(record["completion"])
        assert all(len(ids) == 3 for ids in top["top_ids"]) and record["teacher"]["vocab_size"] == len(tok)
        # The conversation the teacher answered, beside prompt and completion; the preview shows it too.
        assert record["messages"] == [{"role": "system", "content": "Add."}, {"role": "user", "content": record["prompt"]},
                                      {"role": "assistant", "content": record["completion"]}]  # fmt: skip
    preview = (workdir / "dataset" / "preview.jsonl").read_text().splitlines()
    assert preview and all("messages" in json.loads(line) for line in preview)
