"""`slmops serve` runs the predictor with gRPC on, and passes adapters, key file and limits through."""

from __future__ import annotations

import os

import pytest

from slmops.cli.main import build_parser


def test_serve_execs_the_predictor_with_its_flags(monkeypatch, tmp_path):
    seen: list[list[str]] = []

    def fake_exec(path: str, argv: list[str]) -> None:
        seen.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_exec)
    args = build_parser().parse_args([
        "serve", str(tmp_path), "--name", "m", "--adapter", f"math={tmp_path}/a",
        "--api-key-file", "/run/key", "--max-queue", "5",
    ])  # fmt: skip
    with pytest.raises(SystemExit):
        args.func(args)
    (argv,) = seen
    assert argv[1:3] == ["-m", "slmops.predictor"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert flags["--model-dir"] == str(tmp_path)
    assert flags["--grpc-port"] == "8081" and flags["--http-port"] == "8080"
    assert flags["--adapter"] == f"math={tmp_path}/a"
    assert flags["--api-key-file"] == "/run/key"
    assert flags["--max-queue"] == "5" and "--max-concurrency" not in flags
