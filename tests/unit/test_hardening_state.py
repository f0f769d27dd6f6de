"""Local state under a shared machine: who may read the data dir, where Ray's sockets live, how big logs get."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from slmops.cli import stack
from slmops.core import auth, private_files, settings, tracing
from slmops.core.errors import Unavailable
from slmops.core.jobs import local_ray
from slmops.core.jobs.local_ray import free_port, head_command, ray_temp_dir, remove_temp_dir, stop_group
from slmops.core.jobs.store import JobRecord, JobStore

OPEN_TO_OTHERS = 0o077


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """SLMOPS_DATA_DIR for the test, under the usual umask 022 (what a shell gives)."""
    path = tmp_path / "data"
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(path))
    for name in (
        "SLMOPS_DATABASE_URL",
        "SLMOPS_AUTH_TOKEN_FILE",
        "SLMOPS_LOG_MAX_BYTES",
        "SLMOPS_ARTIFACT_ROOT",
    ):
        monkeypatch.delenv(name, raising=False)
    saved = os.umask(0o022)
    try:
        yield path
    finally:
        os.umask(saved)


def _open_paths(root: Path) -> list[str]:
    """Paths under root (root included) that group or others may use, with their modes."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & OPEN_TO_OTHERS:
            found.append(f"{path.relative_to(root.parent)} {stat.S_IMODE(mode):o}")
    return found


def _export_spans(path: Path, count: int, max_bytes: int | None = None, prefix: str = "span") -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(tracing.JsonlSpanExporter(path, max_bytes)))
    tracer = provider.get_tracer("test")
    for index in range(count):
        with tracer.start_as_current_span(f"{prefix}-{index}", attributes={"pad": "x" * 40}):
            pass
    provider.shutdown()


@pytest.mark.reliability(
    "another local user reads the data dir: job databases, tokens, logs, spans, the stack record",
    expected="the data dir and its folders 0700, every file in them 0600, under umask 022",
)
def test_what_the_platform_writes_under_the_data_dir_is_readable_by_its_user_only(data_dir, probe):
    root = settings.data_dir()
    auth.ensure_token_file(root / auth.TOKEN_FILE)
    local_ray.auth_env(root)
    store = JobStore(settings.database_url("synthesis"))
    store.create(JobRecord(id="j1", kind="synthesis", state="PENDING", config={"a": 1}))
    store.engine.dispose()
    _export_spans(tracing.spans_file(), 3)
    handler = private_files.RotatingLogHandler(root / "logs" / "synthesis.log")
    handler.emit(logging.LogRecord("t", logging.INFO, __file__, 1, "started", None, None))
    handler.close()
    private_files.write_private(root / "stack.json", json.dumps({"data_dir": str(root)}))

    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert {"auth/token", "ray/auth_token", "db/synthesis.db", "traces/spans.jsonl", "logs/synthesis.log",
            "stack.json"} <= set(files)  # fmt: skip
    assert _open_paths(root) == []
    probe.saw(f"{len(files)} files under the data dir, none open to group or others ({', '.join(files)})")


@pytest.mark.reliability(
    "a data dir made by an older version (0755 folders, 0644 files) is started with `slmops up`",
    expected="`up` takes group/other access away from all of it and says so; a link's target is left",
)
def test_up_tightens_an_open_data_dir_and_says_so(data_dir, tmp_path, monkeypatch, probe):
    for name, text in (("db/synthesis.db", "x"), ("logs/serving.log", "x"), ("traces/spans.jsonl", "{}"),
                       ("auth/token", "t"), ("stack.json", "{}"), ("artifacts/a/model.bin", "w")):  # fmt: skip
        path = data_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not the data dir's")
    elsewhere.chmod(0o644)
    (data_dir / "logs" / "link").symlink_to(elsewhere)
    said: list[str] = []

    def no_head(*_args, **_kwargs):
        raise Unavailable("no Ray head in this test")

    monkeypatch.setattr(stack, "start_head", no_head)
    with pytest.raises(Unavailable, match="no Ray head"):
        stack.up(data_dir, say=said.append)

    assert _open_paths(data_dir) == []
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o644
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert "readable by this user only" in said[0], said
    probe.saw(f"said: {said[0]!r}; link target left {stat.S_IMODE(elsewhere.stat().st_mode):o}")


@pytest.mark.reliability(
    "another local user predicts the local Ray head's temp dir in /tmp and plants sockets or reads its logs",
    expected="`ray start` gets --temp-dir under the 0700 data dir, or a fresh mkdtemp folder (0700) when too long",
)
def test_the_ray_head_temp_dir_is_private_and_not_a_fixed_path_in_tmp(tmp_path, probe):
    short = Path(tempfile.mkdtemp(prefix="d"))  # a data dir like ~/.slmops: short enough for Ray's sockets
    try:
        temp, owned = ray_temp_dir(short)
        args = head_command(temp, gcs_port=1, dashboard_port=2)
        assert f"--temp-dir={short / 'ray' / 'tmp'}" in args and not owned
        assert (
            stat.S_IMODE(Path(temp).stat().st_mode) == stat.S_IMODE((short / "ray").stat().st_mode) == 0o700
        )
    finally:
        shutil.rmtree(short)

    long = tmp_path / ("deep-" * 20) / "data"  # <data_dir>/ray/tmp would not leave room for Ray's sockets
    old = f"/tmp/slmops-ray-{hashlib.sha256(str(long).encode()).hexdigest()[:10]}"
    first, owned_first = ray_temp_dir(long)
    second, owned_second = ray_temp_dir(long)
    try:
        assert owned_first and owned_second and first != second and old not in (first, second)
        assert f"--temp-dir={first}" in head_command(first, gcs_port=1, dashboard_port=2)
        # Ray makes its temp dir 0777 itself: the folder around it is the private one
        assert stat.S_IMODE(Path(first).parent.stat().st_mode) == 0o700 and Path(first).parent != Path("/tmp")
        assert len(first) + len("/session_2026-12-07_21-13-51_123456_4194304/sockets/plasma_store.99") <= 107
        (long / "stack.json").parent.mkdir(parents=True, exist_ok=True)
        (long / "stack.json").write_text(json.dumps({"ray": {"temp_dir": first, "temp_dir_owned": True}}))
        stack.down(long, say=lambda *_: None)
        assert not Path(first).parent.exists() and Path(second).parent.exists()  # `down`: its own folder only
    finally:
        remove_temp_dir(first)
        remove_temp_dir(second)
    probe.saw(
        f"short data dir: {temp}; long one: {first} then {second} (in fresh 0700 folders), removed by `down`"
    )


@pytest.mark.reliability(
    "spans pile up in the local span file past SLMOPS_LOG_MAX_BYTES",
    expected="spans.jsonl rotates: at most 4 files, none past the limit, newest spans readable",
)
def test_the_span_file_rotates_and_the_newest_spans_stay_readable(data_dir, monkeypatch, probe):
    monkeypatch.setenv("SLMOPS_LOG_MAX_BYTES", "4096")
    path = tracing.spans_file()
    _export_spans(path, 300)

    parts = private_files.rotated_files(path)
    sizes = [p.stat().st_size for p in path.parent.glob("spans.jsonl*") if not p.name.endswith(".lock")]
    assert len(sizes) <= 4 and max(sizes) <= 4096, sizes
    spans = tracing.read_spans(path)
    names = [s["name"] for s in spans]
    assert names[-1] == "span-299" and names == sorted(names, key=lambda n: int(n.split("-")[1]))
    assert _open_paths(path.parent) == []
    probe.saw(f"300 spans (~{300 * 330 // 1024} KiB) kept in {len(parts)} files of {sizes} bytes; "
              f"newest {names[-1]} read back with {len(names) - 1} before it")  # fmt: skip


def test_two_exporters_in_one_span_file_write_whole_lines(data_dir, monkeypatch):
    monkeypatch.setenv("SLMOPS_LOG_MAX_BYTES", "8192")
    path = tracing.spans_file()
    import threading

    writers = [threading.Thread(target=_export_spans, args=(path, 60, None, f"w{i}")) for i in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    for part in private_files.rotated_files(path):
        for line in part.read_text().splitlines():
            json.loads(line)  # every line whole
        assert part.stat().st_size <= 8192


_SERVICE_LOGGING = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from slmops.core.service_main import log_to_file

    log_to_file(Path(sys.argv[1]))
    for index in range(400):
        logging.getLogger("chatty").info("line %d %s", index, "y" * 60)
        print(f"stdout {index}", flush=True)
        sys.stderr.write(f"stderr {index}\\n")
    print("SLMOPS_SERVICE_READY chatty 127.0.0.1:1", flush=True)
    """
)


@pytest.mark.reliability(
    "a service logs and prints (stdout, stderr) far past SLMOPS_LOG_MAX_BYTES",
    expected="its log rotates: at most 4 files, none far past the limit, all 0600; the READY line in the newest",
)
def test_a_service_log_rotates_and_takes_stdout_and_stderr_along(data_dir, tmp_path, probe):
    log = data_dir / "logs" / "chatty.log"
    env = dict(os.environ, SLMOPS_LOG_MAX_BYTES="8192", PYTHONUNBUFFERED="1")
    subprocess.run([sys.executable, "-c", _SERVICE_LOGGING, str(log)], env=env, check=True, timeout=60)

    parts = sorted(log.parent.glob("chatty.log*"))
    sizes = [p.stat().st_size for p in parts]
    assert len(parts) <= 4 and max(sizes) <= 8192, sizes
    assert "SLMOPS_SERVICE_READY chatty 127.0.0.1:1" in log.read_text()
    assert "stderr 399" in "".join(p.read_text() for p in parts)
    assert _open_paths(log.parent) == []
    probe.saw(
        f"~{400 * 120 // 1024} KiB logged and printed; {len(parts)} files of {sizes} bytes, READY in the newest"
    )


@pytest.fixture
def service_env(data_dir: Path) -> dict[str, str]:
    """The environment `slmops up` gives a service (a Ray address nothing answers: no job is sent)."""
    return dict(os.environ, RAY_ADDRESS=f"http://127.0.0.1:{free_port()}", PYTHONUNBUFFERED="1",
                SLMOPS_LOG_MAX_BYTES="65536")  # fmt: skip


@pytest.mark.reliability(
    "`slmops up` starts a service for a user whose umask is 022",
    expected="READY found in the service's own rotating log; its log and job database 0600",
)
def test_a_started_service_writes_its_log_and_database_privately(data_dir, service_env, probe):
    logs = private_files.private_dir(settings.data_dir() / "logs")
    started = stack._start_service("synthesis", free_port(), service_env, logs, timeout=60)
    try:
        assert started.address.startswith("127.0.0.1:")
    finally:
        stop_group(started.pid, 10.0)
    deadline = time.time() + 5
    while "shutting down" not in Path(started.log).read_text() and time.time() < deadline:
        time.sleep(0.1)  # what it logs at exit goes through the same rotating file
    assert "shutting down" in Path(started.log).read_text()
    assert _open_paths(data_dir) == []
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file())
    probe.saw(f"READY at {started.address}; {files} all 0600, dirs 0700")


@pytest.mark.reliability(
    "a service started by `slmops up` dies before its logging starts (a bad SLMOPS_LOG_MAX_BYTES)",
    expected="`up` fails naming the problem, read from the service's log file",
)
def test_a_crash_before_logging_starts_is_still_shown_by_up(data_dir, service_env, probe):
    logs = private_files.private_dir(settings.data_dir() / "logs")
    service_env["SLMOPS_LOG_MAX_BYTES"] = "lots"
    with pytest.raises(Unavailable) as failed:
        stack._start_service("synthesis", free_port(), service_env, logs, timeout=30)
    assert "SLMOPS_LOG_MAX_BYTES must be a positive number of bytes" in str(failed.value)
    assert _open_paths(data_dir) == []
    probe.saw(f"Unavailable: {str(failed.value).splitlines()[0]} ... {str(failed.value).splitlines()[-1]!r}")


@pytest.mark.reliability(
    "every `slmops up` leaves a Ray session (logs, sockets) in the temp dir under the data dir",
    expected="a new head keeps only the 3 newest earlier sessions; `session_latest` and other files stay",
)
def test_old_ray_sessions_under_the_data_dir_are_pruned(tmp_path, probe):
    temp = tmp_path / "ray" / "tmp"
    names = [f"session_2026-12-0{day}_10-00-00_000001_{100 + day}" for day in range(1, 7)]
    for name in names:
        (temp / name / "logs").mkdir(parents=True)
    (temp / "session_latest").symlink_to(temp / names[-1])
    (temp / "ray_current_cluster").write_text("x")
    local_ray.prune_sessions(str(temp))
    left = sorted(p.name for p in temp.iterdir())
    assert left == sorted([*names[-3:], "session_latest", "ray_current_cluster"])
    probe.saw(f"6 earlier sessions -> {len(names[-3:])} kept: {names[-3:]}")


def test_a_bad_log_size_leaves_span_writers_at_the_default(data_dir, monkeypatch):
    monkeypatch.setenv("SLMOPS_LOG_MAX_BYTES", "ten megs")
    exporter = tracing.JsonlSpanExporter(tracing.spans_file())
    assert exporter.max_bytes == int(settings.VARS["log_max_bytes"].default)
    with pytest.raises(ValueError, match="SLMOPS_LOG_MAX_BYTES"):
        private_files.log_max_bytes()
