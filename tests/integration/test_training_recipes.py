"""Every training recipe on real Ray Train, TRL and peft: a tiny model, a few steps on the CPU.

Each test checks that the loss went down, that the output loads in
transformers (with peft for adapters) and generates, and what the manifest says.
"""

from __future__ import annotations

import json

import pytest

from slmops.core import artifacts
from slmops.core.datasets import dataset_record
from slmops.core.spec_checks import SamplingConfig
from slmops.demo import task
from slmops.synthesis.config import LocalTeacherConfig
from slmops.synthesis.teacher import LocalTeacher
from slmops.testing.tiny import build_model, train_tokenizer
from slmops.training import job

pytestmark = pytest.mark.integration

HPARAMS = {"learning_rate": 1e-2, "epochs": 2, "batch_size": 16, "max_seq_length": 16, "seed": 3}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A pretrained-looking base (random weights), two addition datasets and a top-k dataset."""
    root = tmp_path_factory.mktemp("recipes")
    tokenizer = train_tokenizer(task.tokenizer_corpus(), root / "tok", vocab_size=task.TOKENIZER_VOCAB_SIZE)
    base = build_model(
        root / "base",
        tokenizer,
        hidden_size=64,  # bitsandbytes' 4-bit blocks hold 64 values
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        max_position_embeddings=32,
    )
    artifacts.finalize(str(base), "checkpoint")
    examples = task.make_examples(96, seed=7)
    dataset = task.write_dataset(examples[:80], examples[80:], root / "dataset")
    artifacts.finalize(str(dataset), "dataset")
    other = task.make_examples(96, seed=8, offset=500)
    second = task.write_dataset(other[:80], other[80:], root / "second")
    artifacts.finalize(str(second), "dataset")

    # The base answers as a local teacher, keeping its top-4 log-probabilities with token ids.
    teacher = LocalTeacher(LocalTeacherConfig(model=str(base)), SamplingConfig(max_tokens=4, top_logprobs=4))
    records = [
        dataset_record({"prompt": e["prompt"]}, teacher.complete(e["prompt"]), "base") for e in examples
    ]
    topk = root / "topk"
    topk.mkdir()
    for name, rows in (("train.jsonl", records[:80]), ("validation.jsonl", records[80:])):
        (topk / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    artifacts.finalize(str(topk), "dataset")
    uri = artifacts.to_uri
    return {
        "base": uri(base),
        "dataset": uri(dataset),
        "second": uri(second),
        "topk": uri(topk),
        "root": root,
    }


def _run(inputs, name: str, **config):
    config.setdefault("base", {"model": inputs["base"]})
    config.setdefault("dataset_uri", inputs["dataset"])
    config.setdefault("hyperparameters", HPARAMS)
    events: list[tuple[float, str, dict]] = []
    result = job.run(config, str(inputs["root"] / name), lambda f, m, **k: events.append((f, m, k)))
    return result, events


def _generates(model, tokenizer) -> None:
    encoded = tokenizer("12+34=", return_tensors="pt")
    generated = model.generate(**encoded, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > encoded["input_ids"].shape[1]


def _prompt_loss(model_dir: str, prompts: list[str]) -> float:
    """Mean cross-entropy of a checkpoint on prompt tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    losses = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            losses.append(float(model(input_ids=ids, labels=ids).loss))
    return sum(losses) / len(losses)


def test_sft_distill_and_full_on_their_datasets(ray_cluster, inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmops.core.errors import InvalidSpec

    # A team's own plain-text data: FULL trains on every token of it; SFT_DISTILL refuses it.
    text = inputs["root"] / "text"
    text.mkdir(exist_ok=True)
    lines = [f"{e['prompt']}{e['answer']}" for e in task.make_examples(120, seed=12, offset=1200)]
    (text / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[:100]))
    (text / "validation.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[100:]))
    with pytest.raises(InvalidSpec) as refused:
        _run(inputs, "sft-on-text", method="sft_distill", dataset_uri=artifacts.to_uri(text))
    assert refused.value.field == "spec.dataset_uri" and "prompt, completion" in str(refused.value)

    sft, _ = _run(inputs, "sft", method="sft_distill")
    full, _ = _run(inputs, "full", method="full", dataset_uri=artifacts.to_uri(text))
    for result in (sft, full):
        assert result["kind"] == "checkpoint"
        assert result["metrics"]["train_loss"] < result["metrics"]["initial_loss"]
        folder = artifacts.local_path(result["output_uri"])
        assert (folder / "loss_curve.png").stat().st_size > 1000
        _generates(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))
    # FULL's loss covered whole texts: it predicts a prompt's tokens better than the base and SFT_DISTILL.
    prompts = [e["prompt"] for e in task.make_examples(40, seed=11, offset=900)]
    base = _prompt_loss(artifacts.local_path(inputs["base"]), prompts)
    sft_loss = _prompt_loss(artifacts.local_path(sft["output_uri"]), prompts)
    full_loss = _prompt_loss(artifacts.local_path(full["output_uri"]), prompts)
    assert full_loss < base - 0.5
    assert full_loss < sft_loss - 0.3
    manifest = artifacts.read_manifest(full["output_uri"])
    assert manifest.extra["method"] == "full" and manifest.parents == [artifacts.to_uri(text), inputs["base"]]


def test_lora_writes_an_adapter_artifact_that_peft_loads(ray_cluster, inputs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _ = _run(
        inputs, "lora", method="lora", lora={"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    )
    metrics = result["metrics"]
    assert result["kind"] == "adapter"
    assert metrics["train_loss"] < metrics["initial_loss"]
    assert 0 < metrics["trainable_parameters"] < metrics["parameters"] / 5
    folder = artifacts.local_path(result["output_uri"])
    config = json.loads((folder / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 4
    assert json.loads((folder / "base_model.json").read_text())["base_model"] == inputs["base"]
    manifest = artifacts.read_manifest(result["output_uri"])
    assert manifest.kind == "adapter" and manifest.parents == [inputs["dataset"], inputs["base"]]
    base = AutoModelForCausalLM.from_pretrained(artifacts.local_path(inputs["base"]))
    model = PeftModel.from_pretrained(base, str(folder))
    _generates(model, AutoTokenizer.from_pretrained(folder))


def test_qlora_trains_on_a_4bit_base_and_merges(ray_cluster, inputs):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _ = _run(inputs, "qlora", method="qlora", lora={"rank": 4, "alpha": 8, "merge": True})
    metrics = result["metrics"]
    assert result["kind"] == "checkpoint"  # merged into a float base
    assert metrics["train_loss"] < metrics["initial_loss"]
    folder = artifacts.local_path(result["output_uri"])
    with safe_open(f"{folder}/model.safetensors", framework="pt") as saved:
        assert {saved.get_slice(name).get_dtype() for name in saved.keys()} == {"F32"}
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("lora" in name for name, _ in model.named_parameters())
    _generates(model, AutoTokenizer.from_pretrained(folder))


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_logit_distill_from_a_teacher_model_or_stored_topk(ray_cluster, inputs, mode):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    distill = {"loss": "jsd" if mode == "online" else "forward_kl", "temperature": 2.0, "alpha": 0.7}
    if mode == "online":
        distill["teacher"] = inputs["base"]
    result, events = _run(
        inputs,
        f"kd-{mode}",
        method="logit_distill",
        base={
            "model": inputs["base"],
            "from_config": True,
            "config_overrides": {"hidden_size": 32, "intermediate_size": 64},
        },
        dataset_uri=inputs["dataset"] if mode == "online" else inputs["topk"],
        distill=distill,
    )
    metrics = result["metrics"]
    assert metrics["train_loss"] < metrics["initial_loss"]
    folder = artifacts.local_path(result["output_uri"])
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.hidden_size == 32
    _generates(model, AutoTokenizer.from_pretrained(folder))
    parents = artifacts.read_manifest(result["output_uri"]).parents
    assert (inputs["base"] in parents) and (
        inputs["dataset"] in parents if mode == "online" else inputs["topk"] in parents
    )


def test_multi_adapter_writes_named_adapters_side_by_side(ray_cluster, inputs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _ = _run(
        inputs,
        "multi",
        method="multi_adapter",
        dataset_uri="",
        lora={"rank": 2, "alpha": 4},
        adapters=[
            {"name": "low", "dataset_uri": inputs["dataset"]},
            {"name": "high", "dataset_uri": inputs["second"]},
        ],
    )
    metrics = result["metrics"]
    assert metrics["adapters"] == 2
    for name in ("low", "high"):
        assert metrics[f"{name}.train_loss"] < metrics[f"{name}.initial_loss"]
    folder = artifacts.local_path(result["output_uri"])
    assert json.loads((folder / "base_model.json").read_text()) == {
        "base_model": inputs["base"],
        "adapters": ["low", "high"],
    }
    base = AutoModelForCausalLM.from_pretrained(artifacts.local_path(inputs["base"]))
    model = PeftModel.from_pretrained(base, str(folder / "adapters" / "low"), adapter_name="low")
    model.load_adapter(str(folder / "adapters" / "high"), adapter_name="high")
    model.set_adapter("high")
    _generates(model, AutoTokenizer.from_pretrained(folder))
    assert artifacts.read_manifest(result["output_uri"]).parents == [
        inputs["dataset"],
        inputs["second"],
        inputs["base"],
    ]


def test_search_picks_the_trial_with_the_best_metric(ray_cluster, inputs):
    import ray

    # A fresh Ray of its own: each trial's function holds a CPU beside its worker's, and
    # actors of the earlier runs must not hold the resources a trial waits for.
    ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    result, _ = _run(
        inputs,
        "search",
        method="sft_distill",
        hyperparameters={**HPARAMS, "epochs": 2},
        search={
            "space": [
                {"name": "learning_rate", "distribution": "choice", "values": ["1e-5", "3e-3", "3e-2"]}
            ],
            "trials": 3,
            "grace_period": 2,
        },
    )
    trials = result["search"]
    assert len(trials) == 3
    finished = [t for t in trials if t["finished"]]
    best = min(finished, key=lambda t: t["metrics"]["eval_loss"])
    assert result["metrics"]["best_trial"] == best["trial"]
    assert result["metrics"]["eval_loss"] == pytest.approx(best["metrics"]["eval_loss"])
    assert best["config"]["learning_rate"] != 1e-5  # a learning rate that barely moves never wins
    manifest = artifacts.read_manifest(result["output_uri"])
    assert len(manifest.extra["search"]) == 3
