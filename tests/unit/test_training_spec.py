"""Validation of TrainingSpec: defaults, explicit values, every problem reported at once by proto path.

Helpers and the tiny model's data dir are in _training_spec_env.py; the deep checks are in
test_training_spec_checks.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.api.v1 import training_pb2 as pb
from slmops.training.config import TrainingConfig
from slmops.training.recipes import registry
from slmops.training.spec import from_proto
from tests.unit._training_spec_env import _problems, _spec, _uri, build_root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_root(tmp_path_factory)


@pytest.fixture(autouse=True)
def data_dir(root, monkeypatch) -> Path:
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(root))
    return root


# -- defaults -----------------------------------------------------------------


def test_defaults_follow_the_proto_comments(root):
    config = from_proto(_spec(root))
    hp = config.hyperparameters
    assert (config.method, hp.learning_rate, hp.epochs, hp.batch_size) == ("sft_distill", 5e-4, 1, 16)
    assert (hp.max_seq_length, hp.precision, hp.max_steps, hp.gradient_accumulation_steps) == (
        128,
        "fp32",
        0,
        1,
    )
    assert (hp.checkpoint_every, hp.eval_every, hp.early_stopping_patience) == (0, 0, 0)
    assert not hp.gradient_checkpointing and not hp.packing
    assert (
        config.resources.num_workers,
        config.resources.cpus_per_worker,
        config.resources.gpus_per_worker,
    ) == (
        1,
        1.0,
        0.0,
    )
    assert config.max_failures == 3
    assert (config.lora, config.distill, config.search, config.adapters) == (None, None, None, [])
    assert registry.output_kind(config) == "checkpoint"
    # The config is plain JSON and comes back identical.
    assert TrainingConfig.model_validate(json.loads(config.model_dump_json())) == config
    assert from_proto(_spec(root, max_failures=-1)).max_failures == -1


@pytest.mark.parametrize("method", [pb.LORA, pb.QLORA], ids=["lora", "qlora"])
def test_lora_section_defaults(root, method):
    config = from_proto(_spec(root, method=method))
    lora = config.lora
    assert (lora.rank, lora.alpha, lora.dropout, lora.target_modules, lora.adapter_name, lora.merge) == (
        8,
        16,
        0.0,
        [],
        "default",
        False,
    )
    assert registry.output_kind(config) == "adapter"
    merged = from_proto(_spec(root, method=method, lora=pb.LoraConfig(merge=True)))
    assert registry.output_kind(merged) == "checkpoint"


def test_distill_section_defaults(root):
    config = from_proto(_spec(root, method=pb.LOGIT_DISTILL, dataset_uri=_uri(root, "topk")))
    distill = config.distill
    assert (distill.teacher, distill.loss, distill.temperature, distill.alpha, distill.jsd_beta) == (
        "",
        "forward_kl",
        2.0,
        0.5,
        0.5,
    )
    assert config.lora is None and registry.output_kind(config) == "checkpoint"


def test_search_section_defaults(root):
    space = [pb.SearchDimension(name="learning_rate", distribution="LogUniform", low=1e-4, high=1e-2)]
    config = from_proto(_spec(root, search=pb.SearchSpec(space=space)))
    search = config.search
    assert (search.trials, search.metric, search.mode, search.max_concurrent_trials, search.grace_period) == (
        4,
        "eval_loss",
        "min",
        1,
        1,
    )
    assert search.space[0].distribution == "loguniform"


# -- explicit values -------------------------------------------------------------


def test_full_method_and_explicit_values(root):
    spec = _spec(
        root,
        method=pb.FULL,
        base=pb.ModelInit(
            model=str(root / "model"),
            from_config=True,
            config_overrides={
                "hidden_size": "48",
                "tie_word_embeddings": "false",
                "rms_norm_eps": "1e-5",
                "hidden_act": "gelu",
            },
        ),
        hyperparameters=pb.Hyperparameters(
            learning_rate=1e-3,
            epochs=3,
            batch_size=8,
            precision="BF16",
            seed=7,
            checkpoint_every=5,
            eval_every=10,
            early_stopping_patience=2,
            gradient_checkpointing=True,
            packing=True,
        ),
        resources={"num_workers": 2, "cpus_per_worker": 0.5, "memory": "2Gi"},
        max_failures=5,
        labels={"team": "a"},
    )
    config = from_proto(spec)
    assert config.method == "full"
    assert config.base.config_overrides == {
        "hidden_size": 48,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
        "hidden_act": "gelu",
    }
    hp = config.hyperparameters
    assert (hp.precision, hp.seed, hp.checkpoint_every, hp.eval_every, hp.early_stopping_patience) == (
        "bf16",
        7,
        5,
        10,
        2,
    )
    assert hp.gradient_checkpointing and hp.packing
    assert (config.resources.num_workers, config.resources.memory_bytes) == (2, 2 * 1024**3)
    assert (config.max_failures, config.labels) == (5, {"team": "a"})


def test_lora_and_distill_values_pass_through(root):
    lora = pb.LoraConfig(
        rank=4, alpha=8, dropout=0.1, target_modules=[" q_proj", "v_proj "], adapter_name="math", merge=True
    )
    config = from_proto(_spec(root, method=pb.LORA, lora=lora))
    assert (config.lora.rank, config.lora.alpha, config.lora.dropout) == (4, 8, 0.1)
    assert (config.lora.target_modules, config.lora.adapter_name, config.lora.merge) == (
        ["q_proj", "v_proj"],
        "math",
        True,
    )

    online = _spec(
        root,
        method=pb.LOGIT_DISTILL,
        distill=pb.DistillConfig(teacher=str(root / "model"), loss="JSD", jsd_beta=0.3),
        hyperparameters=pb.Hyperparameters(distill_temperature=4.0, distill_alpha=0.9),
    )
    distill = from_proto(online).distill
    assert distill.teacher == _uri(root, "model")  # a local teacher becomes an absolute URI
    assert (distill.loss, distill.jsd_beta, distill.temperature, distill.alpha) == ("jsd", 0.3, 4.0, 0.9)


def test_multi_adapter_reads_one_dataset_per_adapter(root):
    adapters = [
        pb.AdapterSpec(name="sums", dataset_uri=str(root / "ds")),
        pb.AdapterSpec(name="plain", dataset_uri=_uri(root, "train-only")),
    ]
    config = from_proto(_spec(root, method=pb.MULTI_ADAPTER, dataset_uri="", adapters=adapters))
    assert config.datasets() == {"sums": _uri(root, "ds"), "plain": _uri(root, "train-only")}
    assert config.lora.rank == 8 and registry.output_kind(config) == "adapter"


# -- every problem at once, by proto path ---------------------------------------


def test_field_constraints_are_reported_at_once():
    spec = pb.TrainingSpec(
        base=pb.ModelInit(config_overrides={"hidden_size": "-4", "bad key": "1"}),
        hyperparameters=pb.Hyperparameters(
            learning_rate=-1,
            epochs=-2,
            batch_size=-1,
            warmup_ratio=1.5,
            weight_decay=2,
            precision="fp8",
            distill_temperature=-2.0,
            seed=-3,
            checkpoint_every=-1,
        ),
        resources={"num_workers": -1, "gpus_per_worker": -1, "memory": "lots"},
        max_failures=-2,
    )
    problems = _problems(spec)
    assert set(problems) == {
        "spec.method",
        "spec.base.model",
        "spec.base.config_overrides",
        "spec.base.config_overrides[bad key]",
        "spec.base.config_overrides[hidden_size]",
        "spec.hyperparameters.learning_rate",
        "spec.hyperparameters.epochs",
        "spec.hyperparameters.batch_size",
        "spec.hyperparameters.warmup_ratio",
        "spec.hyperparameters.weight_decay",
        "spec.hyperparameters.precision",
        "spec.hyperparameters.distill_temperature",
        "spec.hyperparameters.seed",
        "spec.hyperparameters.checkpoint_every",
        "spec.resources.num_workers",
        "spec.resources.gpus_per_worker",
        "spec.resources.memory",
        "spec.max_failures",
    }
    assert "is required" in problems["spec.method"]
    assert "MULTI_ADAPTER" in problems["spec.method"] and "LOGIT_DISTILL" in problems["spec.method"]
    assert "from_config" in problems["spec.base.config_overrides"]


def test_lora_spec_problems_name_their_fields(root):
    spec = _spec(
        root,
        method=pb.LORA,
        lora=pb.LoraConfig(rank=-1, alpha=-2, dropout=1.5, adapter_name="bad name!"),
        distill=pb.DistillConfig(loss="kl"),
        hyperparameters=pb.Hyperparameters(distill_alpha=0.2),
        adapters=[pb.AdapterSpec(name="a", dataset_uri=str(root / "ds"))],
        search=pb.SearchSpec(
            space=[
                pb.SearchDimension(name="lora_rank", distribution="randint", low=0, high=4),
                pb.SearchDimension(name="distill_alpha", distribution="uniform", low=0.1, high=0.9),
            ],
            metric="accuracy",
        ),
    )
    problems = _problems(spec)
    assert set(problems) == {
        "spec.lora.rank",
        "spec.lora.alpha",
        "spec.lora.dropout",
        "spec.lora.adapter_name",
        "spec.distill",
        "spec.distill.loss",
        "spec.hyperparameters.distill_alpha",
        "spec.adapters",
        "spec.search.space[0].low",
        "spec.search.space[1].name",
        "spec.search.metric",
    }
    assert "greater than or equal to 1" in problems["spec.lora.rank"] and "-1" in problems["spec.lora.rank"]
    assert "forward_kl" in problems["spec.distill.loss"] and "'kl'" in problems["spec.distill.loss"]
    assert problems["spec.distill"] == "applies to LOGIT_DISTILL only, not LORA"
    assert problems["spec.hyperparameters.distill_alpha"] == "applies to LOGIT_DISTILL only, not LORA"
    assert problems["spec.adapters"] == "applies to MULTI_ADAPTER only, not LORA"
    assert "lora_rank 0 is outside its range" in problems["spec.search.space[0].low"]
    assert "no searchable field 'distill_alpha'" in problems["spec.search.space[1].name"]
    assert "lora_rank" in problems["spec.search.space[1].name"]


def test_logit_distill_problems_use_the_proto_paths(root):
    spec = _spec(
        root,
        method=pb.LOGIT_DISTILL,
        dataset_uri=_uri(root, "topk"),
        distill=pb.DistillConfig(loss="kl", jsd_beta=1.5),
        hyperparameters=pb.Hyperparameters(distill_temperature=-1, distill_alpha=2, packing=True),
        lora=pb.LoraConfig(rank=4),
    )
    problems = _problems(spec)
    # The temperature and alpha live in the config's distill section, but the caller set them here:
    assert set(problems) == {
        "spec.distill.loss",
        "spec.distill.jsd_beta",
        "spec.hyperparameters.distill_temperature",
        "spec.hyperparameters.distill_alpha",
        "spec.hyperparameters.packing",
        "spec.lora",
    }
    assert problems["spec.lora"] == "applies to LORA, QLORA and MULTI_ADAPTER only, not LOGIT_DISTILL"


def test_sft_search_space_is_checked_against_the_recipe(root):
    spec = _spec(
        root,
        lora=pb.LoraConfig(rank=4),
        search=pb.SearchSpec(
            space=[
                pb.SearchDimension(name="lora_rank", distribution="randint", low=2, high=8),
                pb.SearchDimension(name="learning_rate", distribution="choice", values=["1e-3", "fast"]),
                pb.SearchDimension(name="batch_size", distribution="randint", low=8, high=4),
                pb.SearchDimension(name="epochs", distribution="choice", values=["1", "2.5"]),
                pb.SearchDimension(name="warmup_ratio", distribution="uniform", low=0.0, high=2.0),
                pb.SearchDimension(name="weight_decay", distribution="gaussian", low=0.0, high=0.1),
            ],
            trials=-1,
        ),
    )
    problems = _problems(spec)
    assert set(problems) == {
        "spec.lora",
        "spec.search.space[0].name",
        "spec.search.space[1]",
        "spec.search.space[2]",
        "spec.search.space[3]",
        "spec.search.space[4].high",
        "spec.search.space[5].distribution",
        "spec.search.trials",
    }
    assert problems["spec.lora"] == "applies to LORA, QLORA and MULTI_ADAPTER only, not SFT_DISTILL"
    named = problems["spec.search.space[0].name"]
    assert "SFT_DISTILL has no searchable field 'lora_rank'" in named and "learning_rate" in named
    assert "'fast'" in problems["spec.search.space[1]"]
    assert "below high" in problems["spec.search.space[2]"]
    assert "integers" in problems["spec.search.space[3]"]
    assert "warmup_ratio 2.0 is outside its range" in problems["spec.search.space[4].high"]


def test_multi_adapter_problems(root):
    problems = _problems(_spec(root, method=pb.MULTI_ADAPTER))
    assert set(problems) == {"spec.adapters", "spec.dataset_uri"}
    assert "at least one adapter" in problems["spec.adapters"]
    assert "one dataset per adapter" in problems["spec.dataset_uri"]

    ds = str(root / "ds")
    adapters = [
        pb.AdapterSpec(name="sums", dataset_uri=ds),
        pb.AdapterSpec(name="sums", dataset_uri=ds),
        pb.AdapterSpec(name="-bad", dataset_uri=ds),
        pb.AdapterSpec(name="nothing", dataset_uri=str(root / "empty")),
        pb.AdapterSpec(name="missing", dataset_uri=""),
    ]
    search = pb.SearchSpec(
        space=[pb.SearchDimension(name="lora_rank", distribution="choice", values=["2", "4"])]
    )
    problems = _problems(
        _spec(root, method=pb.MULTI_ADAPTER, dataset_uri="", adapters=adapters, search=search)
    )
    assert set(problems) == {
        "spec.adapters[1].name",
        "spec.adapters[2].name",
        "spec.adapters[3].dataset_uri",
        "spec.adapters[4].dataset_uri",
        "spec.search",
    }
    assert "'sums' is used twice" in problems["spec.adapters[1].name"]
    assert "has no train.jsonl" in problems["spec.adapters[3].dataset_uri"]


def test_qlora_needs_pretrained_weights(root):
    base = pb.ModelInit(model=str(root / "model"), from_config=True)
    problems = _problems(_spec(root, method=pb.QLORA, base=base))
    assert set(problems) == {"spec.base.from_config"}
    assert "QLORA" in problems["spec.base.from_config"]
    assert from_proto(
        _spec(root, method=pb.LORA, base=base)
    ).base.from_config  # LoRA on a fresh model is allowed


def test_batch_must_split_over_workers(root):
    problems = _problems(
        _spec(root, hyperparameters=pb.Hyperparameters(batch_size=10), resources={"num_workers": 3})
    )
    assert set(problems) == {"spec.hyperparameters.batch_size"}
    assert "10 does not split evenly over 3 workers" in problems["spec.hyperparameters.batch_size"]
