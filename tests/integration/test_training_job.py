"""The training job end to end on real Ray Train: a tiny student distilled from a tiny teacher."""

from __future__ import annotations

import pytest

from slmops.core import artifacts
from slmops.demo import task
from slmops.testing.tiny import build_model, count_parameters, train_tokenizer
from slmops.training import job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A teacher checkpoint artifact and a dataset artifact of 160 addition examples."""
    root = tmp_path_factory.mktemp("training")
    tokenizer = train_tokenizer(task.tokenizer_corpus(), root / "tok", vocab_size=task.TOKENIZER_VOCAB_SIZE)
    teacher = build_model(
        root / "teacher",
        tokenizer,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    artifacts.finalize(str(teacher), "checkpoint")
    examples = task.make_examples(160, seed=5)
    dataset = task.write_dataset(examples[:128], examples[128:], root / "dataset")
    artifacts.finalize(str(dataset), "dataset")
    return {"teacher": artifacts.to_uri(teacher), "dataset": artifacts.to_uri(dataset), "root": root}


def test_distill_student_from_config_on_two_workers(ray_cluster, inputs, capfd):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    events: list[tuple[float, str, dict]] = []
    config = {
        "method": "sft_distill",
        "base": {
            "model": inputs["teacher"],
            "from_config": True,
            "config_overrides": {"hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32},
        },
        "dataset_uri": inputs["dataset"],
        "hyperparameters": {
            "learning_rate": 1e-2,
            "epochs": 3,
            "batch_size": 32,
            "max_seq_length": 16,
            "warmup_ratio": 0.1,
            "seed": 1,
        },
        # Two workers: gradients are averaged by DistributedDataParallel over gloo.
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
    }
    output = str(inputs["root"] / "student")
    result = job.run(config, output, lambda f, m, **k: events.append((f, m, k)), trace_id="ab" * 16)

    assert result["output_uri"] == artifacts.to_uri(output)
    metrics = result["metrics"]
    assert metrics["steps"] == 12  # 3 epochs of 128 examples in global batches of 32
    assert metrics["train_loss"] < metrics["initial_loss"]
    assert metrics["eval_loss"] < metrics["initial_loss"]
    assert metrics["tokens_per_second"] > 0 and metrics["train_seconds"] > 0
    assert (metrics["train_examples"], metrics["validation_examples"]) == (128, 32)

    manifest = artifacts.read_manifest(result["output_uri"])
    assert manifest.kind == "checkpoint" and manifest.id == result["artifact_id"]
    assert manifest.parents == [inputs["dataset"], inputs["teacher"]]
    assert manifest.trace_id == "ab" * 16
    assert manifest.metrics["parameters"] == count_parameters(output) == metrics["parameters"]
    assert manifest.spec["base"]["config_overrides"]["hidden_size"] == 16
    assert "model.safetensors" in manifest.hashes

    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (16, 1)
    assert model.config.eos_token_id == tokenizer.eos_token_id is not None
    encoded = tokenizer("12+34=", return_tensors="pt")
    generated = model.generate(**encoded, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > encoded["input_ids"].shape[1]

    # Rank 0's progress lines reach the driver's output once each (the job log).
    lines = [line for line in capfd.readouterr().out.splitlines() if "SLMOPS_PROGRESS" in line]
    steps = [line for line in lines if "epoch 3/3, step 12/12" in line]
    assert len(steps) == 1, "\n".join(lines)

    fractions = [f for f, _, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1][2]["eval_loss"] == metrics["eval_loss"]
