"""The demo pipeline from its YAML, through the pipeline service and the CLI, on tiny models,
on the production parts: every service's job store on one PostgreSQL database and
the artifact root on an S3 API (moto's server on loopback), so every stage writes
its artifact to S3 and the next stage reads it from there; the local serving
backend fetches each model from S3 into its cache (checking the manifest's hashes)
before it serves it.

The file is examples/demo-pipeline.yaml with its inputs and sizes made tiny: a
random teacher of a few thousand parameters, 24 prompts, a few training steps,
and an fp32 conversion (random weights are too fragile for int4 to be judged).
The evaluation's held-out prompts are the synthesized dataset's validation
split, whose expected answers are the teacher's own, so the teacher scores
100% and a student is judged by how well it keeps the teacher's answers.

1. A first run runs every stage; the student (the teacher's weights, barely
   tuned) keeps the teacher's answers, the gate passes and the canary is promoted.
   The served revision's lineage goes back to the prompts file, and one trace id
   covers the test, the services, the Ray jobs and the predictors.
2. A second run of the same file reuses every stage and runs nothing.
3. A changed training config reruns training and what follows, nothing before:
   a new random student whose output layer is not tied to its embeddings (a
   random model with tied embeddings echoes its last input token, as the tiny
   teacher does, and would keep the teacher's answers by accident); it does not
   keep the teacher's answers, the gate fails and the canary is rolled back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from slmops.api.v1 import common_pb2, serving_pb2
from slmops.cli import client
from slmops.cli.main import main as cli_main
from slmops.core import artifacts, tracing
from slmops.demo import task
from slmops.testing.tiny import build_model, train_tokenizer

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo-pipeline.yaml"
JOB_KINDS = ("synthesize", "train", "convert", "evaluate")
AFTER_TRAINING = ["student", "student-int4", "student-endpoint", "canary", "evaluate", "gate", "rollout"]
# Whose spans carry the first run's trace id, started in this process: the services, the Ray jobs and the
# predictors. (This process's own spans go where its tracing was first set up, maybe by an earlier test.)
TRACED = {
    "slmops-pipeline",
    "slmops-serving",
    "slmops-synthesis",
    "slmops-synthesis-job",
    "slmops-training",
    "slmops-training-job",
    "slmops-conversion-job",
    "slmops-evaluation-job",
    "slmops-predictor",
}


def tiny_pipeline(folder: Path) -> dict:
    """The demo pipeline with tiny inputs and sizes (everything else as in the example)."""
    tokenizer = train_tokenizer(task.tokenizer_corpus(), folder / "tok", task.TOKENIZER_VOCAB_SIZE)
    build_model(folder / "teacher-config", tokenizer, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)  # fmt: skip
    examples = task.make_examples(60, seed=5)
    task.write_dataset(examples[:32], examples[32:36], folder / "ground-truth")
    # Prompts only: the expected answers of the evaluation are then the teacher's own.
    (folder / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": e["prompt"]}) + "\n" for e in examples[36:])
    )

    data = yaml.safe_load(EXAMPLE.read_text())
    stages = data["stages"]
    stages["ground-truth"]["uri"] = "ground-truth"
    stages["teacher-config"]["uri"] = "teacher-config"
    stages["prompts"]["uri"] = "prompts.jsonl"
    small = {"max_steps": 2, "batch_size": 8, "max_seq_length": 16, "learning_rate": 1e-3, "seed": 1}
    resources = {"num_workers": 1, "cpus_per_worker": 1}
    stages["teacher"]["spec"].update(hyperparameters=small, resources=resources)
    # The student starts from the teacher's weights and barely moves: it keeps the teacher's answers.
    stages["student"]["spec"].update(
        base={}, hyperparameters={**small, "learning_rate": 1e-7}, resources=resources
    )
    stages["answers"]["spec"].update(sampling={"max_tokens": 3, "temperature": 0.0}, filters={}, num_shards=2,
                                     validation_fraction=0.34)  # fmt: skip
    stages["student-int4"]["spec"] = {"precision": "FP32", "execution_provider": "CPU"}
    del stages["held-out"]
    stages["evaluate"]["dataset"] = "answers"  # expected answers: the teacher's
    stages["evaluate"]["spec"].update(
        sampling={"max_tokens": 3}, concurrency_levels=[1, 4], quality_metrics=["rouge_l", "chrf", "bleu"],
        gate={"candidate": "student-int4", "min_retention_by_metric": {"chrf": 0.6}},
    )  # fmt: skip
    return data


def run_file(data: dict, path: Path, capsys) -> tuple[int, dict, float]:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    capsys.readouterr()
    started = time.time()
    code = cli_main(["pipeline", "run", str(path), "--json"])
    took = time.time() - started
    out = capsys.readouterr()
    assert out.out, f"exit {code}: {out.err[-3000:]}"
    return code, json.loads(out.out), took


def job_kinds(database_url: str) -> set[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(sqlalchemy.text("SELECT DISTINCT kind FROM jobs")).scalars())
    finally:
        engine.dispose()


def stage_map(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["stages"]}


def read_report(uri: str) -> dict:
    import fsspec

    with fsspec.open(f"{uri}/report.json", "r") as fh:
        return json.load(fh)


def traced_services(data_dir: Path, trace_id: str, timeout: float = 20.0) -> set[str]:
    """The services whose spans in the stack's spans file carry trace_id (waiting for TRACED to show)."""
    services: set[str] = set()
    deadline = time.time() + timeout
    while time.time() < deadline and not TRACED <= services:
        time.sleep(1)
        spans = tracing.read_spans(data_dir / "traces" / "spans.jsonl")  # with the rotated files
        services = {span["service"] for span in spans if span["trace_id"] == trace_id}
    return services


def test_the_demo_pipeline_runs_reuses_and_reruns_from_training(production_stack, capsys, tmp_path):
    data = tiny_pipeline(tmp_path)
    path = tmp_path / "pipeline.yaml"

    tracing.setup_tracing("e2e-test")  # a real tracer (a no-op when one is set up already)
    with tracing.tracer().start_as_current_span("e2e"):
        trace_id = tracing.current_trace_id()
        code, first, took_first = run_file(data, path, capsys)
    assert code == 0, first["status"]
    stages = stage_map(first)
    assert list(stages) == list(data["stages"])
    assert all(s["state"] == "SUCCEEDED" and not s.get("reused") for s in stages.values()), first["stages"]
    assert stages["gate"]["detail"]["passed"] == "true"
    assert stages["rollout"]["detail"]["action"] == "promoted"
    deployment = client.call(
        client.stub("serving").GetDeployment, serving_pb2.GetDeploymentRequest(name="student")
    )
    assert deployment.serving_revision == int(stages["canary"]["detail"]["revision"])
    bucket = production_stack["bucket"]
    outputs = [s["output"]["uri"] for s in stages.values() if data["stages"][s["name"]]["kind"] in JOB_KINDS]
    assert len(outputs) == 5 and all(uri.startswith(f"{bucket}/artifacts/") for uri in outputs), outputs
    assert first["report_uri"].startswith(f"{bucket}/") and artifacts.is_artifact(first["report_uri"])
    assert artifacts.size_bytes(f"{first['report_uri']}/report.html") > 0
    results = {r["name"]: r for r in read_report(first["report_uri"])["results"]}
    assert results["teacher"]["quality"]["accuracy"] == 1.0
    assert [level["concurrency"] for level in results["student-int4"]["sweep"]] == [1, 4]
    # The served revision's lineage goes back to the prompts file.
    kinds = [ref["kind"] for ref in first["lineage"]]
    assert kinds[:4] == ["deployment", "onnx-model", "checkpoint", "dataset"] and kinds[-1] == "file"
    assert first["lineage"][-1]["uri"].endswith("prompts.jsonl")
    assert all(ref["uri"].startswith(f"{bucket}/") for ref in first["lineage"][:4])
    # The served revision was fetched from S3 into the serving cache, and the deployment records the S3 URI.
    served = next(r for r in deployment.revisions if r.number == deployment.serving_revision)
    assert served.model_uri == stages["student-int4"]["output"]["uri"]
    cached = production_stack["data_dir"] / "cache" / "models" / artifacts.read_manifest(served.model_uri).id
    assert (cached / "genai_config.json").is_file()
    # The served revision's own artifact has the run's lineage, in the artifact store and in `slmops lineage`.
    chain = artifacts.lineage(served.artifact.uri)
    assert [(m.kind, m.uri) for m in chain] == [(ref["kind"], ref["uri"]) for ref in first["lineage"]]
    assert cli_main(["lineage", served.artifact.uri]) == 0
    assert first["lineage"][-1]["uri"] in capsys.readouterr().out
    # One trace covers the first run: this process, the services, the Ray jobs and the predictors.
    tracing.shutdown_tracing()
    services = traced_services(production_stack["data_dir"], trace_id)
    assert TRACED <= services, TRACED - services
    # Every job of every service is one row in the one PostgreSQL database.
    assert job_kinds(production_stack["database_url"]) >= {
        "synthesis",
        "training",
        "conversion",
        "evaluation",
    }

    code, second, took_second = run_file(data, path, capsys)
    assert code == 0
    assert all(s["reused"] for s in second["stages"]), [
        s["name"] for s in second["stages"] if not s.get("reused")
    ]
    assert [s["output"]["uri"] for s in second["stages"]] == [s["output"]["uri"] for s in first["stages"]]
    assert took_second < took_first / 3

    # A new random student: training and everything after it run again, nothing before.
    data["stages"]["student"]["spec"].update(
        base={"from_config": True, "config_overrides": {"tie_word_embeddings": "false"}},
        hyperparameters={"max_steps": 1, "batch_size": 8, "max_seq_length": 16, "learning_rate": 1e-7, "seed": 7},
    )  # fmt: skip
    code, third, _ = run_file(data, path, capsys)
    stages = stage_map(third)
    assert code == 3, third["status"]  # the gate failed
    reused = [name for name, s in stages.items() if s.get("reused")]
    assert reused == [n for n in data["stages"] if n not in AFTER_TRAINING]
    assert stages["gate"]["detail"]["passed"] == "false" and "chrf" in stages["gate"]["detail"]["reasons"]
    assert stages["rollout"]["detail"]["action"] == "rolled back"
    assert "rolled back" in third["status"]["reason"]
    deployment = client.call(
        client.stub("serving").GetDeployment, serving_pb2.GetDeploymentRequest(name="student")
    )
    canary = int(stages["canary"]["detail"]["revision"])
    assert deployment.serving_revision == int(stages["student-endpoint"]["detail"]["revision"]) != canary
    assert all(r.traffic_percent == 0 for r in deployment.revisions if r.number == canary)


def test_bad_input_is_rejected_before_any_stage_runs(production_stack, capsys, tmp_path):
    data = tiny_pipeline(tmp_path)
    data["stages"]["student"]["dataset"] = "answerz"  # a missing stage
    data["stages"]["teacher"]["spec"]["hyperparameters"]["epochs"] = "many"  # a wrong type
    data["stages"]["canary"]["colour"] = "red"  # an unknown key
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    capsys.readouterr()
    assert cli_main(["pipeline", "run", str(path)]) == 2
    text = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in text and "stages.student.dataset" in text and "answerz" in text
    assert "stages.teacher.spec" in text and "stages.canary.colour" in text

    # A spec that only its own service can judge: the training service names the field.
    data = tiny_pipeline(tmp_path)
    data["stages"]["student"]["spec"]["hyperparameters"]["learning_rate"] = -1
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert cli_main(["pipeline", "run", str(path)]) == 2
    text = capsys.readouterr().err
    assert "stages.student.spec.hyperparameters.learning_rate" in text
    runs = client.call(client.stub("pipeline").ListPipelineRuns, common_pb2.ListJobsRequest())
    assert all(run.spec.name != "bad" for run in runs.runs)  # nothing was started
