"""Synthesis inputs under attack: templates that expand, prompts files too large to read whole."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from slmops.api.v1 import synthesis_pb2
from slmops.core.errors import InvalidSpec
from slmops.synthesis import job
from slmops.synthesis.inputs import MAX_PROMPT_CHARS, read_inputs
from slmops.synthesis.spec import from_proto


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SLMOPS_ALLOWED_ROOTS", raising=False)
    monkeypatch.delenv("SLMOPS_ARTIFACT_ROOT", raising=False)
    return tmp_path


def _spec(prompts, template: str = "") -> synthesis_pb2.SynthesisSpec:
    return synthesis_pb2.SynthesisSpec(
        prompts_uri=str(prompts),
        prompt_template=template,
        endpoint=synthesis_pb2.TeacherEndpoint(base_url="http://127.0.0.1:9/v1", model="m"),
    )


@pytest.mark.parametrize(
    "template", ["{prompt:>2000000000}", "{prompt!r}", "{prompt.__class__}", "{prompt[0]}"]
)
@pytest.mark.reliability(
    "a synthesis prompt_template carries a format spec, conversion, attribute or index",
    expected="INVALID_ARGUMENT naming spec.prompt_template at Create, in well under a second",
)
def test_a_template_with_more_than_plain_fields_is_refused_at_create(probe, data_dir, template):
    prompts = data_dir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(50)))
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(InvalidSpec) as info:
        from_proto(_spec(prompts, template))
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    problems = dict(info.value.problems)
    assert list(problems) == ["spec.prompt_template"], info.value.problems
    assert "only plain fields" in problems["spec.prompt_template"]
    assert elapsed < 1.0 and peak < 20 << 20
    with pytest.raises(InvalidSpec, match="only plain fields"):  # the job refuses it too
        read_inputs(str(prompts), template)
    probe.saw(f"INVALID_ARGUMENT naming spec.prompt_template in {elapsed:.3f} s, peak {peak >> 20} MiB")


@pytest.mark.reliability(
    "validate_only on a prompts file of tens of MB (200k rows)",
    expected="answers at once from the first rows, never reading the whole file",
)
def test_validate_only_reads_only_the_first_rows_of_a_large_file(probe, data_dir):
    prompts = data_dir / "prompts.jsonl"
    row = json.dumps({"question": "x" * 150, "answer": "y"}) + "\n"
    with prompts.open("w") as fh:
        for _ in range(200):
            fh.write(row * 1000)
    size = prompts.stat().st_size
    tracemalloc.start()
    started = time.perf_counter()
    config = from_proto(_spec(prompts, "Q: {question}"))
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert config.prompt_template == "Q: {question}"
    assert size > 30 << 20 and peak < 8 << 20, (size, peak)  # reading it whole would hold all of it
    assert elapsed < 2.0
    probe.saw(f"validated {size >> 20} MiB / 200k rows in {elapsed:.2f} s, Python heap peak {peak >> 10} KiB")


class _Teacher(BaseHTTPRequestHandler):
    """A loopback teacher: answers the probe, records every request."""

    seen: list[tuple[str, str, int]] = []

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self.seen.append(("GET", self.path, 0))
        self._answer({"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append(("POST", self.path, length))
        self._answer({"choices": [{"text": "ok", "finish_reason": "stop", "index": 0}]})

    def log_message(self, *args):
        pass


@pytest.mark.reliability(
    "a prompts row renders a prompt past the prompt cap (1 M characters)",
    expected="the row is refused by number before any prompt is sent; the teacher sees none",
)
def test_a_prompt_past_the_cap_is_refused_and_never_sent(probe, data_dir):
    prompts = data_dir / "prompts.jsonl"
    rows = [{"q": "short"}, {"q": "z" * (MAX_PROMPT_CHARS - 3)}, {"q": "fine"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = "Q: {q}\n"  # row 2: 3 + (cap - 3) + 1 characters, one too many
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Teacher.seen = []
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        with pytest.raises(InvalidSpec) as at_create:  # the spec check reads the first rows
            from_proto(synthesis_pb2.SynthesisSpec(
                prompts_uri=str(prompts), prompt_template=template,
                endpoint=synthesis_pb2.TeacherEndpoint(base_url=base_url, model="m"),
            ))  # fmt: skip
        config = {"prompts_uri": f"file://{prompts}", "prompt_template": template,
                  "teacher": {"kind": "endpoint", "base_url": base_url, "model": "m"}}  # fmt: skip
        with pytest.raises(InvalidSpec) as in_job:
            job.run(config, str(data_dir / "out"), lambda *a, **k: None)
    finally:
        server.shutdown()
        server.server_close()
    for info in (at_create, in_job):
        problems = info.value.problems
        assert problems == [("spec.prompts_uri", problems[0][1])], problems
        assert problems[0][1].startswith("line 2: its prompt is 1000001 characters"), problems
    posts = [s for s in _Teacher.seen if s[0] == "POST"]
    assert posts == [], _Teacher.seen
    assert not (data_dir / "out").exists()
    probe.saw(f"INVALID_ARGUMENT '{problems[0][1][:60]}'; teacher saw {len(posts)} prompts")
