"""The smoke tests of scripts/images.py: each built image run with buildah.

The host venv provides the probes and the tiny model: every service image
answers grpc.health.v1 SERVING; the control-plane images lack torch and the ML
stack; every image that reads artifacts has a filesystem driver for each
allowed scheme; the predictor serves a tiny ORT GenAI model to the `openai`
client; the Ray image imports slmops.core.jobs.entry and runs a Ray task.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _images_catalog import (
    BUILDAH,
    ML_MODULES,
    SCHEME_DRIVERS,
    Image,
    buildah,
    ensure_buildah,
    exists,
    log,
    ref,
    selected,
    sizes_table,
)

# ---------------------------------------------------------------- run inside an image


@contextlib.contextmanager
def container(image_ref: str) -> Iterator[str]:
    ctr = buildah("from", "--pull=never", "--quiet", image_ref, capture=True).strip()
    try:
        yield ctr
    finally:
        buildah("rm", ctr, check=False, capture=True)


def run_args(ctr: str, argv: list[str], env: dict[str, str] | None = None,
             volumes: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    cmd = [*BUILDAH, "run", "--isolation", "chroot"]
    for key, value in (env or {}).items():
        cmd += ["--env", f"{key}={value}"]
    for host, inside in (volumes or {}).items():
        cmd += ["--volume", f"{host}:{inside}"]
    return [*cmd, ctr, "--", *argv]


def run_in(
    ctr: str, argv: list[str], timeout: float = 300, **kw: dict[str, str]
) -> subprocess.CompletedProcess:
    return subprocess.run(run_args(ctr, argv, **kw), capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def serve_in(ctr: str, argv: list[str], log_path: Path, **kw: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A server started inside the image (its own process group), stopped on exit."""
    with open(log_path, "w") as out:
        proc = subprocess.Popen(run_args(ctr, argv, **kw), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------- smoke tests

CHECK_DRIVERS = """
import importlib, sys
import fsspec
drivers = {drivers!r}
for scheme, module in drivers.items():
    importlib.import_module(module)
    cls = fsspec.get_filesystem_class(scheme)
    assert cls.__module__.split('.')[0] == module, (scheme, cls)
print('drivers ok:', ', '.join(f'{{s}}->{{m}}' for s, m in drivers.items()))
"""

CHECK_ABSENT = """
import importlib.util
present = [m for m in {modules!r} if importlib.util.find_spec(m) is not None]
print('ML modules present:', present)
try:
    import torch
except ImportError as exc:
    print('import torch fails:', exc)
else:
    raise SystemExit('torch imported in a control-plane image')
raise SystemExit(1 if present else 0)
"""

# The serving service's KServe backend: kserve's InferenceService models and the Kubernetes client.
CHECK_KSERVE_BACKEND = """
from importlib.metadata import version
import kubernetes.client
import slmops.serving.backends.kserve
print('KServe backend imports: kserve', version('kserve'), 'kubernetes', version('kubernetes'))
"""

CHECK_RAY = """
import slmops.core.jobs.entry
import ray, torch, onnxruntime_genai, transformers
ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
         log_to_driver=False)
@ray.remote
def square(x):
    return x * x
got = ray.get([square.remote(i) for i in range(4)])
assert got == [0, 1, 4, 9], got
print('ray', ray.__version__, 'task results', got, 'torch', torch.__version__)
ray.shutdown()
"""


class Smoke:
    def __init__(self, tag: str, work: Path) -> None:
        self.tag = tag
        self.work = work
        self.results: list[tuple[str, str, bool, str]] = []

    def record(self, image: str, check: str, ok: bool, detail: str) -> None:
        self.results.append((image, check, ok, detail))
        log(f"{'PASS' if ok else 'FAIL'} {image}: {check}: {detail}")

    def data_dir(self, name: str) -> Path:
        path = self.work / f"data-{name}"
        path.mkdir()
        path.chmod(0o777)  # the images run as uid 10001 or 1000
        return path

    def service(self, image: Image) -> None:
        from slmops.core.health_probe import check

        port = free_port()
        argv = ["python", "-m", f"slmops.{image.name}", "--host", "127.0.0.1", "--port", str(port)]
        log_path = self.work / f"{image.name}.log"
        env = {"SLMOPS_DATA_DIR": "/data"}
        with container(ref(image.name, self.tag)) as ctr:
            status, start = "not started", time.monotonic()
            with serve_in(
                ctr, argv, log_path, env=env, volumes={str(self.data_dir(image.name)): "/data"}
            ) as proc:
                while time.monotonic() - start < 120 and proc.poll() is None:
                    status = check(port, timeout=2.0)
                    if status == "SERVING":
                        break
                    time.sleep(1)
            detail = f"health {status} on 127.0.0.1:{port} after {time.monotonic() - start:.1f} s"
            self.record(image.name, "gRPC health", status == "SERVING",
                        detail if status == "SERVING" else f"{detail}\n{tail(log_path)}")  # fmt: skip
            self.contents(image, ctr)

    def contents(self, image: Image, ctr: str) -> None:
        if image.control:
            done = run_in(ctr, ["python", "-c", CHECK_ABSENT.format(modules=ML_MODULES)], timeout=120)
            self.record(image.name, "no torch / ML stack", done.returncode == 0,
                        (done.stdout + done.stderr).strip().splitlines()[-1])  # fmt: skip
        if image.name == "serving":
            done = run_in(ctr, ["python", "-c", CHECK_KSERVE_BACKEND], timeout=120)
            self.record(image.name, "KServe backend clients", done.returncode == 0,
                        (done.stdout + done.stderr).strip()[-300:])  # fmt: skip
        if image.reads_artifacts:
            done = run_in(ctr, ["python", "-c", CHECK_DRIVERS.format(drivers=SCHEME_DRIVERS)], timeout=120)
            self.record(image.name, "artifact scheme drivers", done.returncode == 0,
                        (done.stdout + done.stderr).strip()[-300:])  # fmt: skip

    def predictor(self, image: Image) -> None:
        import httpx
        import openai

        model = tiny_onnx_model(self.work / "models")
        port = free_port()
        argv = ["python", "-m", "slmops.predictor", "--model-dir", "/mnt/models", "--name", "tiny",
                "--host", "127.0.0.1", "--http-port", str(port), "--threads", "1"]  # fmt: skip
        log_path = self.work / "predictor.log"
        base = f"http://127.0.0.1:{port}"
        with container(ref(image.name, self.tag)) as ctr:
            start, ready = time.monotonic(), False
            with serve_in(ctr, argv, log_path, volumes={str(model): "/mnt/models:ro"}) as proc:
                with httpx.Client(base_url=base, timeout=5, trust_env=False) as http:
                    while time.monotonic() - start < 180 and proc.poll() is None and not ready:
                        with contextlib.suppress(httpx.HTTPError):
                            ready = http.get("/v2/health/ready").status_code == 200
                        time.sleep(0.5 if ready else 1)
                self.record(image.name, "ready", ready, f"/v2/health/ready after {time.monotonic() - start:.1f} s"
                            + ("" if ready else "\n" + tail(log_path)))  # fmt: skip
                if ready:
                    http = httpx.Client(trust_env=False, timeout=60)
                    client = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="unused", max_retries=0,
                                           http_client=http)  # fmt: skip
                    try:
                        reply = client.completions.create(model="tiny", prompt="hello world", max_tokens=8,
                                                          temperature=0)  # fmt: skip
                        tokens = reply.usage.completion_tokens if reply.usage else 0
                        ok = isinstance(reply.choices[0].text, str) and tokens > 0
                        detail = f"completion {reply.choices[0].text!r} ({tokens} tokens)"
                    except openai.OpenAIError as exc:
                        ok, detail = False, f"{type(exc).__name__}: {exc}\n{tail(log_path)}"
                    finally:
                        http.close()
                    self.record(image.name, "OpenAI completion", ok, detail)
            self.contents(image, ctr)

    def ray(self, image: Image) -> None:
        with container(ref(image.name, self.tag)) as ctr:
            start = time.monotonic()
            done = run_in(ctr, ["python", "-c", CHECK_RAY], timeout=300,
                          env={"RAY_USAGE_STATS_ENABLED": "0"})  # fmt: skip
            out = (done.stdout + done.stderr).strip().splitlines()
            printed = done.stdout.strip().splitlines() or out
            self.record(image.name, "job_entry import + Ray task", done.returncode == 0,
                        f"{printed[-1] if printed else ''} ({time.monotonic() - start:.0f} s)"
                        + ("" if done.returncode == 0 else "\n" + "\n".join(out[-15:])))  # fmt: skip
            self.contents(image, ctr)


def tiny_onnx_model(out: Path) -> Path:
    """A 2-layer Qwen2 (hidden 64, ~300-token BPE) converted for ORT GenAI (int4, CPU) on the host."""
    from onnxruntime_genai.models.builder import create_model

    from slmops.testing import tiny

    texts = ["hello world, this is a tiny model", "the quick brown fox jumps over the lazy dog",
             "question: what is 2 + 3? answer: 5"] * 8  # fmt: skip
    tokenizer = tiny.train_tokenizer(texts, out / "tokenizer", 300)
    checkpoint = tiny.build_model(out / "checkpoint", tokenizer, architecture="qwen2", hidden_size=64,
                                  num_hidden_layers=2, max_position_embeddings=128, seed=0)  # fmt: skip
    folder = out / "onnx"
    create_model(str(checkpoint), str(checkpoint), str(folder), "int4", "cpu", str(out / "cache"),
                 hf_remote=False)  # fmt: skip
    for path in [out, *out.rglob("*")]:  # readable by the image's user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def smoke(names: list[str], tag: str) -> int:
    ensure_buildah()
    images = [i for i in selected(names, cuda=False) if not i.name.startswith("base")]
    missing = [i.name for i in images if not exists(ref(i.name, tag))]
    if missing:
        sys.exit(f"images: not built: {missing} (make images)")
    with tempfile.TemporaryDirectory(prefix="slmops-smoke-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        runner = Smoke(tag, work)
        for image in images:
            if image.port:
                runner.service(image)
            elif image.name == "predictor":
                runner.predictor(image)
            elif image.name == "ray":
                runner.ray(image)
            else:
                log(f"{image.name}: no smoke test here (needs a GPU)")
    print("\nimage            check                          result")
    for image, check, ok, detail in runner.results:
        print(f"{image:<16} {check:<30} {'PASS' if ok else 'FAIL'}  {detail.splitlines()[0]}")
    print(sizes_table(tag))
    failed = [r for r in runner.results if not r[2]]
    log(f"{len(runner.results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
