"""`python -m slmops.bench.memory_probe {lora|qlora} MODEL_DIR STEPS SEQ_LEN`: peak memory of a few LoRA steps.

Run in a fresh process by the `qlora_peak_memory_vs_lora` benchmark, so that
the process's peak resident set is this run's alone. It loads the base the
way the recipes do (QLORA: `qlora.quantized_base`, linear layers in nf4 and
the rest in bfloat16, the checkpoint read with `pread`, glibc returning large
freed blocks; LORA: `models.base_model`, float32), attaches the recipes'
LoRA (rank 8 on every linear layer but the LM head), runs STEPS AdamW steps
at batch 1 on random token ids, and prints one JSON line: `import_bytes`
(resident after imports), `loaded_bytes` (after loading and attaching the
adapter), `load_peak_bytes` (peak up to then), `train_peak_bytes` (peak
during the steps alone), `peak_bytes` (the whole process's peak, from
VmHWM), `step_seconds`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def _status(field: str) -> int:
    """A VmRSS/VmHWM-like line of /proc/self/status in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset the process's peak RSS (Linux `clear_refs` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def probe(method: str, model_dir: str, steps: int, seq_len: int) -> dict[str, float]:
    import torch
    from peft import get_peft_model

    from slmops.training.config import TrainingConfig
    from slmops.training.recipes import models, qlora
    from slmops.training.trainer_kit import WorkerContext

    imported = _status("VmRSS")
    config = TrainingConfig.model_validate(
        {
            "method": method,
            "base": {"model": model_dir},
            "dataset_uri": "unused",
            "hyperparameters": {"batch_size": 1, "max_seq_length": seq_len, "gradient_checkpointing": False},
            "lora": {"rank": 8, "alpha": 16},
        }
    )
    with tempfile.TemporaryDirectory(prefix="slmops-probe-") as work:
        ctx = WorkerContext(config, 0, 1, torch.device("cpu"), work, None)
        tok = models.tokenizer(ctx)
        base = qlora.quantized_base(ctx, tok) if method == "qlora" else models.base_model(ctx, tok)
        model = get_peft_model(base, models.lora_config(ctx, base))
        model.train()
        loaded = _status("VmRSS")
        load_peak = _status("VmHWM")
        reset = _reset_peak()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        generator = torch.Generator().manual_seed(0)
        vocab = model.config.vocab_size
        started = time.perf_counter()
        for _ in range(steps):
            ids = torch.randint(0, vocab, (1, seq_len), generator=generator)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds = (time.perf_counter() - started) / steps
        train_peak = _status("VmHWM") if reset else 0
    return {
        "import_bytes": float(imported),
        "loaded_bytes": float(loaded),
        "train_peak_bytes": float(train_peak),
        "load_peak_bytes": float(load_peak),
        # VmHWM, not ru_maxrss: Linux carries the parent's resident set at fork over exec into the child's
        # ru_maxrss (the benchmark's parent holds the model it built). clear_refs resets VmHWM, so the
        # load's peak is kept apart; where it cannot, the final VmHWM is the whole run's.
        "peak_bytes": float(max(load_peak, train_peak, _status("VmHWM"))),
        "step_seconds": seconds,
    }


def main(argv: list[str]) -> int:
    method, model_dir, steps, seq_len = argv
    if method not in ("lora", "qlora"):
        raise SystemExit(f"method must be lora or qlora, not {method!r}")
    print(json.dumps(probe(method, model_dir, int(steps), int(seq_len))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
