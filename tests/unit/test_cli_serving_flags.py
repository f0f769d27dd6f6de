"""The serving commands reach every serving feature: the predictor's limits (`serve`, `deploy`), each
revision's own URL (`deploy`, `get NAME`), and a promotion held to the canary's report (`--force`).

`serve` execs the predictor, so its argv is captured; the other commands talk to the real serving
servicer in process, its deployments on the split-backend stand-in (tests/unit/_split_backend.py).
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from slmops.api.v1 import serving_pb2
from slmops.cli import client
from slmops.cli.main import build_parser
from slmops.cli.main import main as cli_main
from slmops.core import settings
from slmops.core.jobs.store import JobStore
from slmops.core.server import start_server
from slmops.serving.deployments import Deployments
from slmops.serving.service import registration
from tests.unit._reports import report
from tests.unit._split_backend import STABLE_URL, SplitBackend, revision_url

LIMIT_FLAGS = ["--threads", "2", "--max-concurrency", "4", "--max-queue", "16", "--max-tokens", "8",
               "--max-body-bytes", "4096", "--request-timeout", "2.5"]  # fmt: skip


def test_serve_passes_every_predictor_limit(monkeypatch, tmp_path):
    seen: list[list[str]] = []

    def fake_exec(path: str, argv: list[str]) -> None:
        seen.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_exec)
    args = build_parser().parse_args(
        ["serve", str(tmp_path), "--api-key-file", "/run/key", "--docs", *LIMIT_FLAGS]
    )
    with pytest.raises(SystemExit):
        args.func(args)
    (argv,) = seen
    given = dict(zip(LIMIT_FLAGS[::2], LIMIT_FLAGS[1::2], strict=True))
    assert {flag: argv[argv.index(flag) + 1] for flag in given} == given
    assert argv[argv.index("--api-key-file") + 1] == "/run/key" and "--docs" in argv

    seen.clear()
    args = build_parser().parse_args(["serve", str(tmp_path), "--api-key-file", "/run/key"])
    with pytest.raises(SystemExit):
        args.func(args)
    assert not set(seen[0]) & {*LIMIT_FLAGS[::2], "--docs"}  # 0: the predictor's own defaults


@pytest.mark.parametrize("command", ["serve", "deploy"])
def test_a_negative_limit_is_a_bad_argument(command, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, "x", "--max-tokens", "-1"])
    assert exited.value.code == 2
    assert "--max-tokens: -1 is negative" in capsys.readouterr().err


def test_force_and_a_required_report_are_one_or_the_other(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["promote", "student", "--force", "--require-report", "/r"])
    assert exited.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.fixture
async def serving(tmp_path, monkeypatch):
    """The serving servicer in process; the CLI's address for it; a model folder it may serve."""
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(tmp_path))
    monkeypatch.delenv("SLMOPS_PREDICTOR_API_KEY_FILE", raising=False)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    deployments = Deployments(
        JobStore(f"sqlite:///{tmp_path}/serving.db"), backend=SplitBackend(), poll_s=0.05
    )
    deployments.resume()
    running = await start_server("serving-test", [registration(deployments)])
    monkeypatch.setenv(settings.VARS["serving_addr"].env, f"127.0.0.1:{running.port}")
    yield model
    client.close()
    await running.stop(0)
    await deployments.close()


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(cli_main, list(argv))


async def test_deploy_get_and_promote_through_the_serving_service(serving, capsys):
    model = str(serving)
    assert await cli("deploy", "student", "--model", model, *LIMIT_FLAGS) == 0
    out = capsys.readouterr().out
    assert f"OpenAI base URL: {STABLE_URL}/openai/v1" in out
    assert f"student-1 alone: {revision_url(1)}/openai/v1" in out, out

    assert await cli("deploy", "student", "--model", model, "--canary", "20", "--max-tokens", "4") == 2
    assert "leave the limit flags out with --canary" in capsys.readouterr().err
    assert await cli("deploy", "student", "--model", model, "--canary", "20") == 0
    capsys.readouterr()

    assert await cli("get", "student") == 0  # a deployment's name is not a job id
    out = capsys.readouterr().out
    for number in (1, 2):
        assert f"student-{number} alone: {revision_url(number)}/openai/v1" in out, out
    assert await cli("get", "student", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["spec"]["limits"] == {"threads": 2, "max_concurrency": 4, "max_queue": 16, "max_tokens": 8,
                                       "max_body_bytes": "4096", "request_timeout_s": 2.5}  # fmt: skip
    assert {r["number"]: r["url"] for r in shown["revisions"]} == {1: revision_url(1), 2: revision_url(2)}
    assert await cli("get", "nobody") == 1
    assert "NOT_FOUND" in capsys.readouterr().err

    failed = report(revision_url(2), passed=False)
    assert await cli("promote", "student") == 1
    err = capsys.readouterr().err
    assert "FAILED_PRECONDITION" in err and failed in err and "--force" in err, err
    assert await cli("promote", "student", "--force") == 0
    out = capsys.readouterr().out
    assert "student-2                100%" in out, out
    request = serving_pb2.GetDeploymentRequest(name="student")
    deployment = await asyncio.to_thread(client.call, client.stub("serving").GetDeployment, request)
    assert deployment.serving_revision == 2
