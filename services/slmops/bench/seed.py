"""The seed's headline at real shapes: the int4 student served against its bf16 teacher.

The founding claim is that a distilled student answers 85% faster than its
teacher in 95% less memory. Two models with random weights (speed, memory and
size do not depend on their values) are served one after the other, never both
at once, by `python -m slmops.predictor`, and given the same workload through
HTTP with the official `openai` client:

- teacher: Phi-4-mini-instruct's shape (phi3, 3.8B parameters, config.json's
  values in PHI4_MINI), bf16 safetensors on the predictor's transformers engine
  in bf16, as a team serves it before distilling;
- student: Qwen2.5-0.5B's shape converted to int4 by the conversion stage, on
  ORT GenAI (`serving.model_folder`).

Both share one small tokenizer trained here, and the embedding rows past it are
zero (as `serving.writes_text` does), so greedy decoding writes text and never
picks an id the tokenizer lacks. The workload is REQUESTS greedy
`/v1/completions` of MAX_TOKENS tokens each after a warm-up; the student runs it
before the teacher and again after, so a change in the machine's load falls on
both sides. Measured: median
request latency, the predictor's peak resident memory (VmHWM after the
workload, `llamacpp.peak_rss_bytes`) and the served weights' bytes on disk.
Each benchmark's ratio is the reduction itself: value = teacher - student,
baseline = teacher, so a ratio of 0.85 reads "85% less", as the seed states it.
The teacher needs about 8 GB of memory and of disk (`check_room`); without
them the three are skipped.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from slmops.bench.llamacpp import peak_rss_bytes
from slmops.bench.registry import Outcome, Skipped, register

MAX_TOKENS = 32
REQUESTS = 3
WARMUP_TOKENS = 4
SEED_CLAIM = {"latency": 0.85, "memory": 0.95}  # the founding claim's reductions
# microsoft/Phi-4-mini-instruct's config.json (3,836,021,760 parameters, shipped in bf16). The special
# token ids are its own: past the trained tokenizer's vocabulary, their rows are zero, so greedy decoding
# never ends a request early and both models write MAX_TOKENS tokens.
PHI4_MINI: dict[str, Any] = {
    "vocab_size": 200064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "partial_rotary_factor": 0.75,
    "rope_theta": 10000.0,
    "rope_scaling": {
        "type": "longrope",
        "long_factor": [
            1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817, 2.187582649,
            2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687, 4.279200023, 4.785517845,
            5.351743533, 5.984965424, 6.693110555, 7.485043894, 8.370679318, 9.36110372, 10.4687158,
            11.70738129, 13.09260651, 14.64173252, 16.37415215, 18.31155283, 20.47818807, 22.90118105,
            25.61086418, 28.64115884, 32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71,
            32.93, 32.97, 33.28, 33.49, 33.5, 44.16, 47.77,
        ],
        "short_factor": [1.0] * 48,
    },
    "sliding_window": 262144,
    "tie_word_embeddings": True,
    "bos_token_id": 199999,
    "eos_token_id": 200020,
    "pad_token_id": 199999,
}  # fmt: skip


def phi3_config(shape: dict[str, Any] = PHI4_MINI) -> Any:
    """A bf16 Phi3Config of the shape (Phi-4-mini-instruct's unless said)."""
    from transformers import Phi3Config

    return Phi3Config(**shape, dtype="bfloat16")


def parameters(config: Any) -> int:
    """Parameters of the causal LM a config describes, counted on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def build_teacher(folder: Path, shape: dict[str, Any] = PHI4_MINI) -> Path:
    """A random-weight Phi3 model of the shape with the trained tokenizer, saved as bf16 safetensors.

    Built in bf16 from the start (torch's default dtype), so only one copy of
    the weights is ever held; the embedding rows past the tokenizer are zeroed
    before saving.
    """
    import torch
    from transformers import Phi3ForCausalLM

    from slmops.demo import task
    from slmops.testing.tiny import train_tokenizer

    train_tokenizer(task.tokenizer_corpus(), folder, vocab_size=task.TOKENIZER_VOCAB_SIZE)
    known = task.TOKENIZER_VOCAB_SIZE
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Phi3ForCausalLM(phi3_config(shape))
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        model.model.embed_tokens.weight[known:] = 0
    model.save_pretrained(folder)
    del model
    return folder


def weights_bytes(folder: Path) -> int:
    """Bytes on disk of the served weights: safetensors, or the ONNX model and its data."""
    files = [*folder.glob("*.safetensors"), *folder.glob("model.onnx*")]
    return sum(f.stat().st_size for f in files)


def check_room(need_bytes: int, folder: str | Path) -> None:
    """Raise Skipped unless memory (MemAvailable) and disk under folder both have need_bytes free."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    memory = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    disk = shutil.disk_usage(folder).free
    if min(memory, disk) < need_bytes:
        raise Skipped(
            f"the bf16 teacher needs {need_bytes / 1e9:.1f} GB of memory and of disk; "
            f"{memory / 1e9:.1f} GB of memory and {disk / 1e9:.1f} GB of disk under {folder} are free"
        )


def reduction(teacher: float, student: float) -> float:
    """How much less the student takes than the teacher, as a fraction of the teacher's."""
    return (teacher - student) / teacher


def _complete(client: Any, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(seconds, completion tokens) of one greedy completion."""
    started = time.perf_counter()
    done = client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0)
    return time.perf_counter() - started, done.usage.completion_tokens


def _pick_prompt(client: Any) -> str:
    """A prompt the served model decodes for MAX_TOKENS tokens without EOS (also its warm-up)."""
    from slmops.bench.serving import PROMPTS

    for prompt in PROMPTS:
        if _complete(client, prompt, MAX_TOKENS)[1] == MAX_TOKENS:
            return prompt
    raise RuntimeError(f"every benchmark prompt meets EOS before {MAX_TOKENS} tokens")


def serve(folder: Path, prompt: str | None = None) -> dict[str, Any]:
    """The workload on the predictor serving folder: latencies, tokens, peak RSS; picks a prompt if None."""
    from slmops.bench.serving import Server

    started = time.perf_counter()
    server = Server(folder)
    ready = time.perf_counter() - started
    try:
        client = server.client()
        if prompt is None:
            prompt = _pick_prompt(client)
        else:
            _complete(client, prompt, WARMUP_TOKENS)
        runs = [_complete(client, prompt, MAX_TOKENS) for _ in range(REQUESTS)]
        peak = peak_rss_bytes(server.process.pid)
    finally:
        server.close()
    return {
        "prompt": prompt,
        "seconds": [s for s, _ in runs],
        "tokens": [t for _, t in runs],
        "peak_rss_bytes": peak,
        "weights_bytes": weights_bytes(folder),
        "ready_seconds": [ready],
        "load_average": [round(os.getloadavg()[0], 2)],
    }


def _pooled(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two runs of one model as one: requests and readings side by side, the higher peak."""
    pooled = {key: first[key] + second[key] for key in ("seconds", "tokens", "ready_seconds", "load_average")}
    return {**first, **pooled, "peak_rss_bytes": max(first["peak_rss_bytes"], second["peak_rss_bytes"])}


@functools.cache
def measurements() -> dict[str, Any]:
    """Student, teacher, student, each served alone; the teacher's folder is deleted afterwards."""
    from transformers import Qwen2Config

    from slmops.bench.serving import model_folder
    from slmops.bench.training import QWEN_05B

    teacher_parameters = parameters(phi3_config())
    check_room(2 * teacher_parameters + 2 * 2**30, tempfile.gettempdir())  # bf16 weights and a margin
    before = serve(model_folder())
    work = Path(tempfile.mkdtemp(prefix="slmops-bench-seed-"))
    try:
        started = time.perf_counter()
        folder = build_teacher(work / "phi-4-mini")
        build_seconds = time.perf_counter() - started
        teacher = serve(folder, before["prompt"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    student = _pooled(before, serve(model_folder(), before["prompt"]))
    if not set(teacher["tokens"]) == set(student["tokens"]) == {MAX_TOKENS}:
        raise RuntimeError(f"tokens differ: teacher {teacher['tokens']}, student {student['tokens']}")
    teacher["parameters"] = teacher_parameters
    student["parameters"] = parameters(Qwen2Config(**QWEN_05B))
    teacher["build_seconds"] = build_seconds
    return {"teacher": teacher, "student": student}


def _latency(run: dict[str, Any]) -> float:
    return statistics.median(run["seconds"])


def _details(m: dict[str, Any]) -> dict[str, Any]:
    teacher, student = m["teacher"], m["student"]

    def side(run: dict[str, Any]) -> dict[str, Any]:
        return {
            "parameters": run["parameters"],
            "request_seconds": [round(s, 3) for s in run["seconds"]],
            "completion_tokens": run["tokens"],
            "tokens_per_second": round(MAX_TOKENS / _latency(run), 2),
            "peak_rss_mib": round(run["peak_rss_bytes"] / 2**20),
            "weights_mb": round(run["weights_bytes"] / 1e6, 1),
            "ready_seconds": [round(s, 1) for s in run["ready_seconds"]],
            "load_average_1m": run["load_average"],
        }

    return {
        "teacher": "Phi-4-mini-instruct's shape: phi3, hidden 3072, 32 layers, 24 heads, 8 kv heads, "
        "intermediate 8192, vocab 200064, tied embeddings, partial rotary 0.75; random weights, "
        "bf16 safetensors on the transformers engine in bf16",
        "student": "Qwen2.5-0.5B's shape: qwen2, hidden 896, 24 layers, 14 heads, 2 kv heads, "
        "vocab 151936, tied embeddings; random weights, int4 by the conversion stage, on ORT GenAI",
        "teacher_run": side(teacher),
        "student_run": side(student),
        "teacher_build_seconds": round(teacher["build_seconds"], 1),
        "workload": f"{REQUESTS} greedy /v1/completions of {MAX_TOKENS} tokens after a warm-up, "
        f"prompt {student['prompt']!r}, one at a time; the student before and after the teacher; medians",
        "measured_reductions": {
            "latency": round(reduction(_latency(teacher), _latency(student)), 3),
            "memory": round(reduction(teacher["peak_rss_bytes"], student["peak_rss_bytes"]), 3),
            "size": round(reduction(teacher["weights_bytes"], student["weights_bytes"]), 3),
        },
        "seed_claim": {**SEED_CLAIM, "size": "not stated"},
    }


@register("seed_latency_reduction")
def seed_latency_reduction() -> Outcome:
    """Median request latency the student saves against its teacher; ratio = reduction (seed: 0.85)."""
    m = measurements()
    teacher, student = _latency(m["teacher"]), _latency(m["student"])
    return Outcome(
        value=teacher - student, baseline=teacher, unit="s",
        value_label="latency_saved_seconds", baseline_label="teacher_latency_seconds",
        details={"student_latency_seconds": round(student, 3), **_details(m)},
    )  # fmt: skip


@register("seed_memory_reduction")
def seed_memory_reduction() -> Outcome:
    """Peak resident memory of the student's predictor against the teacher's; ratio = reduction (seed: 0.95)."""
    m = measurements()
    teacher, student = m["teacher"]["peak_rss_bytes"] / 2**20, m["student"]["peak_rss_bytes"] / 2**20
    return Outcome(
        value=teacher - student, baseline=teacher, unit="MiB",
        value_label="peak_rss_saved_mib", baseline_label="teacher_peak_rss_mib",
        details={"student_peak_rss_mib": round(student), **_details(m)},
    )  # fmt: skip


@register("seed_size_reduction")
def seed_size_reduction() -> Outcome:
    """Bytes on disk of the student's served weights against the teacher's; ratio = reduction."""
    m = measurements()
    teacher, student = m["teacher"]["weights_bytes"] / 1e6, m["student"]["weights_bytes"] / 1e6
    return Outcome(
        value=teacher - student, baseline=teacher, unit="MB",
        value_label="weights_saved_mb", baseline_label="teacher_weights_mb",
        details={"student_weights_mb": round(student, 1), **_details(m)},
    )  # fmt: skip
