"""An ONNX Runtime GenAI folder whose LoRA adapters are loaded at run time.

The conversion (`olive_convert.convert` with `adapters`) turns a Hugging Face
checkpoint and a few peft LoRA adapters into one folder that serves the base
model and every adapter:

    model.onnx, model.onnx.data, genai_config.json, tokenizer files
    adapters/<name>.onnx_adapter

ORT GenAI loads the adapter files with `og.Adapters(model).load(path, name)`
and a generator picks one with `set_active_adapter`; a generator that picks
none runs the base model.

How: the conversion's Olive workflow runs the ORT GenAI model builder once,
with the first adapter as Olive's `adapter_path`, so the graph gets a LoRA
branch (`x @ A @ B`, added to the base MatMul) beside every adapted
projection, with A and B baked in as initializers. `install` then turns those
initializers into optional graph inputs whose default has rank 0 (the branch
adds nothing) and writes each adapter's weights under the same input names,
transposed and with B multiplied by the peft scaling, as the builder does.
The first adapter's file is checked against the weights the builder baked, so
a change in the builder's naming or scaling fails the build, not the serving.

Olive's `ExtractAdapters` pass does the middle step too, but Olive 0.13 lists
every adapter input twice and gives all of them one rank symbol, so an adapter
that adapts fewer modules than the first fails in ONNX Runtime ("Shape mismatch
attempting to re-use buffer"); here each module has its own rank symbol.

With int4 the base MatMuls are quantized and the LoRA MatMuls stay float (the
builder is told to skip them), so adapters keep working and their rank may vary.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

ADAPTERS_DIR = "adapters"
ADAPTER_SUFFIX = ".onnx_adapter"
PRECISIONS = ("fp32", "int4")  # the CPU builds checked with adapters
# peft's key for a LoRA matrix of a decoder layer's projection (Llama/Qwen2 naming).
_PEFT_KEY = re.compile(
    r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight"
)
_BUILDER_BLOCK = {"self_attn": "attn", "mlp": "mlp"}
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class AdapterBuildError(ValueError):
    """An adapter the builder cannot turn into run-time ONNX weights."""


def lora_node_name(peft_key: str) -> str:
    """The builder's MatMul node for a peft LoRA key, e.g. `/model/layers.0/attn/q_proj/lora_A/MatMul`."""
    match = _PEFT_KEY.fullmatch(peft_key)
    if match is None:
        raise AdapterBuildError(f"unsupported LoRA weight {peft_key!r} (only decoder-layer projections)")
    layer, block, proj, which = match.groups()
    return f"/model/layers.{layer}/{_BUILDER_BLOCK[block]}/{proj}/lora_{which}/MatMul"


def lora_input_name(peft_key: str) -> str:
    """The graph input (the builder's initializer name) that holds a peft LoRA matrix."""
    return lora_node_name(peft_key)[1:].replace("/", ".") + ".weight"


def _peft_weights(adapter_dir: Path) -> tuple[dict[str, np.ndarray], float]:
    """The adapter's LoRA matrices (float32, as peft stores them) and its scaling."""
    from peft import LoraConfig, load_peft_weights

    config = LoraConfig.from_pretrained(str(adapter_dir))
    if getattr(config, "use_dora", False):
        raise AdapterBuildError(f"{adapter_dir}: DoRA adapters are not supported")
    if config.rank_pattern or config.alpha_pattern:
        raise AdapterBuildError(f"{adapter_dir}: per-module rank_pattern/alpha_pattern are not supported")
    if config.modules_to_save:
        raise AdapterBuildError(f"{adapter_dir}: modules_to_save {config.modules_to_save} cannot be swapped")
    scaling = config.lora_alpha / (math.sqrt(config.r) if config.use_rslora else config.r)
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    return {key: value.float().numpy() for key, value in weights.items()}, scaling


def adapter_weights(adapter_dir: str | Path) -> dict[str, np.ndarray]:
    """A peft LoRA adapter as the model's inputs: {input name: A^T, or B^T times the scaling}."""
    peft, scaling = _peft_weights(Path(adapter_dir))
    weights = {}
    for key, value in peft.items():
        matrix = np.ascontiguousarray(value.T)
        if ".lora_B." in key:
            matrix = matrix * np.float32(scaling)
        weights[lora_input_name(key)] = matrix.astype(np.float32)
    return weights


def write_adapter(weights: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Save weights as an `.onnx_adapter` file (ONNX Runtime's LoRA adapter format)."""
    import onnxruntime as ort

    arrays = {name: np.ascontiguousarray(value) for name, value in weights.items()}
    # OrtValues point into the numpy arrays without copying: keep `arrays` alive until the export.
    values = {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in arrays.items()}
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(values)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    adapter.export_adapter(str(out))
    return out


def _lora_to_inputs(model: ir.Model, names: set[str]) -> dict[str, np.ndarray]:
    """Turn the named LoRA initializers into inputs with a rank-0 default; returns the baked weights.

    Each module gets its own rank symbol (`<module>.lora_r`) on A's columns, B's
    rows and the A MatMul's output.
    """
    import onnx_ir as ir

    graph = model.graph
    missing = sorted(names - set(graph.initializers))
    if missing:
        raise AdapterBuildError(f"the built graph has no LoRA weights named {missing[:3]} ...")
    baked = {}
    for name in sorted(names):
        value = graph.initializers[name]
        consumers = value.consumers()
        if [node.op_type for node in consumers] != ["MatMul"]:
            raise AdapterBuildError(f"{name} feeds {[n.op_type for n in consumers]}, not one float MatMul")
        baked[name] = value.const_value.numpy().copy()
        rank_axis = 1 if ".lora_A." in name else 0
        rank = ir.SymbolicDim(name.split(".lora_")[0] + ".lora_r")
        dims: list[Any] = list(baked[name].shape)
        dims[rank_axis] = 0
        value.const_value = ir.tensor(np.zeros(dims, dtype=baked[name].dtype), name=name)
        dims[rank_axis] = rank
        value.shape = ir.Shape(dims)
        graph.inputs.append(value)
        output = consumers[0].outputs[0]
        if rank_axis == 1 and output.shape is not None:
            output.shape = ir.Shape([*list(output.shape)[:-1], rank])
    return baked


@dataclass
class AdapterPlan:
    """The adapters of one build: their weights as model inputs, and the one that shapes the graph."""

    paths: dict[str, Path]
    weights: dict[str, dict[str, np.ndarray]]
    lora_nodes: list[str]  # the builder's LoRA MatMuls, kept float in an int4 build

    @property
    def template(self) -> Path:
        return next(iter(self.paths.values()))


def plan(adapters: Mapping[str, str | Path], precision: str = "fp32") -> AdapterPlan:
    """Check the adapters and read their weights; AdapterBuildError for what cannot be served.

    adapters: {name: peft LoRA folder}. The first in name order shapes the
    graph; the others may adapt the same modules or fewer, with any ranks.
    """
    if precision not in PRECISIONS:
        raise AdapterBuildError(f"adapters are built for {' or '.join(PRECISIONS)}, not {precision}")
    if not adapters:
        raise AdapterBuildError("give at least one adapter")
    bad = [name for name in adapters if not _NAME_OK.fullmatch(name)]
    if bad:
        raise AdapterBuildError(f"adapter names must be plain file names, not {bad}")
    paths = {name: Path(adapters[name]) for name in sorted(adapters)}
    weights = {name: adapter_weights(path) for name, path in paths.items()}
    first = next(iter(paths))
    for name, tensors in weights.items():
        unknown = sorted(set(tensors) - set(weights[first]))
        if unknown:
            raise AdapterBuildError(f"adapter {name!r} adapts modules that {first!r} does not: {unknown[:3]}")
    lora_nodes = sorted(lora_node_name(key) for key in _peft_weights(paths[first])[0])
    return AdapterPlan(paths, weights, lora_nodes)


def install(
    adapter_plan: AdapterPlan, built: Path, target: Path, skip: frozenset[str] | set[str] = frozenset()
) -> None:
    """Save the built model into target with LoRA inputs, then one `.onnx_adapter` per adapter."""
    first = next(iter(adapter_plan.paths))
    dtypes = _move_with_lora_inputs(built, target, adapter_plan.weights[first], skip)
    for name, tensors in adapter_plan.weights.items():
        typed = {key: value.astype(dtypes[key]) for key, value in tensors.items()}
        write_adapter(typed, target / ADAPTERS_DIR / f"{name}{ADAPTER_SUFFIX}")


def _move_with_lora_inputs(
    built: Path, target: Path, template: dict[str, np.ndarray], skip: frozenset[str] | set[str]
) -> dict[str, np.dtype]:
    """Save the built model into target with LoRA inputs and copy its other files; the inputs' dtypes.

    The weights the builder baked must be the template adapter's as
    `adapter_weights` maps them, or the other adapters' files would be wrong.
    """
    import onnx_ir as ir

    model = ir.load(str(built / "model.onnx"))
    baked = _lora_to_inputs(model, set(template))
    if not all(np.allclose(template[k], v, rtol=1e-5, atol=1e-6) for k, v in baked.items()):
        raise AdapterBuildError(
            "the builder baked other LoRA weights than the adapter's: did its naming change?"
        )
    ir.save(model, str(target / "model.onnx"), external_data="model.onnx.data")
    for item in built.iterdir():
        if item.is_file() and item.name not in {"model.onnx", "model.onnx.data", *skip}:
            shutil.copy2(item, target / item.name)
    return {name: array.dtype for name, array in baked.items()}
