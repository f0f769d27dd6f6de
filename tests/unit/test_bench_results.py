"""The benchmark results files, produced by a trivially small registered benchmark."""

from __future__ import annotations

import json

import pytest

from slmops.bench import registry
from slmops.bench.registry import Outcome, register, run_benchmarks


@pytest.fixture
def tiny_benchmark(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", {})

    @register("sum_speed")
    def sum_speed() -> Outcome:
        """Summing a list: builtin sum vs a Python loop."""
        return Outcome(
            value=300.0,
            baseline=100.0,
            unit="ops/s",
            value_label="builtin",
            baseline_label="loop",
            details={"items": 1000},
        )

    return registry.REGISTRY["sum_speed"]


def test_results_json_and_report(tiny_benchmark, tmp_path):
    assert tiny_benchmark.description == "Summing a list: builtin sum vs a Python loop."
    logs: list[str] = []
    document = run_benchmarks([tiny_benchmark], tmp_path / "bench", log=logs.append)

    on_disk = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert on_disk == document
    assert on_disk["results"] == [
        {"name": "sum_speed", "value": 300.0, "unit": "ops/s", "baseline": 100.0, "ratio": 3.0}
    ]
    details = on_disk["details"]["sum_speed"]
    assert details["builtin"] == 300.0 and details["loop"] == 100.0 and details["items"] == 1000
    assert on_disk["machine"]["cpu_count"] >= 1

    report = (tmp_path / "bench" / "report.md").read_text()
    assert "| sum_speed | 300.00 | 100.00 | ops/s | 3.00x |" in report
    assert "- items: 1000" in report
    assert logs[-1].startswith("bench sum_speed: 300.00 vs 100.00 ops/s (ratio 3.00)")


def test_the_cli_lists_and_rejects_unknown_names(capsys):
    from slmops.bench.__main__ import main

    assert main(["--list"]) == 0
    assert "decode_tokens_per_second:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--only", "no_such_benchmark"])
