"""Facts read from model folders and the machine, used at run time by more than one service.

- `count_parameters`: parameters of a Hugging Face checkpoint, from its safetensors headers.
- `find_adapters`: the `.onnx_adapter` files of an ORT GenAI folder, by name.
- `usable_cores`: CPU cores this process may use (affinity and a cgroup quota).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path


def count_parameters(model_dir: str | Path) -> int:
    """Number of parameters of a Hugging Face checkpoint, read from its safetensors headers."""
    total = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {model_dir}")
    for path in files:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
    return total


def find_adapters(model_dir: Path) -> dict[str, Path]:
    """{name: file} of the `.onnx_adapter` files in the folder or its `adapters/`."""
    files = [*model_dir.glob("*.onnx_adapter"), *(model_dir / "adapters").glob("*.onnx_adapter")]
    return {f.name.removesuffix(".onnx_adapter"): f for f in sorted(files)}


def usable_cores() -> int:
    """CPU cores this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def prefill_graph_name(graph_file: str) -> str:
    """The decoder graph conversion writes beside the builder's, with the LM head on each sequence's
    last token only (conversion/last_logits.py): model.onnx -> model.last-logits.onnx."""
    return graph_file.removesuffix(".onnx") + ".last-logits.onnx"
