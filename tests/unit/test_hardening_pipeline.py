"""A pipeline's input stages and its YAML, as an attacker would write them: refused at Create (and
validate_only) naming the field, fast, without reading a device, calling a URL or expanding aliases.

The pipeline service runs in process (start_server, the real servicer); no stage service is called
(check_stages=False: the stages here are inputs only), no Ray.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import grpc
import pytest

from slmops.api.v1 import common_pb2, pipeline_pb2, pipeline_pb2_grpc
from slmops.core import input_files
from slmops.core.jobs.store import JobRecord, JobStore
from slmops.core.server import start_server
from slmops.pipeline import runner as runner_module
from slmops.pipeline.definition import MAX_DEFINITION_BYTES
from slmops.pipeline.runner import PipelineRunner
from slmops.pipeline.service import KIND, PipelineRuns, registration
from tests.unit._problem_paths import problem_paths

FIELD = "spec.definition_yaml.stages.p.uri"


def one_input(uri: str, kind: str = "prompts") -> str:
    return f"name: attack\nstages:\n  p: {{kind: {kind}, uri: {uri!r}}}\n"


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A data dir and an extra allowed root (`inputs`), as `slmops up` would allow them."""
    data, inputs = tmp_path / "data", tmp_path / "inputs"
    data.mkdir()
    inputs.mkdir()
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(data))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(inputs))
    for name in ("SLMOPS_ARTIFACT_ROOT", "SLMOPS_ALLOWED_SCHEMES", "SLMOPS_DATABASE_URL", "SLMOPS_AUTH_TOKEN_FILE",
                 "SLMOPS_MAX_INPUT_BYTES", "SLMOPS_MAX_INPUT_FILES"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return inputs


@pytest.fixture
async def service(roots, tmp_path):
    """(stub, runs) of the pipeline service in process."""
    runs = PipelineRuns(JobStore(f"sqlite:///{tmp_path}/pipeline.db"), check_stages=False, poll_s=0.02)
    running = await start_server("pipeline-test", [registration(runs)])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield pipeline_pb2_grpc.PipelineServiceStub(channel), runs
    await channel.close()
    await running.stop(0)
    await runs.close()


async def create(stub, text: str, validate_only: bool = False) -> tuple[grpc.StatusCode, str, float]:
    """(code, details, seconds) of a Create that must be refused."""
    request = pipeline_pb2.CreatePipelineRunRequest(
        spec=pipeline_pb2.PipelineSpec(definition_yaml=text), validate_only=validate_only
    )
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(stub.CreatePipelineRun(request), timeout=10)
    return info.value.code(), info.value.details(), time.monotonic() - started


async def until_finished(runs: PipelineRuns, run_id: str, timeout: float = 10.0) -> JobRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = runs.store.get(run_id, KIND)
        if record.finished:
            return record
        await asyncio.sleep(0.02)
    raise AssertionError("the run did not finish")


@pytest.mark.reliability(
    "a pipeline names /dev/zero as its prompts", expected="INVALID_ARGUMENT naming stages.p.uri within 1 s"
)
@pytest.mark.parametrize("validate_only", [False, True], ids=["create", "validate_only"])
@pytest.mark.parametrize("dev_allowed", [False, True], ids=["default-roots", "dev-an-allowed-root"])
async def test_dev_zero_is_refused_at_create(probe, service, monkeypatch, roots, validate_only, dev_allowed):
    stub, runs = service
    if dev_allowed:  # an operator who allowed /dev still gets no device read
        monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", f"{roots}{os.pathsep}/dev")
    code, details, elapsed = await create(stub, one_input("/dev/zero"), validate_only)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and problem_paths(details) == [FIELD], details
    assert ("a device" if dev_allowed else "outside the allowed roots") in details
    assert elapsed < 1.0
    assert not runs.store.list(KIND)[0]  # no run was recorded
    probe.saw(f"{code.name} naming {FIELD} in {elapsed:.2f} s")


class Listener:
    """A loopback TCP listener that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.running = False
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.mark.reliability(
    "a pipeline input names http://127.0.0.1:<port> (SSRF through hashing)",
    expected="INVALID_ARGUMENT naming stages.p.uri; the listener sees no request",
)
@pytest.mark.parametrize("validate_only", [False, True], ids=["create", "validate_only"])
async def test_an_http_input_is_refused_and_never_fetched(probe, service, validate_only):
    stub, runs = service
    listener = Listener()
    try:
        code, details, elapsed = await create(
            stub, one_input(f"http://127.0.0.1:{listener.port}/prompts.jsonl"), validate_only
        )
        await asyncio.sleep(0.5)  # a run started anyway would have connected by now
    finally:
        listener.close()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and problem_paths(details) == [FIELD], details
    assert "scheme 'http' is not allowed" in details
    assert listener.connections == 0
    probe.saw(
        f"{code.name} naming {FIELD} in {elapsed:.2f} s; listener saw {listener.connections} connections"
    )


@pytest.mark.reliability(
    "a pipeline input names ftp://, a chained fsspec URL, a path outside the allowed roots or a relative path",
    expected="INVALID_ARGUMENT naming stages.p.uri",
)
@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("ftp://127.0.0.1/prompts.jsonl", "scheme 'ftp' is not allowed"),
        ("simplecache::file://{inputs}/p.jsonl", "chained URLs"),
        ("{outside}/p.jsonl", "outside the allowed roots"),
        ("../../etc/passwd", "relative path"),
    ],
    ids=["ftp", "chained", "outside-roots", "relative"],
)
async def test_other_locations_are_refused_naming_the_field(probe, service, roots, tmp_path, uri, says):
    stub, _ = service
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "p.jsonl").write_text('{"prompt": "secret"}\n')
    (roots / "p.jsonl").write_text('{"prompt": "hi"}\n')
    code, details, elapsed = await create(stub, one_input(uri.format(inputs=roots, outside=outside)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and problem_paths(details) == [FIELD], details
    assert says in details and "secret" not in details
    probe.saw(f"{code.name} naming {FIELD}: {says} ({elapsed:.2f} s)")


@pytest.mark.reliability(
    "a pipeline input folder holds more files than SLMOPS_MAX_INPUT_FILES",
    expected="INVALID_ARGUMENT naming stages.p.uri and the setting, before any file is read",
)
async def test_an_input_folder_over_the_file_budget_is_refused(probe, service, roots, monkeypatch):
    stub, _ = service
    monkeypatch.setenv("SLMOPS_MAX_INPUT_FILES", "3")
    folder = roots / "many"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.jsonl").write_text("{}\n")
    opened: list[str] = []
    monkeypatch.setattr(input_files, "_open", lambda uri, file, field: opened.append(file.path))
    code, details, elapsed = await create(stub, one_input(str(folder), "dataset"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and problem_paths(details) == [FIELD], details
    assert "more than 3 files (SLMOPS_MAX_INPUT_FILES)" in details
    with pytest.raises(Exception, match="more than 3 files"):  # and again when a run reaches it
        runner_module.content_key(f"file://{folder}", FIELD)
    assert opened == []
    probe.saw(
        f"{code.name} naming {FIELD} and SLMOPS_MAX_INPUT_FILES in {elapsed:.2f} s; {len(opened)} files read"
    )


@pytest.mark.reliability(
    "a pipeline input is a 64 GiB (sparse) file over SLMOPS_MAX_INPUT_BYTES",
    expected="INVALID_ARGUMENT naming stages.p.uri and the setting within 1 s, no byte read",
)
async def test_an_input_file_over_the_byte_budget_is_refused_unread(probe, service, roots, monkeypatch):
    stub, _ = service
    monkeypatch.setenv("SLMOPS_MAX_INPUT_BYTES", str(1 << 20))
    big = roots / "big.jsonl"
    with big.open("wb") as fh:
        fh.truncate(64 << 30)  # sparse: no disk used, but reading it would take minutes
    opened: list[str] = []
    monkeypatch.setattr(input_files, "_open", lambda uri, file, field: opened.append(file.path))
    code, details, elapsed = await create(stub, one_input(str(big)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and problem_paths(details) == [FIELD], details
    assert f"more than {1 << 20} bytes (SLMOPS_MAX_INPUT_BYTES)" in details
    assert elapsed < 1.0
    started = time.monotonic()
    with pytest.raises(Exception, match="SLMOPS_MAX_INPUT_BYTES"):
        runner_module.content_key(f"file://{big}", FIELD)
    assert opened == [] and time.monotonic() - started < 1.0
    probe.saw(f"{code.name} naming {FIELD} and SLMOPS_MAX_INPUT_BYTES in {elapsed:.2f} s; 0 bytes read")


@pytest.mark.reliability(
    "a FIFO inside a pipeline input folder (hashing would wait for a writer forever)",
    expected="INVALID_ARGUMENT naming stages.p.uri within 1 s, at Create and when the run hashes it",
)
async def test_a_fifo_in_an_input_folder_is_refused_not_hung_on(probe, service, roots):
    stub, _ = service
    folder = roots / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    os.mkfifo(folder / "tokenizer.json")
    code, details, elapsed = await create(stub, one_input(str(folder), "model"), validate_only=True)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and problem_paths(details) == [FIELD], details
    assert "tokenizer.json is a FIFO" in details and elapsed < 1.0
    started = time.monotonic()
    with pytest.raises(Exception, match="is a FIFO"):
        await asyncio.wait_for(asyncio.to_thread(input_files.hash_input, f"file://{folder}", FIELD), 5)
    probe.saw(
        f"{code.name} naming {FIELD} in {elapsed:.2f} s; hashing refused in {time.monotonic() - started:.2f} s"
    )


@pytest.mark.reliability(
    "a pipeline recorded before its input went bad (/dev/zero, a FIFO) reaches its input stage",
    expected="the run FAILS naming stages.p.uri within 1 s; nothing is read",
)
async def test_the_run_checks_its_inputs_again(probe, roots, tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", f"{roots}{os.pathsep}/dev")
    store = JobStore(f"sqlite:///{tmp_path}/p.db")
    os.mkfifo(roots / "fifo.jsonl")
    seen = []
    for uri in ("/dev/zero", str(roots / "fifo.jsonl")):
        text = one_input(uri)
        run_id = f"pipe-{len(seen)}"
        store.create(JobRecord(id=run_id, kind=KIND, spec={"definition_yaml": text}))
        started = time.monotonic()
        from slmops.pipeline.definition import parse

        await asyncio.wait_for(PipelineRunner(store, run_id, parse(text)).run(), 5)
        elapsed = time.monotonic() - started
        record = store.get(run_id, KIND)
        assert record.state == "FAILED" and record.reason.startswith(FIELD), record.reason
        assert record.result["stages"][0]["state"] == "FAILED" and elapsed < 1.0
        seen.append(f"{uri.rsplit('/', 1)[-1]}: FAILED in {elapsed:.2f} s")
    probe.saw(f"{'; '.join(seen)} naming {FIELD}")


def alias_bomb(levels: int = 7, width: int = 10) -> str:
    """A ~0.5 KB file whose aliases nest into 10**7 strings (the spec's repeated field quotes it)."""
    lines = ["defs:", "  l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    lines += ["name: bomb", "stages:", "  s:", "    kind: train", "    spec:", "      adapters:",
              f"        k: *l{levels - 1}"]  # fmt: skip
    return "\n".join(lines) + "\n"


@pytest.mark.reliability(
    "a 0.5 KB pipeline file of nested YAML aliases (billion laughs)",
    expected="INVALID_ARGUMENT naming spec.definition_yaml within 1 s; other calls keep being answered",
)
async def test_an_alias_bomb_is_refused_fast_while_the_service_answers(probe, service):
    stub, _ = service
    text = alias_bomb()
    assert len(text) < 1024

    async def other_call() -> float:
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.wait_for(stub.ListPipelineRuns(common_pb2.ListJobsRequest()), timeout=5)
        return time.monotonic() - started

    (code, details, elapsed), answered_in = await asyncio.gather(create(stub, text), other_call())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("spec.definition_yaml: "), details
    assert "aliases" in details and len(details) < 1000
    assert elapsed < 1.0 and answered_in < 1.0
    probe.saw(
        f"{code.name} ({len(details)} chars) in {elapsed:.2f} s; another call answered in {answered_in:.2f} s"
    )


@pytest.mark.reliability(
    "a pipeline file over 1 MiB", expected="INVALID_ARGUMENT naming spec.definition_yaml and the limit"
)
async def test_a_definition_over_the_size_cap_is_refused(probe, service):
    stub, _ = service
    text = one_input("Qwen/Qwen2.5-0.5B", "model") + "#" * MAX_DEFINITION_BYTES + "\n"
    code, details, elapsed = await create(stub, text)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("spec.definition_yaml: "), details
    assert f"at most {MAX_DEFINITION_BYTES} bytes" in details
    probe.saw(f"{code.name}: {details.split(': ', 1)[1]} ({elapsed:.2f} s)")


async def test_inputs_under_the_roots_and_hub_ids_still_run(service, roots, tmp_path):
    """What the CLI sends (absolute paths under the allowed roots) and a hub id are accepted and run."""
    stub, runs = service
    (roots / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (roots / "ground-truth").mkdir()
    (roots / "ground-truth" / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    text = (
        "name: ok\nstages:\n"
        f"  prompts: {{kind: prompts, uri: '{roots / 'prompts.jsonl'}'}}\n"
        f"  truth: {{kind: dataset, uri: 'file://{roots / 'ground-truth'}'}}\n"
        "  base: {kind: model, uri: Qwen/Qwen2.5-0.5B}\n"
    )
    spec = pipeline_pb2.PipelineSpec(definition_yaml=text)
    await stub.CreatePipelineRun(pipeline_pb2.CreatePipelineRunRequest(spec=spec, validate_only=True))
    run = await stub.CreatePipelineRun(pipeline_pb2.CreatePipelineRunRequest(spec=spec))
    record = await until_finished(runs, run.id)
    assert record.state == "SUCCEEDED", record.reason
    outputs = [s["output"] for s in record.result["stages"]]
    assert outputs == [
        f"file://{roots / 'prompts.jsonl'}",
        f"file://{roots / 'ground-truth'}",
        "Qwen/Qwen2.5-0.5B",
    ]


def test_input_hashes_match_the_artifact_hashes(roots):
    """The budgeted hashing keys a folder as artifacts.hash_files does, so earlier runs' stages are reused."""
    from slmops.core import artifacts

    folder = roots / "ground-truth"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.jsonl").write_text("a\n")
    (folder / "b.txt").write_text("b\n")
    artifacts.finalize(f"file://{folder}", "dataset")
    uri = f"file://{folder}"
    assert input_files.hash_input(uri, FIELD) == artifacts.hash_files(uri)
    assert input_files.hash_input(f"{uri}/b.txt", FIELD) == artifacts.hash_files(f"{uri}/b.txt")


def test_the_cli_writes_shared_values_out_instead_of_aliasing_them(roots):
    """yaml.safe_dump writes a dict used twice as an anchor and an alias; the CLI sends it written out."""
    import yaml

    from slmops.cli.pipeline_commands import import_inputs
    from slmops.pipeline.definition import parse

    shared = {"num_workers": 1}
    spec = {"dataset_uri": "/d", "method": "FULL", "base": {"model": "m"}, "resources": shared}
    text = yaml.safe_dump({"stages": {"a": {"kind": "train", "spec": spec}, "b": {"kind": "train", "spec": {
        **spec}}}})  # fmt: skip
    assert "&id001" in text
    sent = import_inputs(text, roots)
    assert "&" not in sent and parse(sent).order() == ["a", "b"]
