"""`slmops train` flags become the TrainingSpec the service validates; progress lines read well.

No server: the parser and `train_spec` are called directly, and each spec is
checked with the service's own validation (without looking inside inputs).
"""

from __future__ import annotations

import pytest

from slmops.api.v1 import common_pb2
from slmops.api.v1 import training_pb2 as pb
from slmops.cli.main import build_parser
from slmops.cli.progress import duration, format_event, format_metrics
from slmops.cli.train_commands import train_spec
from slmops.core import artifacts
from slmops.training.spec import from_proto

BASE = ["--base", "org/base-model"]
DATASET = ["--dataset", "s3://bucket/dataset"]


def _spec(*flags: str) -> pb.TrainingSpec:
    return train_spec(build_parser().parse_args(["train", *flags]))


def test_plain_flags_leave_every_default_to_the_service():
    spec = _spec(*BASE, *DATASET)
    assert spec.method == pb.SFT_DISTILL
    assert (spec.base.model, spec.dataset_uri) == ("org/base-model", "s3://bucket/dataset")
    assert not any(spec.HasField(name) for name in ("lora", "distill", "search"))
    assert spec.hyperparameters == pb.Hyperparameters() and spec.resources == common_pb2.ResourceRequest()
    assert (spec.max_failures, list(spec.adapters)) == (0, [])
    config = from_proto(spec, deep=False)
    assert (config.hyperparameters.batch_size, config.max_failures) == (16, 3)


def test_hyperparameter_and_resource_flags():
    spec = _spec(
        *BASE,
        *DATASET,
        "--method",
        "full",
        "--epochs",
        "3",
        "--max-steps",
        "50",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--grad-accum",
        "4",
        "--weight-decay",
        "0.01",
        "--warmup-ratio",
        "0.1",
        "--max-seq-length",
        "256",
        "--precision",
        "bf16",
        "--seed",
        "7",
        "--checkpoint-every",
        "10",
        "--eval-every",
        "5",
        "--early-stopping",
        "3",
        "--gradient-checkpointing",
        "--packing",
        "--workers",
        "2",
        "--cpus-per-worker",
        "0.5",
        "--gpus-per-worker",
        "1",
        "--max-failures",
        "-1",
    )
    hp = spec.hyperparameters
    assert (hp.epochs, hp.max_steps, hp.batch_size, hp.learning_rate, hp.gradient_accumulation_steps) == (
        3,
        50,
        8,
        1e-3,
        4,
    )
    assert (hp.weight_decay, hp.warmup_ratio, hp.max_seq_length, hp.precision, hp.seed) == (
        0.01,
        0.1,
        256,
        "bf16",
        7,
    )
    assert (hp.checkpoint_every, hp.eval_every, hp.early_stopping_patience) == (10, 5, 3)
    assert hp.gradient_checkpointing and hp.packing
    assert (spec.resources.num_workers, spec.resources.cpus_per_worker, spec.resources.gpus_per_worker) == (
        2,
        0.5,
        1.0,
    )
    config = from_proto(spec, deep=False)
    assert (config.method, config.max_failures, config.hyperparameters.packing) == ("full", -1, True)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_flags(method):
    spec = _spec(
        *BASE,
        *DATASET,
        "--method",
        method,
        "--lora-rank",
        "16",
        "--lora-alpha",
        "32",
        "--lora-dropout",
        "0.05",
        "--target-modules",
        "q_proj, v_proj",
        "--merge",
    )
    assert spec.method == pb.TrainingMethod.Value(method.upper())
    assert (spec.lora.rank, spec.lora.alpha, spec.lora.dropout, spec.lora.merge) == (16, 32, 0.05, True)
    assert list(spec.lora.target_modules) == ["q_proj", "v_proj"]
    assert from_proto(spec, deep=False).lora.rank == 16
    # LoRA flags left out: the service fills rank 8, alpha 16.
    bare = _spec(*BASE, *DATASET, "--method", method)
    assert not bare.HasField("lora") and from_proto(bare, deep=False).lora.alpha == 16


def test_logit_distill_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMOPS_DATA_DIR", str(tmp_path))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}")
    spec = _spec(
        *BASE,
        *DATASET,
        "--method",
        "logit_distill",
        "--teacher",
        str(tmp_path / "teacher"),
        "--kd-loss",
        "jsd",
        "--jsd-beta",
        "0.3",
        "--kd-temperature",
        "4",
        "--kd-alpha",
        "0.8",
    )
    assert spec.distill.teacher == artifacts.to_uri(tmp_path / "teacher")  # a local path becomes a URI
    assert (spec.distill.loss, spec.distill.jsd_beta) == ("jsd", 0.3)
    assert (spec.hyperparameters.distill_temperature, spec.hyperparameters.distill_alpha) == (4.0, 0.8)
    distill = from_proto(spec, deep=False).distill
    assert (distill.loss, distill.temperature, distill.alpha) == ("jsd", 4.0, 0.8)
    offline = _spec(*BASE, *DATASET, "--method", "logit_distill")
    assert not offline.HasField("distill") and from_proto(offline, deep=False).distill.loss == "forward_kl"


def test_multi_adapter_takes_adapters_instead_of_a_dataset(tmp_path):
    (tmp_path / "math").mkdir()
    spec = _spec(
        *BASE,
        "--method",
        "multi_adapter",
        "--adapter",
        f"math={tmp_path / 'math'}",
        "--adapter",
        "chat=s3://b/chat",
    )
    assert spec.dataset_uri == ""
    assert [(a.name, a.dataset_uri) for a in spec.adapters] == [
        ("math", artifacts.to_uri(tmp_path / "math")),
        ("chat", "s3://b/chat"),
    ]
    with pytest.raises(SystemExit, match="--dataset is required for --method lora"):
        _spec(*BASE, "--method", "lora")


def test_search_flags():
    spec = _spec(
        *BASE,
        *DATASET,
        "--method",
        "lora",
        "--search",
        "learning_rate=loguniform:1e-4:1e-2",
        "--search",
        "lora_rank=choice:4,8, 16",
        "--search",
        "epochs=randint:1:3",
        "--trials",
        "6",
        "--search-metric",
        "train_loss",
    )
    space = [(d.name, d.distribution, d.low, d.high, list(d.values)) for d in spec.search.space]
    assert space == [
        ("learning_rate", "loguniform", 1e-4, 1e-2, []),
        ("lora_rank", "choice", 0.0, 0.0, ["4", "8", "16"]),
        ("epochs", "randint", 1.0, 3.0, []),
    ]
    assert (spec.search.trials, spec.search.metric) == (6, "train_loss")
    search = from_proto(spec, deep=False).search
    assert (search.trials, search.metric, len(search.space)) == (6, "train_loss", 3)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--search", "learning_rate"),
        ("--search", "learning_rate=uniform:0.1"),
        ("--search", "learning_rate=normal:0:1"),
        ("--search", "learning_rate=uniform:low:1"),
        ("--search", "learning_rte=uniform:0:1"),
        ("--search", "lora_rank=choice:"),
        ("--adapter", "math"),
        ("--adapter", "=s3://b/d"),
        ("--adapter", "math="),
    ],
)
def test_malformed_values_are_argparse_errors_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", *BASE, flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: expected" in capsys.readouterr().err


def test_only_what_the_service_accepts_is_offered(capsys):
    for flags in (
        ["--method", "dpo"],
        ["--kd-loss", "kl"],
        ["--precision", "int8"],
        ["--search-metric", "accuracy"],
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", *BASE, *DATASET, *flags])
        assert "invalid choice" in capsys.readouterr().err


# -- progress lines -------------------------------------------------------------------


def test_known_metrics_are_formatted_in_order_and_the_rest_follow():
    metrics = {
        "learning_rate": 0.001,
        "eta_seconds": 65.2,
        "tokens_per_second": 12345.4,
        "eval_loss": 1.5,
        "train_loss": 1.23456,
        "step": 12.0,
    }
    assert (
        format_metrics(metrics)
        == "step 12 loss 1.2346 val_loss 1.5000 12,345 tok/s ETA 1:05 learning_rate=0.001"
    )
    assert format_metrics({"eval_loss": 0.25, "step": 40.0}) == "step 40 val_loss 0.2500"
    assert format_metrics({"prompts": 3.0}) == "prompts=3"
    assert (duration(3723), duration(0), duration(59.6)) == ("1:02:03", "0:00", "1:00")


def test_a_training_event_line():
    event = common_pb2.ProgressEvent(
        state=common_pb2.RUNNING, fraction=0.5, message="train: epoch 1/2, step 6/12"
    )
    for key, value in {
        "step": 6.0,
        "train_loss": 2.5,
        "tokens_per_second": 900.0,
        "eta_seconds": 30.0,
    }.items():
        event.metrics[key] = value
    line = format_event("training", event)
    assert line.endswith("RUNNING   train: epoch 1/2, step 6/12 step 6 loss 2.5000 900 tok/s ETA 0:30")
    assert " 50.0% " in line


def test_convert_flags_name_adapters_and_builder_options(tmp_path):
    from slmops.cli.convert_commands import convert_spec

    (tmp_path / "ad").mkdir()
    args = build_parser().parse_args([
        "convert", "--model", "org/m", "--precision", "int8", "--adapter", f"chat={tmp_path / 'ad'}",
        "--adapter", str(tmp_path / "ad"), "--merge-adapter", "--option", "int4_block_size=32"])  # fmt: skip
    spec = convert_spec(args)
    uri = artifacts.to_uri(tmp_path / "ad")
    assert list(spec.adapter_uris) == [f"chat={uri}", uri]
    assert spec.merge_adapters and dict(spec.extra_options) == {"int4_block_size": "32"}
    assert spec.precision == 2  # INT8
