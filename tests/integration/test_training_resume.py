"""A Ray Train worker killed mid-run: the run resumes from its last checkpoint, not from step 0."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest

from slmops.core import artifacts
from slmops.demo import task
from slmops.testing.tiny import build_model, train_tokenizer
from slmops.training import engine, job

pytestmark = pytest.mark.integration


def _train_workers() -> list[psutil.Process]:
    """This test's Ray Train workers: descendants of this process (its Ray's raylet starts them), never
    those of a Ray another test process runs on the machine at the same time."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "RayTrainWorker" in cmdline:
            found.append(proc)
    return found


def _registered_checkpoint(run_dir) -> bool:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
    except (OSError, ValueError):
        return False


@pytest.mark.reliability(
    "a training worker is killed mid-run", expected="training resumes from the last checkpoint"
)
def test_killed_worker_resumes_from_the_last_checkpoint(tmp_path, capfd):
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    try:
        tokenizer = train_tokenizer(
            task.tokenizer_corpus(), tmp_path / "tok", vocab_size=task.TOKENIZER_VOCAB_SIZE
        )
        base = build_model(
            tmp_path / "base",
            tokenizer,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=256,
            max_position_embeddings=32,
        )
        examples = task.make_examples(640, seed=2)
        dataset = task.write_dataset(examples[:600], examples[600:], tmp_path / "dataset")
        config = {
            "method": "sft_distill",
            "base": {"model": artifacts.to_uri(base)},
            "dataset_uri": artifacts.to_uri(dataset),
            "hyperparameters": {
                "learning_rate": 3e-3,
                "epochs": 2,
                "batch_size": 8,
                "max_seq_length": 16,
                "checkpoint_every": 15,
                "seed": 4,
            },
            "resources": {"num_workers": 2, "cpus_per_worker": 1},
            "max_failures": 2,
        }
        output = tmp_path / "student"
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = job.run(config, str(output), lambda *a, **k: None)
            except Exception as exc:  # surfaced by the assertions below
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        storage = engine.storage_path(artifacts.to_uri(output))
        deadline = time.time() + 240
        killed = None
        while time.time() < deadline and thread.is_alive():
            workers = _train_workers()
            # A checkpoint's folder appears before Ray Train's controller registers it; the
            # controller's snapshot names the latest registered one, which a restart resumes from.
            if _registered_checkpoint(tmp_path / os.path.basename(storage) / engine.RUN_NAME) and workers:
                killed = workers[-1].pid
                os.kill(killed, signal.SIGKILL)
                break
            time.sleep(0.2)
        assert killed, "no checkpoint appeared before the run ended"
        thread.join(timeout=400)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        metrics = outcome["result"]["metrics"]
        assert metrics["steps"] == 150  # 2 epochs of 600 examples in global batches of 8
        assert metrics["resumed_from_step"] >= 15
        lines = [line for line in capfd.readouterr().out.splitlines() if "SLMOPS_PROGRESS" in line]
        resumed = [line for line in lines if "resumed train from step" in line]
        assert resumed, "the job's events do not say where it resumed"
    finally:
        if started:
            ray.shutdown()
