"""The whole flow through the real stack on tiny models.

A tiny teacher (random weights) is served by the serving service; synthesis
calls it over the OpenAI API; a smaller student is distilled on Ray Train,
converted to int4 by Olive, deployed, and evaluated against the teacher. Then
lineage runs from the deployment back to the prompts file, and one trace id
covers the test, the services, the Ray jobs and the predictors.
"""

from __future__ import annotations

import json
import time

import pytest
from openai import OpenAI

from slmops.api.v1 import serving_pb2
from slmops.cli import client
from slmops.cli.main import main as cli_main
from slmops.core import artifacts, tracing
from slmops.demo import steps, task
from slmops.testing.tiny import build_model, count_parameters, train_tokenizer

pytestmark = pytest.mark.e2e


def test_synthesis_to_evaluation_through_the_services(stack, capsys):
    data_dir = stack["data_dir"]
    inputs = data_dir / "inputs"
    tokenizer = train_tokenizer(task.tokenizer_corpus(), inputs / "tok", task.TOKENIZER_VOCAB_SIZE)
    teacher_dir = build_model(
        inputs / "teacher",
        tokenizer,
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        max_position_embeddings=32,
    )
    examples = task.make_examples(40, seed=3)
    prompts = task.write_prompts(examples[:30], inputs / "prompts.jsonl")
    held_out = task.write_prompts(examples[30:], inputs / "held-out.jsonl")

    tracing.setup_tracing("e2e-test")
    with tracing.tracer().start_as_current_span("e2e"):
        trace_id = tracing.current_trace_id()
        teacher = steps.deploy("teacher", str(teacher_dir))
        openai = OpenAI(base_url=f"{teacher.url}/openai/v1", api_key="none")
        reply = openai.completions.create(model="teacher", prompt="12+34=", max_tokens=3)
        assert reply.usage.completion_tokens >= 1

        dataset = steps.synthesize(
            artifacts.to_uri(prompts), f"{teacher.url}/openai/v1", "teacher", max_tokens=3
        )
        assert dataset.status.metrics["num_prompts"] == 30
        student = steps.train(
            "student",
            "SFT_DISTILL",
            artifacts.to_uri(teacher_dir),
            dataset.status.output.uri,
            {"max_steps": 4, "batch_size": 8, "max_seq_length": 16, "learning_rate": 1e-3},
            {"num_workers": 1, "cpus_per_worker": 1},
            from_config=True,
            overrides={
                "hidden_size": "32",
                "num_hidden_layers": "1",
                "intermediate_size": "32",
                "num_attention_heads": "2",
                "num_key_value_heads": "1",
            },
        )
        student_dir = artifacts.local_path(student.status.output.uri)
        assert count_parameters(student_dir) * 5 <= count_parameters(teacher_dir)
        onnx = steps.convert(student.status.output.uri)
        assert (artifacts.local_path(onnx.status.output.uri) / "genai_config.json").exists()
        deployed = steps.deploy("student-int4", onnx.status.output.uri)
        evaluation = steps.evaluate(
            artifacts.to_uri(held_out),
            [steps.target("teacher", "teacher"), steps.target("student-int4", "student-int4")],
            reference="teacher",
            candidate="student-int4",
            max_tokens=3,
            min_retention=0.0,
        )
    names = [r.name for r in evaluation.results]
    assert names == ["teacher", "student-int4"]
    for result in evaluation.results:
        assert result.num_prompts == 10 and result.latency_p50_ms > 0 and result.size_bytes > 0
    report_dir = artifacts.local_path(evaluation.status.output.uri)
    assert (report_dir / "report.md").exists() and json.loads((report_dir / "report.json").read_text())

    # Lineage: deployment -> onnx-model -> checkpoint -> dataset -> prompts file.
    kinds = [m.kind for m in artifacts.lineage(deployed.artifact.uri)]
    assert kinds == ["deployment", "onnx-model", "checkpoint", "dataset", "file"]
    assert cli_main(["lineage", deployed.artifact.uri]) == 0
    assert str(prompts) in capsys.readouterr().out

    # One trace: spans with the test's trace id from services, Ray jobs and predictors.
    tracing.shutdown_tracing()
    services: set[str] = set()
    deadline = time.time() + 20
    wanted = {
        "slmops-e2e-test",
        "slmops-serving",
        "slmops-synthesis",
        "slmops-synthesis-job",
        "slmops-training",
        "slmops-training-job",
        "slmops-conversion-job",
        "slmops-evaluation-job",
        "slmops-predictor",
    }
    while time.time() < deadline and not wanted <= services:
        time.sleep(1)
        spans = [json.loads(line) for line in (data_dir / "traces" / "spans.jsonl").read_text().splitlines()]
        services = {s["service"] for s in spans if s["trace_id"] == trace_id}
    assert wanted <= services, wanted - services
    deleted = client.call(
        client.stub("serving").DeleteDeployment, serving_pb2.DeleteDeploymentRequest(name="teacher")
    )
    assert deleted.state == serving_pb2.DEPLOYMENT_DELETED
