"""A decoder graph whose LM head runs on one position per sequence: each row's last real token.

The model builder's graph runs the LM head over every position of the chunk
it is given and returns logits [batch, sequence_length, vocab]; ORT GenAI then
keeps one row per sequence. At prefill that is a [S, hidden] x [hidden, vocab]
product per sequence where one row is needed (with a 150k vocabulary, 0.6 MB
of logits and most of the prefill's time for a 0.5B model).

`keep_last_logits` rewrites the graph so the LM head gets [batch, 1, hidden]:
for each row, the hidden state of the last token the attention mask marks as
real in the current chunk. A chunk of S tokens after `past = total - S`
tokens (total: the attention mask's width) picks, in row b,

    index_b = clip(sum(attention_mask_b) - 1 - past, 0, S - 1)

which is L_b - 1 for a prefill of right-padded prompts of lengths L_b (the
token ORT GenAI would have picked from the full logits) and 0 for a decode
step. The `logits` output then declares its second dimension as 1, which tells
ORT GenAI 0.13 (`Model::IsPruned`) that the graph returns only the logits it
samples from. Only the graph file changes: its weights stay in
`model.onnx.data`, referenced as before.

Conversion keeps the builder's graph as `model.onnx` (every ORT GenAI consumer
can run it: `og.Engine`'s continuous batching, for one, rejects a pruned
graph) and writes the rewritten one beside it, sharing its weights
(`prefill_graph_name`). The predictor's ORT GenAI engine runs that one when
the folder has it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from slmops.core.model_files import prefill_graph_name

PREFIX = "/slmops/last_logits"
MAX_GRAPH_BYTES = 64 << 20  # a graph file past this holds its weights: a second copy would double them
_LM_HEADS = {("", "MatMul"), ("com.microsoft", "MatMulNBits")}


def _lm_head(graph, output: str):
    """The MatMul/MatMulNBits the output comes from (through Casts), and the tensors in between."""
    producers = {name: node for node in graph.node for name in node.output}
    chain, name = [], output
    while (node := producers.get(name)) is not None and node.op_type == "Cast":
        chain.append(name)
        name = node.input[0]
    if node is None or (node.domain, node.op_type) not in _LM_HEADS:
        return None, []
    return node, [*chain, name]


def _rewrite(graph, head, chain: list[str], mask_type: int, input_ids: str, mask: str, output) -> None:
    """Insert the per-row gather in front of head's activation input; set the output's dim 1 to 1."""
    from onnx import TensorProto, helper, numpy_helper

    def name(part: str) -> str:
        return f"{PREFIX}/{part}"

    constants = {"zero": [0], "one": [1], "axis1": [1], "axes12": [1, 2], "ones2": [1, 1]}
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v, dtype=np.int64), name(k)) for k, v in constants.items()
    )
    hidden = head.input[0]
    mask64 = mask
    nodes = []
    if mask_type != TensorProto.INT64:
        mask64 = name("mask_int64")
        nodes.append(helper.make_node("Cast", [mask], [mask64], name=mask64, to=TensorProto.INT64))
    steps = [  # (op, inputs, output, attributes)
        ("ReduceSum", [mask64, name("axis1")], "real", {"keepdims": 0}),  # [B]
        ("Shape", [mask], "total", {"start": 1, "end": 2}),  # [1]
        ("Shape", [input_ids], "chunk", {"start": 1, "end": 2}),  # [1]
        ("Sub", [name("total"), name("chunk")], "past", {}),
        ("Add", [name("past"), name("one")], "past_plus_one", {}),
        ("Sub", [name("real"), name("past_plus_one")], "offset", {}),  # last real token in the chunk
        ("Sub", [name("chunk"), name("one")], "last", {}),
        ("Max", [name("offset"), name("zero")], "at_least_zero", {}),
        ("Min", [name("at_least_zero"), name("last")], "index", {}),  # [B]
        ("Unsqueeze", [name("index"), name("axes12")], "index3", {}),  # [B, 1, 1]
        ("Shape", [hidden], "width", {"start": -1}),  # [H]
        ("Concat", [name("ones2"), name("width")], "gather_shape", {"axis": 0}),  # [1, 1, H]
        ("Expand", [name("index3"), name("gather_shape")], "gather_index", {}),  # [B, 1, H]
        ("GatherElements", [hidden, name("gather_index")], "hidden", {"axis": 1}),  # [B, 1, H]
    ]
    for op, inputs, out, attributes in steps:
        nodes.append(helper.make_node(op, inputs, [name(out)], name=name(out), **attributes))
    head.input[0] = name("hidden")
    position = next(i for i, node in enumerate(graph.node) if node is head)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    stale = [info for info in graph.value_info if info.name in chain]
    for info in stale:
        graph.value_info.remove(info)
    dim = output.type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = 1


def keep_last_logits(
    model_onnx: str | Path,
    logits: str = "logits",
    input_ids: str = "input_ids",
    attention_mask: str = "attention_mask",
    out: str | Path | None = None,
) -> bool:
    """Rewrite the graph file (in place, or into `out` in the same folder) so `logits` is
    [batch, 1, vocab], each row's last real token.

    True when rewritten. False, with the file untouched, when the graph does
    not have the builder's shape: no such output, input_ids or attention_mask,
    no MatMul/MatMulNBits LM head feeding the output, or an output that
    already has one position (a graph rewritten before).
    """
    import onnx

    path = Path(model_onnx)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    output = next((o for o in graph.output if o.name == logits), None)
    inputs = {i.name: i for i in graph.input}
    if output is None or input_ids not in inputs or attention_mask not in inputs:
        return False
    dims = output.type.tensor_type.shape.dim
    if len(dims) != 3 or (dims[1].HasField("dim_value") and dims[1].dim_value == 1):
        return False
    head, chain = _lm_head(graph, logits)
    if head is None or not head.input:
        return False
    mask_type = inputs[attention_mask].type.tensor_type.elem_type
    _rewrite(graph, head, chain, mask_type, input_ids, attention_mask, output)
    target = Path(out) if out is not None else path
    handle, scratch = tempfile.mkstemp(prefix=f".{target.name}.", dir=path.parent)
    os.close(handle)
    try:
        onnx.save(model, scratch)
        shutil.copymode(path, scratch)
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)
    return True


def keep_last_logits_in(folder: str | Path) -> bool:
    """`keep_last_logits` on an ORT GenAI folder's decoder (the names its genai_config.json gives),
    written beside it as `prefill_graph_name(...)`; the builder's graph stays as it is. False when
    the graph does not have the builder's shape or holds its weights itself."""
    config = json.loads((Path(folder) / "genai_config.json").read_text(encoding="utf-8"))
    decoder = config.get("model", {}).get("decoder", {})
    inputs, outputs = decoder.get("inputs", {}), decoder.get("outputs", {})
    graph = Path(folder) / decoder.get("filename", "model.onnx")
    if not graph.is_file() or graph.stat().st_size > MAX_GRAPH_BYTES:
        return False
    return keep_last_logits(
        graph,
        logits=outputs.get("logits", "logits"),
        input_ids=inputs.get("input_ids", "input_ids"),
        attention_mask=inputs.get("attention_mask", "attention_mask"),
        out=graph.with_name(prefill_graph_name(graph.name)),
    )
