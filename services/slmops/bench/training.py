"""Training benchmarks: the LoRA recipe's loop against a plain TRL trainer, QLoRA's
memory against LoRA's, and two Ray Train workers against one.

Models are built from a config with random weights (speed and memory do not
depend on their values) and the data are fixed-length records of a byte-level
tokenizer, so every batch holds exactly SEQ_LEN tokens per row and no padding.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slmops.bench.registry import Outcome, register

SEQ_LEN = 64  # tokens per example, EOS included
PROMPT_LEN = 40  # of them in the prompt; the rest (completion and EOS) carry the loss
BATCH = 16
# The overhead benchmark's worker (and the plain trainer) use one CPU and one torch thread: with two
# OpenMP threads on two cores, any other busy process makes every step wait for a descheduled
# thread (seen here: 4.9 s a step instead of 0.3 s with one thread), which swamps the comparison.
OVERHEAD_CPUS = 1
LORA = {"rank": 8, "alpha": 16, "target_modules": []}  # empty targets: every linear layer but the LM head
OVERHEAD_SHAPE: dict[str, Any] = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 1024,
    "max_position_embeddings": 128,
}
OVERHEAD_STEPS = 80
WORKERS_SHAPE: dict[str, Any] = {**OVERHEAD_SHAPE, "num_hidden_layers": 2}
WORKERS_STEPS = 60
# Qwen2.5-0.5B's shape (494M parameters).
QWEN_05B: dict[str, Any] = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
MEMORY_STEPS = 3


def _records(n: int) -> list[dict[str, str]]:
    """n records of exactly SEQ_LEN - 1 ASCII characters (one byte token each): runs of additions."""
    rng = random.Random(5)
    width = SEQ_LEN - 1
    rows = []
    for _ in range(n):
        text = ""
        while len(text) < width:
            a, b = rng.randrange(100), rng.randrange(100)
            text += f"{a}+{b}={a + b} "
        rows.append({"prompt": text[:PROMPT_LEN], "completion": text[PROMPT_LEN:width]})
    return rows


def build_inputs(work: Path, examples: int, shape: dict[str, Any]) -> tuple[str, str]:
    """(base model URI, dataset URI): a random-weight Qwen2 model and a train-only dataset."""
    from slmops.core import artifacts
    from slmops.demo import task
    from slmops.testing.tiny import build_model, train_tokenizer

    tokenizer = train_tokenizer(task.tokenizer_corpus(), work / "tok", vocab_size=task.TOKENIZER_VOCAB_SIZE)
    base = build_model(work / "base", tokenizer, seed=0, **shape)
    artifacts.finalize(str(base), "checkpoint")
    dataset = work / "dataset"
    dataset.mkdir()
    lines = "".join(json.dumps(r) + "\n" for r in _records(examples))
    (dataset / "train.jsonl").write_text(lines, encoding="utf-8")  # no validation split: no evaluation passes
    artifacts.finalize(str(dataset), "dataset")
    return artifacts.to_uri(base), artifacts.to_uri(dataset)


@contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[None]:
    """A local Ray (never another cluster on the machine), shut down afterwards if started here."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _quiet(fraction: float, message: str, **metrics: float) -> None:
    pass


def run_job(config: dict[str, Any], output: Path) -> tuple[dict[str, float], float]:
    """(job metrics, wall seconds) of slmops.training.job.run in this process."""
    from slmops.training import job

    started = time.perf_counter()
    result = job.run(config, str(output), _quiet)
    return result["metrics"], time.perf_counter() - started


def plain_trainer_tokens_per_second(config: dict[str, Any]) -> tuple[float, float]:
    """(tokens/s, seconds of trainer.train()) of TRL's SFTTrainer in this process, no Ray.

    Same model, tokenized examples, collator, LoRA, batch, learning rate,
    scheduler and steps as the recipe; no checkpoints, evaluation or progress.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig, SFTTrainer

    from slmops.training import job, model_init
    from slmops.training.config import TrainingConfig
    from slmops.training.trainer_kit import Collator, to_dataset

    cfg = TrainingConfig.model_validate(config)
    hp = cfg.hyperparameters
    model_dir = model_init.resolve_model(cfg.base.model)
    tokenizer = model_init.load_tokenizer(model_dir)
    train, _, _ = job.prepare_examples(cfg, tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.resources.cpus_per_worker))
    try:
        base = model_init.load_model(cfg.base, model_dir, tokenizer, hp.seed)
        lora = LoraConfig(
            r=LORA["rank"],
            lora_alpha=LORA["alpha"],
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        with tempfile.TemporaryDirectory(prefix="slmops-bench-plain-") as out:
            args = SFTConfig(
                output_dir=out,
                per_device_train_batch_size=hp.batch_size,
                gradient_accumulation_steps=hp.gradient_accumulation_steps,
                learning_rate=hp.learning_rate,
                weight_decay=hp.weight_decay,
                warmup_steps=hp.warmup_ratio,
                max_grad_norm=hp.max_grad_norm,
                lr_scheduler_type="cosine",
                # SFTConfig defaults to bf16 and gradient checkpointing; the recipe sets both from the spec.
                bf16=False,
                gradient_checkpointing=hp.gradient_checkpointing,
                logging_strategy="no",
                num_train_epochs=hp.epochs,
                seed=hp.seed,
                data_seed=hp.seed,
                save_strategy="no",
                eval_strategy="no",
                report_to="none",
                disable_tqdm=True,
                use_cpu=True,
                dataloader_num_workers=0,
                remove_unused_columns=False,
                max_length=hp.max_seq_length,
                dataset_kwargs={"skip_prepare_dataset": True},
            )
            trainer = SFTTrainer(
                model=get_peft_model(base, lora),
                args=args,
                train_dataset=to_dataset(train),
                processing_class=tokenizer,
                data_collator=Collator(tokenizer.pad_token_id),
            )
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    tokens = sum(len(e.input_ids) for e in train) * hp.epochs
    return tokens / seconds, seconds


def _lora_config(base: str, dataset: str, steps: int) -> dict[str, Any]:
    return {
        "method": "lora",
        "base": {"model": base},
        "dataset_uri": dataset,
        "hyperparameters": {
            "learning_rate": 1e-3,
            "epochs": 1,
            "batch_size": BATCH,
            "max_seq_length": SEQ_LEN,
            "seed": 0,
            "checkpoint_every": steps,  # one checkpoint, at the end of the loop
        },
        "resources": {"num_workers": 1, "cpus_per_worker": OVERHEAD_CPUS},
        "lora": LORA,
        "max_failures": 0,
    }


@register("training_overhead_vs_plain_trainer")
def training_overhead_vs_plain_trainer() -> Outcome:
    """LoRA training tokens/s: the service's recipe on Ray Train vs a plain TRL SFTTrainer in process (target ratio >= 0.85)."""
    with tempfile.TemporaryDirectory(prefix="slmops-bench-") as tmp, local_ray():
        work = Path(tmp)
        base, dataset = build_inputs(work, OVERHEAD_STEPS * BATCH, OVERHEAD_SHAPE)
        config = _lora_config(base, dataset, OVERHEAD_STEPS)
        # The plain trainer runs before and after the recipe, so drifting machine load hits both alike.
        before, before_seconds = plain_trainer_tokens_per_second(config)
        metrics, wall = run_job(config, work / "recipe")
        after, after_seconds = plain_trainer_tokens_per_second(config)
    return Outcome(
        value=metrics["tokens_per_second"],
        baseline=(before + after) / 2,
        unit="tokens/s",
        value_label="recipe_tokens_per_second",
        baseline_label="plain_trainer_tokens_per_second",
        details={
            "shape": f"qwen2 hidden {OVERHEAD_SHAPE['hidden_size']}, {OVERHEAD_SHAPE['num_hidden_layers']} layers, "
            "vocab 258 (byte tokenizer), random weights",
            "training": f"LoRA rank {LORA['rank']} on every linear layer, batch {BATCH} x {SEQ_LEN} tokens, "
            f"{int(metrics['steps'])} steps, 1 worker with {OVERHEAD_CPUS} CPU / torch thread(s) for both",
            "recipe_checkpoints": "one, at the end of the loop (checkpoint_every = steps); no validation split",
            "recipe_train_seconds": round(metrics["train_seconds"], 1),
            "plain_train_seconds": f"{before_seconds:.1f} before, {after_seconds:.1f} after the recipe",
            "plain_tokens_per_second": f"{before:.0f} before, {after:.0f} after; the baseline is their mean",
            "recipe_job_wall_seconds": round(wall, 1),
            "target_ratio": ">= 0.85",
        },
    )


@register("training_two_workers_vs_one")
def training_two_workers_vs_one() -> Outcome:
    """SFT_DISTILL tokens/s on Ray Train: 2 workers x 1 CPU vs 1 worker x 2 CPUs, same data and global batch."""
    with tempfile.TemporaryDirectory(prefix="slmops-bench-") as tmp, local_ray():
        work = Path(tmp)
        base, dataset = build_inputs(work, WORKERS_STEPS * BATCH, WORKERS_SHAPE)
        config = _lora_config(base, dataset, WORKERS_STEPS)
        config.update(method="sft_distill", lora=None)
        config["resources"] = {"num_workers": 1, "cpus_per_worker": 2}
        one, one_wall = run_job(config, work / "one")
        config["resources"] = {"num_workers": 2, "cpus_per_worker": 1}
        two, two_wall = run_job(config, work / "two")
    return Outcome(
        value=two["tokens_per_second"],
        baseline=one["tokens_per_second"],
        unit="tokens/s",
        value_label="two_workers_tokens_per_second",
        baseline_label="one_worker_tokens_per_second",
        details={
            "shape": f"qwen2 hidden {WORKERS_SHAPE['hidden_size']}, {WORKERS_SHAPE['num_hidden_layers']} layers, "
            "vocab 258, random weights, every parameter trained",
            "training": f"global batch {BATCH} x {SEQ_LEN} tokens, {int(one['steps'])} steps; "
            "DDP over gloo with 2 workers",
            "one_worker_train_seconds": round(one["train_seconds"], 1),
            "two_workers_train_seconds": round(two["train_seconds"], 1),
            "one_worker_job_wall_seconds": round(one_wall, 1),
            "two_workers_job_wall_seconds": round(two_wall, 1),
        },
    )


def build_qwen_05b(folder: Path) -> Path:
    """A random-weight model in Qwen2.5-0.5B's shape, saved as bf16 safetensors (as that model ships)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from slmops.demo import task
    from slmops.testing.tiny import train_tokenizer

    train_tokenizer(task.tokenizer_corpus(), folder, vocab_size=task.TOKENIZER_VOCAB_SIZE)
    config = Qwen2Config(**QWEN_05B, bos_token_id=0, eos_token_id=0, pad_token_id=1, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    return folder


def measure_in_child(method: str, model_dir: Path) -> dict[str, float]:
    """The memory probe's JSON from a fresh Python process (clean peak RSS)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmops.bench.memory_probe",
            method,
            str(model_dir),
            str(MEMORY_STEPS),
            str(SEQ_LEN),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@register("qlora_peak_memory_vs_lora")
def qlora_peak_memory_vs_lora() -> Outcome:
    """Peak RSS of QLoRA (nf4 base) vs LoRA (fp32 base) training steps, Qwen2.5-0.5B shape (target ratio <= 0.5)."""
    with tempfile.TemporaryDirectory(prefix="slmops-bench-") as tmp:
        model_dir = build_qwen_05b(Path(tmp) / "qwen-0.5b")
        size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
        qlora = measure_in_child("qlora", model_dir)
        lora = measure_in_child("lora", model_dir)
    gib = 1 << 30
    return Outcome(
        value=qlora["peak_bytes"],
        baseline=lora["peak_bytes"],
        unit="bytes",
        value_label="qlora_peak_bytes",
        baseline_label="lora_peak_bytes",
        details={
            "shape": "qwen2 hidden 896, 24 layers, 14 heads, 2 kv heads, intermediate 4864, vocab 151936, "
            "tied embeddings (Qwen2.5-0.5B), random weights",
            "checkpoint": f"bf16 safetensors, {size / 1e6:.0f} MB (the dtype Qwen2.5-0.5B ships in)",
            "training": f"LoRA rank {LORA['rank']} on every linear layer but the LM head, batch 1 x {SEQ_LEN} "
            f"tokens, {MEMORY_STEPS} AdamW steps, no gradient checkpointing, CPU",
            "qlora_base": "qlora.quantized_base: linear layers nf4 (double quantized), embeddings and norms bf16, "
            "bf16 compute; checkpoint read with pread, not memory-mapped; glibc mmap threshold 1 MiB",
            "lora_base": "models.base_model: every weight float32",
            "peak": "VmHWM of a fresh process: imports, loading and training (its ru_maxrss would include "
            "this process's resident set, carried over fork and exec)",
            **{
                f"{name}_{key}_gib": round(probe[key] / gib, 2)
                for name, probe in (("qlora", qlora), ("lora", lora))
                for key in ("import_bytes", "loaded_bytes", "load_peak_bytes", "train_peak_bytes")
            },
            "qlora_step_seconds": round(qlora["step_seconds"], 1),
            "lora_step_seconds": round(lora["step_seconds"], 1),
        },
    )
