"""Rollouts on the local backend: real predictor processes serving a tiny ORT GenAI model behind the router.

- a 25% canary gets its share of 400 completions, within a stated tolerance;
- promote sends everything to the canary and rollback everything back, with no
  failed request while either happens;
- a predictor killed with SIGKILL is READY again within 30 s while the router
  sends its requests to the other revision;
- a stopped service's deployments come back on the next start; a restarted
  service adopts live predictors and never starts a second one.

The figures (split, promote and rollback times, restart time) are printed (-s).
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import threading
import time

import httpx
import pytest

from slmops.core import predictor_key
from slmops.core.jobs.store import JobStore
from slmops.serving.deployments import Deployments, revision_id
from tests.integration._models import tiny_onnx

pytestmark = pytest.mark.integration

REQUESTS = 400
CANARY = 25
# 400 draws at p = 0.25 have a standard deviation of 8.7 requests; 3.5 of them is 30 requests (7.5 points).
TOLERANCE = 30


async def until(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


def auth() -> dict[str, str]:
    """The predictors' key as clients send it (the env fixture makes one, as `slmops up` does)."""
    return {"Authorization": f"Bearer {predictor_key.read()}"}


def ready(url: str) -> bool:
    try:
        return (
            httpx.get(f"{url}/v2/health/ready", timeout=2, trust_env=False, headers=auth()).status_code == 200
        )
    except httpx.HTTPError:
        return False


def settled(deployments: Deployments, name: str) -> bool:
    record = deployments.get(name)
    return record.state == "READY" and record.result.get("settled") == record.config.get("generation")


def complete(client: httpx.Client, url: str) -> tuple[str, int]:
    """One completion through the router: (the revision that answered, the status)."""
    try:
        response = client.post(f"{url}/openai/v1/completions", headers=auth(),
                               json={"model": "tiny", "prompt": "hello", "max_tokens": 2, "temperature": 0})  # fmt: skip
    except httpx.HTTPError as exc:
        return type(exc).__name__, 0
    return response.headers.get("x-slmops-revision", ""), response.status_code


class Load:
    """Completions sent without pause from two threads until stopped; every answer is kept."""

    def __init__(self, url: str):
        self.url, self.answers, self._stop = url, [], threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=30) as client:
            while not self._stop.is_set():
                self.answers.append((time.monotonic(), *complete(client, self.url)))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def failures(self) -> list:
        return [a for a in self.answers if a[2] != 200]

    def all_from(self, revision: str, since: float) -> float | None:
        """When every answer after that moment came from `revision` (None while some still do not)."""
        later = [a for a in self.answers if a[0] >= since]
        others = [a[0] for a in later if a[1] != revision]
        return (max(others) if others else since) - since if later and later[-1][1] == revision else None


@pytest.fixture
def env(tmp_path_factory, tmp_path, monkeypatch):
    model = tiny_onnx(tmp_path_factory)
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", str(model.parent))
    monkeypatch.setenv("SLMOPS_SERVING_BACKEND", "local")
    # Predictors and routers require the key, as under `slmops up` (and whatever another module's stack set).
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(predictor_key.ensure(tmp_path / "data")))
    return model, f"sqlite:///{tmp_path}/serving.db"


@pytest.mark.reliability("canary, promote and rollback under load", expected="no request fails")
async def test_canary_split_promote_and_rollback_without_a_failed_request(env):
    model, db = env
    deployments = Deployments(JobStore(db), poll_s=0.5)
    deployments.resume()
    try:
        await deployments.create({"name": "tiny", "model_uri": str(model)})
        await until(lambda: settled(deployments, "tiny"), 120)
        url = deployments.get("tiny").result["url"]

        await deployments.update("tiny", str(model), [], CANARY)
        await until(lambda: settled(deployments, "tiny"), 120)
        assert deployments.get("tiny").result["traffic"] == {"1": 100 - CANARY, "2": CANARY}
        with httpx.Client(trust_env=False, timeout=30) as client:
            answers = [complete(client, url) for _ in range(REQUESTS)]
        counts = collections.Counter(answers)
        print(f"\ncanary split over {REQUESTS} completions: {dict(counts)}")
        assert counts[("1", 200)] + counts[("2", 200)] == REQUESTS, counts
        assert abs(counts[("2", 200)] - REQUESTS * CANARY / 100) <= TOLERANCE, counts

        with Load(url) as load:
            await asyncio.sleep(1.0)
            asked = time.monotonic()
            await deployments.promote("tiny")
            promoted = await until(lambda: load.all_from("2", asked) is not None, 60)
            await asyncio.sleep(1.0)
            await until(lambda: settled(deployments, "tiny"), 60)
            asked = time.monotonic()
            await deployments.rollback("tiny")
            rolled_back = await until(lambda: load.all_from("1", asked) is not None, 120)
            await asyncio.sleep(1.0)
        print(f"promote: all traffic on revision 2 {promoted:.2f}s after the call; rollback (revision 1 started "
              f"again): {rolled_back:.2f}s; {len(load.answers)} completions meanwhile")  # fmt: skip
        assert not load.failures(), load.failures()[:5]
        assert len(load.answers) > 20
        await until(lambda: settled(deployments, "tiny"), 60)
        record = deployments.get("tiny")
        assert (record.config["serving"], record.config["latest"], record.result["traffic"]) == (
            1,
            1,
            {"1": 100},
        )
        assert deployments.store.get(revision_id("tiny", 2)).state == "RETIRED"
        assert "rolled back" in deployments.store.get(revision_id("tiny", 2)).reason
    finally:
        await deployments.close()


@pytest.mark.reliability(
    "a serving predictor is killed", expected="it comes back; a restart never starts two"
)
async def test_a_killed_predictor_comes_back_and_a_restart_never_starts_two(env):
    model, db = env
    opened: list[Deployments] = []
    try:
        await _killed_and_restarted(model, db, opened)
    finally:
        for deployments in opened:
            await deployments.close()


async def _killed_and_restarted(model, db, opened: list[Deployments]) -> None:
    """The test's body; every Deployments it opens is closed, with its predictors, however it ends."""
    first = Deployments(JobStore(db), poll_s=0.5)
    opened.append(first)
    first.resume()
    await first.create({"name": "tiny", "model_uri": str(model)})
    await until(lambda: settled(first, "tiny"), 120)
    await first.update("tiny", str(model), [], 50)
    await until(lambda: settled(first, "tiny"), 120)
    url = first.get("tiny").result["url"]
    canary = first.store.get(revision_id("tiny", 2))
    pid = canary.result["runtime"]["pid"]

    with Load(url) as load:
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def back() -> bool:
            rev = first.store.get(revision_id("tiny", 2))
            return (
                rev.state == "READY"
                and rev.result["runtime"]["pid"] not in (0, pid)
                and ready(rev.result["url"])
            )

        restart = await until(back, 30)
        await asyncio.sleep(1.0)
    print(f"\nSIGKILLed predictor READY again after {restart:.2f}s; {len(load.answers)} completions meanwhile, "
          f"{len(load.failures())} failed")  # fmt: skip
    assert not load.failures(), load.failures()[:5]
    # Restarting waits 1 s (backoff) and loading takes longer: meanwhile revision 1 answers everything.
    meanwhile = [a for a in load.answers if killed + 0.2 < a[0] < killed + 1.0]
    assert meanwhile and all(a[1] == "1" for a in meanwhile), meanwhile
    assert first.get("tiny").result["url"] == url
    pids = {n: first.store.get(revision_id("tiny", n)).result["runtime"]["pid"] for n in (1, 2)}

    # The service stops with its predictors; the next one brings both revisions back on the same URL.
    await first.close(stop_predictors=True)
    await until(lambda: not ready(url), 15)
    second = Deployments(JobStore(db), poll_s=0.5)
    opened.append(second)
    second.resume()
    await until(lambda: settled(second, "tiny") and ready(url), 90)
    again = {n: second.store.get(revision_id("tiny", n)).result["runtime"]["pid"] for n in (1, 2)}
    assert set(again.values()).isdisjoint(pids.values())
    await second.close(stop_predictors=False)  # the predictors keep running

    third = Deployments(JobStore(db), poll_s=0.5)
    opened.append(third)
    third.resume()
    await until(lambda: settled(third, "tiny") and ready(url), 30)
    await asyncio.sleep(1.5)
    adopted = {n: third.store.get(revision_id("tiny", n)).result["runtime"]["pid"] for n in (1, 2)}
    assert adopted == again  # adopted, not started a second time
    deleted = await third.delete("tiny")
    assert deleted.state == "DELETED"
    await until(lambda: not ready(url), 15)
    assert all(r.state == "RETIRED" for r in third.revisions("tiny"))
    for pid in adopted.values():
        await until(lambda pid=pid: not _exists(pid), 15)

    # The name deployed again continues its history.
    await third.create({"name": "tiny", "model_uri": str(model)})
    record = third.get("tiny")
    assert (record.config["serving"], [r.config["number"] for r in third.revisions("tiny")]) == (3, [1, 2, 3])
    await third.delete("tiny")
    await third.close()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _report(folder, passed: bool):
    """An evaluation report's verdict, as the evaluation job writes it (report.json)."""
    import json

    folder.mkdir(parents=True)
    reasons = ["student-int4: ok: retention 0.950 >= min 0.500"] if passed else \
        ["student-int4: FAILED: retention 0.200 < min 0.500", "student-int4: ok: accuracy 0.300 >= min 0.100"]  # fmt: skip
    (folder / "report.json").write_text(json.dumps({"verdict": {"evaluated": True, "passed": passed,
                                                                "reasons": reasons}}))  # fmt: skip
    return str(folder)


@pytest.mark.reliability("a bad rollout or a failing gate", expected="refused; the promotion is blocked")
async def test_bad_rollouts_are_refused_and_the_gate_blocks_a_failed_promotion(env, tmp_path, monkeypatch):
    from slmops.core.errors import AlreadyExists, Conflict, InvalidSpec, NotFound

    model, db = env
    monkeypatch.setenv("SLMOPS_ALLOWED_ROOTS", f"{model.parent}{os.pathsep}{tmp_path}")
    deployments = Deployments(JobStore(db), poll_s=0.5)
    deployments.resume()
    try:
        with pytest.raises(InvalidSpec) as info:
            await deployments.update("tiny", str(model), [], 20)
        assert info.value.field == "canary_traffic_percent"
        with pytest.raises(InvalidSpec) as info:
            await deployments.create({"name": "Tiny_1", "model_uri": str(model)})
        assert info.value.field == "spec.name"
        with pytest.raises(InvalidSpec) as info:
            await deployments.create({"name": "tiny", "model_uri": str(model), "canary_traffic_percent": 20})
        assert info.value.field == "spec.canary_traffic_percent"
        with pytest.raises(NotFound):
            await deployments.create({"name": "tiny", "model_uri": str(tmp_path / "no-such-model")})
        with pytest.raises(NotFound):
            await deployments.promote("tiny")

        await deployments.create({"name": "tiny", "model_uri": str(model)})
        with pytest.raises(AlreadyExists):
            await deployments.create({"name": "tiny", "model_uri": str(model)})
        await until(lambda: settled(deployments, "tiny"), 120)
        with pytest.raises(Conflict, match="no canary"):
            await deployments.promote("tiny")
        with pytest.raises(Conflict, match="no earlier revision"):
            await deployments.rollback("tiny")

        # A canary whose predictor cannot start fails, with its log, and the serving revision keeps everything.
        broken = tmp_path / "broken-model"
        broken.mkdir()
        (broken / "genai_config.json").write_text("{}")
        await deployments.update("tiny", str(broken), [], 30)
        await until(lambda: deployments.store.get(revision_id("tiny", 2)).state == "FAILED", 60)
        assert "before it was ready" in deployments.store.get(revision_id("tiny", 2)).reason
        await until(lambda: settled(deployments, "tiny"), 30)
        assert deployments.get("tiny").state == "READY" and deployments.get("tiny").result["traffic"] == {
            "1": 100
        }
        with pytest.raises(Conflict, match="no canary"):
            await deployments.promote("tiny")

        await deployments.update("tiny", str(model), [], 30)
        with pytest.raises(Conflict, match="already runs a canary"):
            await deployments.update("tiny", str(model), [], 10)
        events = [e.message async for e in deployments.watch("tiny")]
        assert (
            "revision 3: canary at 30%" in events and "traffic: revision 1: 70%, revision 3: 30%" in events
        ), events
        with pytest.raises(Conflict) as info:
            await deployments.promote("tiny", _report(tmp_path / "bad-report", passed=False))
        assert "retention 0.200 < min 0.500" in str(info.value) and "accuracy" not in str(info.value)
        assert deployments.get("tiny").config["serving"] == 1  # nothing changed
        with pytest.raises(NotFound):
            await deployments.promote("tiny", str(tmp_path / "no-report"))
        promoted = await deployments.promote("tiny", _report(tmp_path / "good-report", passed=True))
        assert promoted.config["serving"] == 3 and "gate passed" in promoted.message
        await until(lambda: settled(deployments, "tiny"), 60)
        assert deployments.get("tiny").result["traffic"] == {"3": 100}
        assert deployments.get("tiny").output_uri.endswith("/deployments/tiny-3")
    finally:
        await deployments.close()
