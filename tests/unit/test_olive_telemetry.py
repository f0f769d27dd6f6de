"""Conversion turns Olive's telemetry off before Olive could send its first heartbeat."""

from __future__ import annotations

import importlib

import pytest

from slmops.conversion import olive_compat

telemetry = importlib.import_module("olive.telemetry.telemetry")


@pytest.mark.reliability(
    "Olive, run by a conversion, would send a usage heartbeat to a Microsoft host",
    expected="telemetry off before Olive's logger is made: no heartbeat, no logger",
)
def test_no_heartbeat_is_sent_once_telemetry_is_off(monkeypatch, probe):
    for var in telemetry._CI_ENV_VARS:  # outside CI, the case where Olive sends a heartbeat at once
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("OLIVE_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setattr(telemetry.Telemetry, "_instance", None)
    monkeypatch.setattr(
        telemetry.Telemetry, "_is_ci_environment", telemetry.Telemetry.__dict__["_is_ci_environment"]
    )
    beats: list[int] = []
    monkeypatch.setattr(telemetry.Telemetry, "_log_heartbeat", lambda self, *a, **k: beats.append(1))
    monkeypatch.setattr(telemetry.Telemetry, "_create_logger", lambda self: None)

    olive_compat.no_telemetry()
    instance = telemetry.Telemetry()

    assert beats == []
    assert instance._initialized
    probe.saw(f"{len(beats)} heartbeats; OLIVE_DISABLE_TELEMETRY set before the first logger")


def test_without_the_switch_olive_would_send_one(monkeypatch):
    """The stand-in above is the real path: the same setup without no_telemetry sends one heartbeat."""
    for var in telemetry._CI_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OLIVE_DISABLE_TELEMETRY", "1")  # set, yet read only after the heartbeat
    monkeypatch.setattr(telemetry.Telemetry, "_instance", None)
    beats: list[int] = []
    monkeypatch.setattr(telemetry.Telemetry, "_log_heartbeat", lambda self, *a, **k: beats.append(1))
    monkeypatch.setattr(telemetry.Telemetry, "_create_logger", lambda self: None)
    monkeypatch.setattr(telemetry.Telemetry, "disable_telemetry", lambda self: None)
    telemetry.Telemetry()
    assert beats == [1]


def test_no_logger_is_made_so_no_event_is_queued_for_exit(monkeypatch):
    """Olive logs an event per workflow run; with its logger made (even disabled) they were posted at
    exit. Once telemetry is off there is no logger at all, also for an instance made before."""
    monkeypatch.setattr(telemetry.Telemetry, "_instance", None)
    monkeypatch.setattr(telemetry.Telemetry, "_create_logger", telemetry.Telemetry.__dict__["_create_logger"])
    monkeypatch.setattr(
        telemetry.Telemetry, "_is_ci_environment", telemetry.Telemetry.__dict__["_is_ci_environment"]
    )

    class Logger:
        disabled = False

        def disable_telemetry(self) -> None:
            self.disabled = True

    earlier = telemetry.Telemetry.__new__(telemetry.Telemetry)
    earlier._logger, earlier._initialized = Logger(), True
    monkeypatch.setattr(telemetry.Telemetry, "_instance", earlier)
    logger = earlier._logger
    olive_compat.no_telemetry()
    assert logger.disabled and earlier._logger is None
    monkeypatch.setattr(telemetry.Telemetry, "_instance", None)
    assert telemetry.Telemetry()._logger is None
