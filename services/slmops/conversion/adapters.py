"""The LoRA adapters a conversion takes, checked against its base before anything is built.

`resolve` turns `spec.adapter_uris` into named adapter folders: a training
artifact of kind `adapter` holds one peft adapter (`adapter_config.json`) or,
from MULTI_ADAPTER, several under `adapters/<name>/`. `NAME=URI` names a
single adapter; otherwise it takes its folder's name, and a multi-adapter
artifact's adapters keep theirs.

Each adapter is checked against the base model the spec names, reading only
JSON and the safetensors header:

- the base it records (`base_model.json` beside it, written by the training
  service, or peft's `base_model_name_or_path`) must be the same model: the
  same URI, or weights with the same bytes;
- every LoRA matrix must fit the base's projection of that layer (rows and
  columns against the base's config);
- it must be plain LoRA on decoder-layer projections (no DoRA, per-module
  ranks or `modules_to_save`), what the ONNX build can swap at run time.

A mismatch is an `INVALID_ARGUMENT` naming the adapter and both bases.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from slmops.core import artifacts, settings
from slmops.core.errors import InvalidSpec, NotFound

# Architectures whose builder graph names LoRA branches as conversion/onnx_adapters.py expects.
ADAPTER_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
BASE_FILE = "base_model.json"  # beside an adapter the training service wrote
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LORA_KEY = re.compile(
    r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight"
)


class AdapterRef(BaseModel):
    """One adapter of a conversion: its serving name and its folder's URI."""

    name: str
    uri: str


@dataclass
class _Adapter:
    name: str
    folder: Path
    recorded_base: str


def _split_name(raw: str) -> tuple[str, str]:
    """("name", uri) for `NAME=URI`, ("", raw) otherwise."""
    head, sep, tail = raw.partition("=")
    if sep and _NAME.fullmatch(head) and tail:
        return head, tail
    return "", raw


def _folder_name(folder: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-.") or "adapter"
    return name[:64] if name[0].isalnum() else f"a{name}"[:64]


def _recorded_base(folder: Path, config: dict[str, Any]) -> str:
    for candidate in (folder / BASE_FILE, folder.parent.parent / BASE_FILE):
        if candidate.is_file():
            try:
                base = json.loads(candidate.read_text(encoding="utf-8")).get("base_model")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(base, str) and base:
                return base
    base = config.get("base_model_name_or_path")
    return base if isinstance(base, str) else ""


def _adapters_in(uri: str, name: str, field: str, problems: list[tuple[str, str]]) -> list[_Adapter]:
    folder = artifacts.local_path(uri)
    if not folder.is_dir():
        problems.append((field, f"{uri!r} is not a folder"))
        return []
    if (folder / "adapter_config.json").is_file():
        singles = [(name or _folder_name(folder), folder)]
    else:
        singles = [
            (p.parent.name, p.parent) for p in sorted((folder / "adapters").glob("*/adapter_config.json"))
        ]
        if not singles:
            problems.append((field, f"{uri!r} is not a LoRA adapter: no adapter_config.json, "
                                    "nor adapters/<name>/adapter_config.json"))  # fmt: skip
            return []
        if name:
            listed = ", ".join(n for n, _ in singles)
            problems.append((field, f"NAME= names one adapter; {uri!r} holds {len(singles)} ({listed})"))
            return []
    found = []
    for adapter_name, path in singles:
        try:
            config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append((field, f"{path / 'adapter_config.json'} is unreadable: {exc}"))
            continue
        problem = _lora_problem(config)
        if problem:
            problems.append((field, f"adapter {adapter_name!r}: {problem}"))
            continue
        found.append(_Adapter(adapter_name, path, _recorded_base(path, config)))
    return found


def _lora_problem(config: dict[str, Any]) -> str:
    if config.get("peft_type") != "LORA":
        return f"is a {config.get('peft_type')!r} adapter; only LoRA converts"
    if config.get("use_dora"):
        return "DoRA adapters cannot be swapped at run time; merge it (spec.merge_adapters)"
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        return "per-module rank_pattern/alpha_pattern cannot be swapped at run time; merge it"
    if config.get("modules_to_save"):
        return f"modules_to_save {config['modules_to_save']} cannot be swapped at run time; merge it"
    return ""


def _projection_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """{projection: (in_features, out_features)} of a Llama/Qwen2-style decoder layer."""
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    return {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim), "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden),
    }  # fmt: skip


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(min(length, 100 * 2**20)))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _shape_problem(adapter: _Adapter, base_config: dict[str, Any], mergeable_only: bool) -> str:
    """Why the adapter's matrices do not fit the base (empty when they do)."""
    weights = adapter.folder / "adapter_model.safetensors"
    if not weights.is_file():
        return "has no adapter_model.safetensors (pickled adapter_model.bin is not loaded)"
    try:
        shapes = _safetensors_shapes(weights)
        projections = _projection_shapes(base_config)
        layers = int(base_config["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError, struct.error, ZeroDivisionError) as exc:
        return f"cannot read its shapes or the base's: {exc}"
    for key, shape in sorted(shapes.items()):
        match = _LORA_KEY.fullmatch(key)
        if match is None:
            if mergeable_only:
                continue
            return f"adapts {key}, which a run-time adapter cannot (decoder-layer projections only)"
        layer, proj, which = int(match.group(1)), match.group(2), match.group(3)
        if layer >= layers:
            return f"adapts layer {layer}; the base has {layers} layers"
        if proj not in projections:
            return f"adapts {proj}, which the base's decoder layers do not have"
        in_features, out_features = projections[proj]
        if len(shape) != 2:
            return f"{key} has shape {shape}, not a matrix"
        want, got = (in_features, shape[1]) if which == "A" else (out_features, shape[0])
        if got != want:
            side = "input" if which == "A" else "output"
            return f"{key} has {side} width {got}; the base's {proj} has {want}"
    return ""


def _digest(folder: Path) -> dict[str, str]:
    """{file: sha256} of a model folder's safetensors weights (from its manifest when sealed)."""
    try:
        hashes = artifacts.read_manifest(artifacts.to_uri(folder)).hashes
        found = {k: v for k, v in hashes.items() if k.endswith(".safetensors")}
        if found:
            return found
    except (NotFound, OSError, ValueError):
        pass
    digests = {}
    for path in sorted(folder.glob("*.safetensors")):
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digests[path.name] = digest.hexdigest()
    return digests


def _sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.glob("*.safetensors"))}


def same_base(recorded: str, model_uri: str) -> bool:
    """Whether the base an adapter records is the model at model_uri.

    The same URI, or a local folder whose safetensors weights have the same
    bytes. A base recorded as a hub id or a remote URI cannot be compared
    here: the shape check alone judges it.
    """
    if not recorded:
        return True
    recorded_uri = artifacts.to_uri(recorded) if (recorded.startswith(("/", "file://", "."))) else recorded
    if recorded_uri == model_uri:
        return True
    if not recorded_uri.startswith("file://"):
        return True
    mine, theirs = artifacts.local_path(model_uri), artifacts.local_path(recorded_uri)
    if not theirs.is_dir():
        return False  # a local base that is gone cannot be the one given
    if _sizes(mine) != _sizes(theirs):
        return False
    return _digest(mine) == _digest(theirs)


def resolve(
    uris: list[str], model_uri: str, base_config: dict[str, Any] | None, merge: bool,
    problems: list[tuple[str, str]],
) -> list[AdapterRef]:  # fmt: skip
    """The spec's adapters, named and checked against the base; problems name spec.adapter_uris[i]."""
    refs: list[AdapterRef] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(uris):
        field = f"spec.adapter_uris[{index}]"
        name, uri = _split_name(raw.strip())
        if not uri:
            problems.append((field, "is empty"))
            continue
        try:
            uri = artifacts.confine(uri, settings.allowed_roots(), field)
            if uri.startswith("file://"):
                artifacts.open_input(uri, field, verify=False)
        except InvalidSpec as exc:
            problems.extend(exc.problems)
            continue
        if not uri.startswith("file://"):
            problems.append((field, "adapters are read from the local artifact store (file:// or a path)"))
            continue
        for adapter in _adapters_in(uri, name, field, problems):
            if adapter.name in seen:
                problems.append(
                    (field, f"adapter name {adapter.name!r} is also given by {seen[adapter.name]}")
                )
                continue
            seen[adapter.name] = field
            if base_config is not None:
                problem = _shape_problem(adapter, base_config, mergeable_only=merge)
                if problem:
                    base = adapter.recorded_base or "a base it does not name"
                    problems.append((field, f"adapter {adapter.name!r} (trained on {base}) does not match "
                                            f"spec.model_uri {model_uri}: {problem}"))  # fmt: skip
                    continue
                if not same_base(adapter.recorded_base, model_uri):
                    problems.append((field, f"adapter {adapter.name!r} was trained on {adapter.recorded_base}, "
                                            f"not on spec.model_uri {model_uri} (their weights differ)"))  # fmt: skip
                    continue
            refs.append(AdapterRef(name=adapter.name, uri=artifacts.to_uri(adapter.folder)))
    return refs
