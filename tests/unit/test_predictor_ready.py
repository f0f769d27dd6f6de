"""The predictor's READY line: printed once `/v2/health/ready` answers 200, never after a stop."""

from __future__ import annotations

import threading
import time

from slmops.predictor.server import READY_PREFIX, _announce_when_ready
from tests.unit._fakes import JsonHandler, serving


class Health(JsonHandler):
    """Not ready for the first `starting` probes, then ready."""

    starting = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/v2/health/ready":
            self.send_error(404)
        elif Health.starting:
            Health.starting -= 1
            self.reply({"ready": False}, status=503)
        else:
            self.reply({"ready": True})


def test_the_ready_line_comes_once_the_server_is_ready(capsys):
    Health.starting = 3
    with serving(Health) as url:
        _announce_when_ready(url, threading.Event(), timeout_s=10)
    assert capsys.readouterr().out == f"{READY_PREFIX}{url}\n"
    assert Health.starting == 0


def test_no_ready_line_after_a_stop_or_past_the_deadline(capsys, caplog):
    Health.starting = 10**6
    stop = threading.Event()
    with serving(Health) as url:
        stopper = threading.Timer(0.3, stop.set)
        stopper.start()
        begun = time.monotonic()
        _announce_when_ready(url, stop, timeout_s=30)
        assert time.monotonic() - begun < 5
        _announce_when_ready(url, threading.Event(), timeout_s=0.3)
    assert capsys.readouterr().out == ""
    assert caplog.text.count("did not answer") == 1  # the deadline is logged, the stop is not
