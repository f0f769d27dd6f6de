"""An ONNX Runtime GenAI folder packaged for Microsoft Foundry Local, and a size report.

Foundry Local finds a model in its cache folder (`foundry cache cd DIR` points
it at one) by walking the publisher folders below it: a folder holding
`genai_config.json` and an `inference_model.json` with a `Name` is one model,
whatever its depth (microsoft/Foundry-Local, sdk_v2/cpp/src/catalog/
local_model_scanner.cc, and its test local_model_scanner_test.cc, which uses
`<cache>/<publisher>/<model>`). A folder that also holds `download.tmp` counts
as a download in progress and is skipped, so a package is built beside its
place and renamed into it. A `Name` without a `:version` is listed as
`Name:0` (same file); the repository's test data stores `Name` `x:1` in a
folder `x-1` (sdk_v2/cpp/test/testdata/fake-model-gpu-1).

`inference_model.json` is `{"Name": str, "PromptTemplate": {...} | null}`
(sdk_v2/cpp/src/download/inference_model_writer.cc). `PromptTemplate` has
the optional string keys `system`, `user`, `assistant` and `prompt` (the
SDKs' PromptTemplate types: sdk/python/src/detail/model_data_types.py,
sdk/rust/src/types.rs); each wraps one message's text, inserted at the
`{Content}` placeholder (Microsoft Learn, "Compile Hugging Face models to run
on Foundry Local", MicrosoftDocs/azure-ai-docs articles/foundry-local/how-to/
how-to-compile-hugging-face-models.md). `prompt` wraps the user message the
model answers and ends with the assistant's opening, as in the catalog's
Phi templates (sdk_v2/cpp/test/internal_api/azure_catalog_test.cc).

Neither source writes down how the keys join for a conversation; this module
takes the reading those examples imply and checks it: the prompt is
`system(S) + user(U1) + assistant(A1) + ... + prompt(Un)`, plain
concatenation (`apply_prompt_template`). The strings are derived from the
tokenizer's chat template by rendering it, with the predictor's sandboxed
renderer, on sentinel messages and cutting the result around each sentinel;
the derived template must then reproduce the renderer's output for fresh
conversations, or the template is refused. Newer Foundry Local runtimes apply
the tokenizer's own chat template through ORT GenAI (sdk_v2/cpp/src/
inferencing/generative/chat/chat_template.cc), which the package keeps as is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmops.core import chat_template
from slmops.core.errors import AlreadyExists, InvalidSpec

log = logging.getLogger(__name__)

CONTENT = "{Content}"
INFERENCE_MODEL_FILE = "inference_model.json"
# Written by slmops beside the payload, or rewritten here: not copied into a package.
NOT_PACKAGED = {"manifest.json", INFERENCE_MODEL_FILE}
# Large, read-only payload: hard-linked when the file system allows, other files copied.
LINKABLE_SUFFIXES = (".onnx", ".onnx.data", ".onnx_adapter")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?")
PUBLISHER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
NOT_WEIGHTS = {"training_args.bin"}  # a Trainer checkpoint's pickled arguments

Messages = list[dict[str, str]]
Renderer = Callable[[Messages], str]

# Sentinels cut the rendered template into its fixed pieces; probes then check the result.
_MARKS = {"system": "Qslmopsx1sys", "user1": "Qslmopsx2usr", "assistant": "Qslmopsx3ast",
          "user2": "Qslmopsx4usr"}  # fmt: skip
_PROBE_SYSTEM = "You answer in one short sentence."
_PROBE_TURNS = [("user", "What is 2 + 3?"), ("assistant", "It is 5."), ("user", "And 4 + 4?"),
                ("assistant", "That makes 8."), ("user", "Thanks, bye.")]  # fmt: skip


def apply_prompt_template(template: dict[str, str], messages: Messages) -> str:
    """The prompt a PromptTemplate gives: each message wrapped by its role's string, the last
    (a user message) by `prompt`, joined without separators."""
    if not messages or messages[-1]["role"] != "user":
        raise InvalidSpec("messages", "must end with a user message")
    parts = []
    for i, message in enumerate(messages):
        key = "prompt" if i == len(messages) - 1 else message["role"]
        if key not in template:
            raise InvalidSpec(f"messages[{i}].role", f"the PromptTemplate has no {key!r} string")
        parts.append(template[key].replace(CONTENT, message["content"]))
    return "".join(parts)


def _pieces(text: str, marks: list[str]) -> list[str]:
    """text cut at each mark (each exactly once, in order): the len(marks) + 1 pieces around them."""
    at = [text.find(mark) for mark in marks]
    if any(text.count(mark) != 1 for mark in marks) or at != sorted(at):
        raise InvalidSpec("chat_template", "it does not copy each message's text into the prompt "
                          "once and in order, so it has no {Content} form")  # fmt: skip
    ends = [0] + [i + len(mark) for i, mark in zip(at, marks, strict=True)]
    return [text[start:stop] for start, stop in zip(ends, [*at, len(text)], strict=True)]


def _common_prefix(*texts: str) -> str:
    return os.path.commonprefix(list(texts))


def _common_suffix(a: str, b: str) -> str:
    return _common_prefix(a[::-1], b[::-1])[::-1]


def _turn_end(gaps: list[str], head: str, first_role: str) -> str:
    """The text every turn ends with: what all gaps after a message share, less the start of the
    next turn's header (the part of it that precedes the role in the first header). The cut
    falls before a '<' or '[', or after a '>', ']' or newline, so a special token stays whole."""
    end = _common_prefix(*gaps)
    for k in range(1, len(end)):
        at_boundary = end[k - 1] in ">]\n" or end[k] in "<["
        if at_boundary and end[k:] + first_role in head:
            return end[:k]
    return end


def _with_system(render: Renderer) -> dict[str, str]:
    m = _MARKS
    conversation = [{"role": "system", "content": m["system"]}, {"role": "user", "content": m["user1"]},
                    {"role": "assistant", "content": m["assistant"]},
                    {"role": "user", "content": m["user2"]}]  # fmt: skip
    head, g1, g2, g3, tail = _pieces(render(conversation), [c["content"] for c in conversation])
    end = _turn_end([g1, g2, g3, tail], head, "system")
    n = len(end)
    if g1[n:] == g3[n:]:  # one turn end for every role: the usual case
        r_sys = r_user = r_asst = end
        l_user, l_asst, gen = g1[n:], g2[n:], tail[n:]
    else:  # turns end differently (e.g. a system text inside the first user turn)
        l_user = _common_suffix(g1, g3)
        r_sys, r_asst = g1[: len(g1) - len(l_user)], g3[: len(g3) - len(l_user)]
        r_user = _common_prefix(g2, tail)
        l_asst, gen = g2[len(r_user) :], tail[len(r_user) :]
    return {
        "system": head + CONTENT + r_sys,
        "user": l_user + CONTENT + r_user,
        "assistant": l_asst + CONTENT + r_asst,
        "prompt": l_user + CONTENT + r_user + gen,
    }


def _without_system(render: Renderer) -> dict[str, str]:
    """For templates that refuse a system message: the first user turn is the template's start."""
    m = _MARKS
    conversation = [{"role": "user", "content": m["user1"]}, {"role": "assistant", "content": m["assistant"]},
                    {"role": "user", "content": m["user2"]}]  # fmt: skip
    head, g2, g3, tail = _pieces(render(conversation), [c["content"] for c in conversation])
    end = _turn_end([g2, g3, tail], head, "user")
    n = len(end)
    if g3[n:] == head:
        r_user = r_asst = end
    else:  # the first user turn cannot repeat: _check refuses the result
        r_user, r_asst = _common_prefix(g2, tail), g3
    return {
        "user": head + CONTENT + r_user,
        "assistant": g2[len(r_user) :] + CONTENT + r_asst,
        "prompt": head + CONTENT + tail,
    }


def _check(template: dict[str, str], render: Renderer, system: bool) -> None:
    """The template must give the renderer's prompt for a short and a longer conversation."""
    turns = [{"role": role, "content": text} for role, text in _PROBE_TURNS]
    lead = [{"role": "system", "content": _PROBE_SYSTEM}] if system else []
    if any(text.count(CONTENT) != 1 for text in template.values()):
        raise InvalidSpec("chat_template", "its fixed text contains {Content} itself")
    for conversation in (lead + turns[:1], lead + turns):
        if apply_prompt_template(template, conversation) != render(conversation):
            kind = "one question" if len(conversation) <= 2 else "a conversation of several turns"
            raise InvalidSpec("chat_template", f"for {kind} it renders text that Foundry Local's "
                              "system/user/assistant/prompt strings cannot reproduce")  # fmt: skip
    if system:
        alone = turns[:1]
        if apply_prompt_template(template, alone) != render(alone):
            log.warning("without a system message the chat template adds text (a default system "
                        "prompt or a start token) that Foundry Local's PromptTemplate leaves out")  # fmt: skip


def _renderer(model_dir: Path) -> Renderer:
    """messages -> prompt as the predictor builds it: the chat template, or the plain fallback."""
    template, tokenizer_config = chat_template.read_template(model_dir)
    if template is None:
        return chat_template.fallback_prompt
    return lambda messages: chat_template.render(template, messages, tokenizer_config)


def prompt_template(model_dir: Path) -> dict[str, str]:
    """Foundry Local's PromptTemplate for a model folder, derived from its chat template.

    Without a chat template it mirrors the predictor's plain fallback transcript
    (`chat_template.fallback_prompt`). Raises InvalidSpec("chat_template", ...)
    when the template cannot be written as {Content} strings that reproduce it.
    """
    render = _renderer(model_dir)
    try:
        result, system = _with_system(render), True
    except InvalidSpec as refused:
        if refused.field != "messages":  # the renderer's field: the template refused a system turn
            raise
        try:
            result, system = _without_system(render), False
        except InvalidSpec as exc:
            raise InvalidSpec("chat_template", f"it refuses plain conversations: {exc}") from exc
    _check(result, render, system)
    return result


def _check_model_dir(model_dir: Path) -> None:
    config_path = model_dir / "genai_config.json"
    if not config_path.is_file():
        raise InvalidSpec("model_dir", f"{model_dir} has no genai_config.json: not an ORT GenAI folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    filename = config.get("model", {}).get("decoder", {}).get("filename", "model.onnx")
    if not (model_dir / filename).is_file():
        raise InvalidSpec("model_dir", f"{model_dir} lacks {filename}, the model genai_config.json names")


def _place(source: Path, target: Path, link: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if link and source.name.endswith(LINKABLE_SUFFIXES):
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or one without hard links
            pass
    shutil.copy2(source, target)


def foundry_package(
    model_dir: Path,
    out_dir: Path,
    name: str,
    *,
    publisher: str = "slmops",
    link: bool = True,
    overwrite: bool = False,
) -> Path:
    """Package the ORT GenAI folder model_dir for Foundry Local; returns the model's folder.

    out_dir is a Foundry Local cache folder (`foundry cache cd out_dir`); the
    model goes to `out_dir/<publisher>/<name, ':' as '-'>/` with every file
    of model_dir (adapters included; the ONNX payload hard-linked when link and
    the file system allow, the rest copied) and an `inference_model.json`
    naming it `name` with a PromptTemplate from its chat template. Raises
    InvalidSpec naming the bad field, or AlreadyExists unless overwrite.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    problems = []
    if not NAME_PATTERN.fullmatch(name):
        problems.append(("name", "letters, digits, '.', '_' and '-', optionally ':<version>'"))
    if not PUBLISHER_PATTERN.fullmatch(publisher):
        problems.append(("publisher", "letters, digits, '.', '_' and '-'"))
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
    _check_model_dir(model_dir)
    template = prompt_template(model_dir)
    target = out_dir / publisher / name.replace(":", "-")
    if target.exists() and not overwrite:
        raise AlreadyExists(f"{target} exists; pass overwrite=True to replace it")
    scratch = target.parent / f".{target.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        for source in sorted(model_dir.rglob("*")):
            relative = source.relative_to(model_dir)
            if source.is_file() and relative.as_posix() not in NOT_PACKAGED:
                _place(source, scratch / relative, link)
        descriptor = {"Name": name, "PromptTemplate": template}
        (scratch / INFERENCE_MODEL_FILE).write_text(json.dumps(descriptor, indent=2), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _sizes(folder: Path, skip: set[str]) -> dict[str, int]:
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in skip
    }


def _is_weights(filename: str) -> bool:
    return filename.endswith(WEIGHT_SUFFIXES) and filename not in NOT_WEIGHTS


def size_report(model_dir: Path, source_dir: Path) -> dict[str, Any]:
    """Sizes of a converted folder against its source checkpoint.

    Returns {"files": {relative path: bytes}, "total_bytes", "source_files",
    "source_bytes", "ratio"}: every file of model_dir but its manifest.json;
    the checkpoint's *.safetensors / *.bin weights and config.json; ratio =
    total_bytes / source_bytes.
    """
    model_dir, source_dir = Path(model_dir), Path(source_dir)
    files = _sizes(model_dir, {"manifest.json"})
    source_files = {
        path.name: path.stat().st_size
        for path in sorted(source_dir.iterdir())
        if path.is_file() and (path.name == "config.json" or _is_weights(path.name))
    }
    if not any(_is_weights(n) for n in source_files):
        raise InvalidSpec("source_dir", f"{source_dir} holds no *.safetensors or *.bin weights")
    total, source_total = sum(files.values()), sum(source_files.values())
    return {
        "files": files,
        "total_bytes": total,
        "source_files": source_files,
        "source_bytes": source_total,
        "ratio": total / source_total,
    }
