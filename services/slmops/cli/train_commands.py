"""`slmops train`: distill or fine-tune a model on a dataset; the flags and the TrainingSpec they make."""

from __future__ import annotations

import argparse
from typing import Any

from slmops.api.v1 import common_pb2, training_pb2
from slmops.cli.common import enum_choices, job_flags, overrides, run_job, uri
from slmops.core.chat_template import SHIPPED
from slmops.core.search_space import SEARCHABLE

METHODS = enum_choices(training_pb2.TrainingMethod)
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
SEARCH_DISTRIBUTIONS = ("uniform", "loguniform", "randint")


def adapter_flag(text: str) -> training_pb2.AdapterSpec:
    """--adapter NAME=DATASET_URI"""
    name, sep, dataset = text.partition("=")
    if not sep or not name.strip() or not dataset.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=DATASET_URI, got {text!r}")
    return training_pb2.AdapterSpec(name=name.strip(), dataset_uri=uri(dataset.strip()))


def search_flag(text: str) -> training_pb2.SearchDimension:
    """--search NAME=DIST:LOW:HIGH (DIST: uniform, loguniform, randint) or NAME=choice:A,B,C"""
    name, sep, rest = text.partition("=")
    dist, _, bounds = rest.partition(":")
    name, dist = name.strip(), dist.strip().lower()
    if not sep or name not in SEARCHABLE:
        names = ", ".join(SEARCHABLE)
        raise argparse.ArgumentTypeError(
            f"expected NAME=DIST:LOW:HIGH with NAME one of {names}, got {text!r}"
        )
    if dist == "choice":
        values = [v.strip() for v in bounds.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected NAME=choice:A,B,C, got {text!r}")
        return training_pb2.SearchDimension(name=name, distribution=dist, values=values)
    low, colon, high = bounds.partition(":")
    try:
        if dist not in SEARCH_DISTRIBUTIONS or not colon:
            raise ValueError
        return training_pb2.SearchDimension(name=name, distribution=dist, low=float(low), high=float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=DIST:LOW:HIGH with DIST one of {', '.join(SEARCH_DISTRIBUTIONS)} "
            f"(or NAME=choice:A,B,C), got {text!r}"
        ) from None


def _lora(args: argparse.Namespace) -> training_pb2.LoraConfig | None:
    targets = [t.strip() for t in (args.target_modules or "").split(",") if t.strip()]
    if not (args.lora_rank or args.lora_alpha or args.lora_dropout or targets or args.merge):
        return None
    return training_pb2.LoraConfig(
        rank=args.lora_rank,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        target_modules=targets,
        merge=args.merge,
    )


def _distill(args: argparse.Namespace) -> training_pb2.DistillConfig | None:
    if not (args.teacher or args.kd_loss or args.jsd_beta):
        return None
    return training_pb2.DistillConfig(
        teacher=uri(args.teacher) if args.teacher else "", loss=args.kd_loss or "", jsd_beta=args.jsd_beta
    )


def train_spec(args: argparse.Namespace) -> training_pb2.TrainingSpec:
    """The TrainingSpec the `train` flags describe; what a flag leaves unset the service defaults."""
    if not args.dataset and args.method != "multi_adapter":
        raise SystemExit(f"error: --dataset is required for --method {args.method}")
    spec = training_pb2.TrainingSpec(
        method=training_pb2.TrainingMethod.Value(args.method.upper()),
        base=training_pb2.ModelInit(
            model=uri(args.base), from_config=args.from_config, config_overrides=overrides(args.override)
        ),
        dataset_uri=uri(args.dataset) if args.dataset else "",
        hyperparameters=training_pb2.Hyperparameters(
            learning_rate=args.lr,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            seed=args.seed,
            gradient_accumulation_steps=args.grad_accum,
            weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio,
            max_seq_length=args.max_seq_length,
            precision=args.precision or "",
            distill_temperature=args.kd_temperature,
            distill_alpha=args.kd_alpha,
            checkpoint_every=args.checkpoint_every,
            eval_every=args.eval_every,
            early_stopping_patience=args.early_stopping,
            gradient_checkpointing=args.gradient_checkpointing,
            packing=args.packing,
        ),
        resources=common_pb2.ResourceRequest(
            num_workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
        ),
        adapters=args.adapter,
        max_failures=args.max_failures,
        output_uri=args.output or "",
        chat_template=_chat_template(args.chat_template),
    )
    lora, distill = _lora(args), _distill(args)
    if lora is not None:
        spec.lora.CopyFrom(lora)
    if distill is not None:
        spec.distill.CopyFrom(distill)
    if args.search or args.trials or args.search_metric:
        spec.search.CopyFrom(
            training_pb2.SearchSpec(space=args.search, trials=args.trials, metric=args.search_metric or "")
        )
    return spec


def _chat_template(value: str | None) -> str:
    """A shipped template's name as it is; a .jinja file as a file:// URI (the service runs elsewhere)."""
    if not value or value in SHIPPED:
        return value or ""
    return uri(value)


def cmd_train(args: argparse.Namespace) -> int:
    spec = train_spec(args)
    return run_job("training", "TrainingJob", training_pb2.CreateTrainingJobRequest(spec=spec), args)[1]


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """Every flag of `train`; each one sets a TrainingSpec field (0 or unset: the service's default)."""
    p.add_argument(
        "--dataset", default=None, help="dataset artifact with train.jsonl (not with multi_adapter)"
    )
    p.add_argument("--base", required=True, help="model folder, artifact URI or hub id")
    p.add_argument("--method", default="sft_distill", choices=METHODS)
    p.add_argument("--from-config", action="store_true", help="random weights from the base model's config")
    p.add_argument("--override", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    p.add_argument(
        "--chat-template",
        default=None,
        metavar="NAME_OR_FILE",
        help=f"chat template for messages records, saved with the checkpoint: {', '.join(SHIPPED)} or a "
        ".jinja file (default: the base tokenizer's)",
    )
    g = p.add_argument_group("hyperparameters")
    g.add_argument("--epochs", type=int, default=0)
    g.add_argument("--max-steps", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=0, help="global batch, split over the workers")
    g.add_argument("--grad-accum", type=int, default=0, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup-ratio", type=float, default=0.0)
    g.add_argument("--max-seq-length", type=int, default=0)
    g.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--checkpoint-every", type=int, default=0, help="optimizer steps (default: once per epoch)"
    )
    g.add_argument(
        "--eval-every", type=int, default=0, help="optimizer steps (default: with every checkpoint)"
    )
    g.add_argument(
        "--early-stopping",
        type=int,
        default=0,
        metavar="N",
        help="stop after N validations without a better loss",
    )
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--packing", action="store_true", help="pack examples into sequences (sft_distill, full)")
    g = p.add_argument_group("lora, qlora and multi_adapter")
    g.add_argument("--lora-rank", type=int, default=0)
    g.add_argument("--lora-alpha", type=int, default=0)
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument(
        "--target-modules", default=None, metavar="q_proj,v_proj", help="default: every linear layer"
    )
    g.add_argument(
        "--merge", action="store_true", help="merge the adapter into the base: output a checkpoint"
    )
    g.add_argument(
        "--adapter",
        action="append",
        default=[],
        type=adapter_flag,
        metavar="NAME=DATASET_URI",
        help="multi_adapter: one named adapter and its dataset (repeatable)",
    )
    g = p.add_argument_group("logit_distill")
    g.add_argument(
        "--teacher",
        default=None,
        metavar="URI",
        help="online teacher model (default: the dataset's stored top-k)",
    )
    g.add_argument("--kd-loss", default=None, choices=KD_LOSSES)
    g.add_argument("--kd-temperature", type=float, default=0.0)
    g.add_argument("--kd-alpha", type=float, default=0.0, help="weight of the distillation loss")
    g.add_argument("--jsd-beta", type=float, default=0.0)
    g = p.add_argument_group("hyperparameter search (Ray Tune, ASHA)")
    g.add_argument(
        "--search",
        action="append",
        default=[],
        type=search_flag,
        metavar="NAME=DIST:LOW:HIGH",
        help="a dimension: DIST uniform, loguniform or randint, or NAME=choice:A,B,C (repeatable)",
    )
    g.add_argument("--trials", type=int, default=0)
    g.add_argument("--search-metric", default=None, choices=["eval_loss", "train_loss"])
    g = p.add_argument_group("resources")
    g.add_argument("--workers", type=int, default=0, help="Ray Train workers")
    g.add_argument("--cpus-per-worker", type=float, default=0.0)
    g.add_argument("--gpus-per-worker", type=float, default=0.0)
    g.add_argument("--max-failures", type=int, default=0, help="worker failures to resume from (-1: none)")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("train", help="distill or fine-tune a model on a dataset (Ray Train)")
    add_train_flags(p)
    job_flags(p)
    p.set_defaults(func=cmd_train)
