"""Checks of a training spec for its recipe: the spec's sections, then what the inputs hold.

Each check appends (proto field path, problem) pairs; the caller raises them
all at once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
from pydantic import BaseModel, ValidationError

from slmops.core.errors import InvalidSpec
from slmops.training import chat, data
from slmops.training.config import Hyperparameters, Resources
from slmops.training.recipes.registry import Problems, Recipe
from slmops.training.recipes.sections import (
    INTEGER_FIELDS,
    SEARCHABLE,
    DistillSettings,
    LoraSettings,
    SearchDimension,
)

_SECTION_FIELDS = {"lora": "spec.lora", "distill": "spec.distill", "adapters": "spec.adapters"}
_USED_BY = {"lora": "LORA, QLORA and MULTI_ADAPTER", "distill": "LOGIT_DISTILL", "adapters": "MULTI_ADAPTER"}
PEEK = 32  # records read from each dataset at Create
ADAPTER_METHODS = ("lora", "qlora", "multi_adapter")  # they cannot grow the base's vocabulary
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "hyperparameters": Hyperparameters,
    "lora": LoraSettings,
    "distill": DistillSettings,
}
# Files a config and tokenizer check never needs: a remote model's weights stay where they are.
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx.data", ".gguf", ".h5", ".msgpack")


def check_spec(recipe: Recipe, raw: dict[str, Any], problems: Problems) -> None:
    """The spec alone (its dict before validation): the shared checks, then the recipe's own."""
    common_spec(recipe, raw, problems)
    for check in recipe.extra_checks:
        check(raw, problems)


def common_spec(recipe: Recipe, raw: dict[str, Any], problems: Problems) -> None:
    """Sections the method does not read, datasets, the batch split and the search space."""
    for section, field in _SECTION_FIELDS.items():
        if raw.get(section) and section not in recipe.sections:
            problems.append((field, f"applies to {_USED_BY[section]} only, not {recipe.name.upper()}"))
    if recipe.name == "multi_adapter":
        adapters = raw.get("adapters") or []
        if not adapters:
            problems.append(("spec.adapters", "MULTI_ADAPTER needs at least one adapter (NAME and dataset)"))
        names = [a["name"] for a in adapters]
        for index, name in enumerate(names):
            if name in names[:index]:
                problems.append((f"spec.adapters[{index}].name", f"{name!r} is used twice"))
        if raw.get("dataset_uri"):
            problems.append(
                ("spec.dataset_uri", "MULTI_ADAPTER reads one dataset per adapter (spec.adapters)")
            )
    elif not raw.get("dataset_uri"):
        problems.append(("spec.dataset_uri", "is required: a dataset artifact with train.jsonl"))
    # Unvalidated values, with the models' defaults for the fields the spec left out.
    batch = Hyperparameters.model_construct(**raw.get("hyperparameters", {})).batch_size
    workers = Resources.model_construct(**raw.get("resources", {})).num_workers
    if isinstance(batch, int) and isinstance(workers, int) and workers > 0 and batch % workers:
        problems.append(
            ("spec.hyperparameters.batch_size", f"{batch} does not split evenly over {workers} workers")
        )
    search = raw.get("search")
    if search:
        allowed = recipe.searchable()
        for index, dim in enumerate(search.get("space", [])):
            if dim.get("name", "") not in allowed:
                problems.append(
                    (
                        f"spec.search.space[{index}].name",
                        f"{recipe.name.upper()} has no searchable field {dim.get('name', '')!r}; "
                        f"it has {', '.join(sorted(allowed))}",
                    )
                )
            else:
                _search_range(dim, f"spec.search.space[{index}]", problems)
        if recipe.name == "multi_adapter":
            problems.append(("spec.search", "does not apply to MULTI_ADAPTER (search each adapter's recipe)"))


def _search_range(raw: dict[str, Any], path: str, problems: Problems) -> None:
    """Every value a dimension can sample must be one its field accepts (a trial validates it again)."""
    shape = SearchDimension.model_construct(**raw)  # unvalidated, with the defaults of what is left out
    section, key = SEARCHABLE[shape.name]
    model = _SECTION_MODELS[section]
    if raw.get("distribution") == "choice":
        samples = [(f"{path}.values[{i}]", v) for i, v in enumerate(shape.values)]
    else:
        samples = [(f"{path}.low", shape.low), (f"{path}.high", shape.high)]
    for field, text in samples:
        try:
            value = float(text)
        except (TypeError, ValueError):
            continue  # SearchDimension reports values that are not numbers
        typed = int(value) if shape.name in INTEGER_FIELDS else value
        try:
            model.__pydantic_validator__.validate_assignment(model.model_construct(), key, typed)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].replace("Input should", "must")
            problems.append((field, f"{shape.name} {typed!r} is outside its range: {message}"))


def inputs(recipe: Recipe, config: Any, problems: Problems) -> None:
    """Look inside the base model, the datasets and the teacher the way the job will."""
    model_config, tokenizer = _base_model(config, problems)
    if model_config is None:
        return
    if config.lora is not None and config.lora.target_modules:
        _target_modules(model_config, config.lora.target_modules, problems)
    names = [a.name for a in config.adapters]
    for name, uri in config.datasets().items():
        field = "spec.dataset_uri" if name == "train" else f"spec.adapters[{names.index(name)}].dataset_uri"
        if _dataset(recipe, config, uri, field, model_config, problems, tokenizer):
            _validation_split(config, uri, field, problems)
    if config.distill is not None and config.distill.teacher:
        _teacher(config.distill.teacher, model_config, problems)


@contextmanager
def model_files(model: str, field: str) -> Iterator[str]:
    """A folder (or hub id) with the model's config and tokenizer, for checks at Create.

    A remote artifact's small files are copied to a temporary folder, removed
    afterwards; its weights are never copied.
    """
    from slmops.training import model_init

    if model.startswith("file://") or "://" not in model:
        yield model_init.resolve_model(model)
        return
    fs, path = fsspec.core.url_to_fs(model)
    if not fs.isdir(path):
        raise InvalidSpec(field, f"{model!r} does not exist")
    with tempfile.TemporaryDirectory(prefix="slmops-check-") as folder:
        for entry in fs.ls(path, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if not name.endswith(_WEIGHTS) and fs.isfile(entry):
                fs.get_file(entry, os.path.join(folder, name))
        yield folder


def _base_model(config: Any, problems: Problems) -> tuple[Any, Any]:
    """(the config the run starts from, its tokenizer with the chat template the run uses), or None
    for what cannot be loaded (with the problem).

    Shapes the tokenizer and max_seq_length rule out are reported too, as the
    job would before training.
    """
    from slmops.training import model_init

    tokenizer = None
    try:
        with model_files(config.base.model, model_init.FIELD) as model_dir:
            model_config = model_init.model_config(config.base, model_dir)
            try:
                tokenizer = model_init.load_tokenizer(model_dir)
                model_init.check_model(model_config, tokenizer, config.hyperparameters.max_seq_length)
                _chat_template(config, tokenizer, problems)
            except InvalidSpec as exc:
                problems.extend(exc.problems)
    except InvalidSpec as exc:
        problems.extend(exc.problems)
        return None, None
    return model_config, tokenizer


def _chat_template(config: Any, tokenizer: Any, problems: Problems) -> None:
    """Apply the spec's chat template to the tokenizer. Its tokens can be added for a full model, but
    an adapter cannot add them to its base, nor can a teacher model read them."""
    missing = chat.missing_tokens(tokenizer, config.chat_template)
    online = config.method == "logit_distill" and config.distill is not None and config.distill.teacher
    if missing and (config.method in ADAPTER_METHODS or online):
        problems.append(
            (
                chat.FIELD,
                f"the base's tokenizer lacks {', '.join(missing)}, which {config.chat_template} needs and "
                f"{'a teacher model cannot read' if online else 'an adapter cannot add to its base'}: "
                "use a base that has them (as Qwen2.5 does) or another template",
            )
        )
    chat.apply(tokenizer, config.chat_template)


def module_names(model_config: Any) -> set[str]:
    """The last name of every linear layer of a model built from model_config (on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def _target_modules(model_config: Any, targets: list[str], problems: Problems) -> None:
    try:
        names = module_names(model_config)
    except (ValueError, TypeError, RuntimeError) as exc:
        problems.append(("spec.base.model", f"the model cannot be built from its config: {exc}"))
        return
    missing = [t for t in targets if t not in names and t != "all-linear"]
    if missing:
        problems.append(
            (
                "spec.lora.target_modules",
                f"the {model_config.model_type} model has no {', '.join(missing)}; "
                f"its linear layers are {', '.join(sorted(names))}",
            )
        )


def _dataset(
    recipe: Recipe, config: Any, uri: str, field: str, model_config: Any, problems: Problems, tokenizer: Any
) -> bool:
    """Whether the dataset has train records; problems with what they hold are appended."""
    if not data.split_exists(uri, data.TRAIN_FILE):
        problems.append((field, f"{uri!r} has no {data.TRAIN_FILE}"))
        return False
    try:
        records = data.read_records(uri, data.TRAIN_FILE, field, allow_text=recipe.accepts_text, limit=PEEK)
    except InvalidSpec as exc:
        problems.extend(exc.problems)
        return False
    if not records:
        problems.append((field, f"{data.TRAIN_FILE} has no records"))
        return False
    chats = [r for r in records if isinstance(r.get("messages"), list)]
    if chats and tokenizer is not None:
        try:  # the template renders the records, prefix-stably
            data.tokenize_messages(tokenizer, chats[0]["messages"], 1 << 20)
        except InvalidSpec as exc:
            own = exc.problems[0][0] == chat.FIELD
            problems.extend(
                exc.problems if own else [(field, f"a messages record of {data.TRAIN_FILE}: {exc}")]
            )
    if recipe.name == "logit_distill" and not config.distill.teacher:
        if not all(data.has_topk_ids(r) for r in records):
            problems.append(
                (
                    field,
                    "has no stored top-k log-probabilities with token ids, which offline LOGIT_DISTILL needs: "
                    "synthesize with top_logprobs > 0 and a known teacher tokenizer, or set spec.distill.teacher",
                )
            )
            return True
        teachers = [r["teacher"] for r in records if isinstance(r.get("teacher"), dict)]
        vocab = next((t["vocab_size"] for t in teachers if t.get("vocab_size")), None)
        if vocab and int(vocab) != model_config.vocab_size:
            problems.append(
                (
                    field,
                    f"the teacher's vocabulary ({int(vocab)} tokens) differs from the student's "
                    f"({model_config.vocab_size}); logit distillation needs one vocabulary",
                )
            )
    return True


def _validation_split(config: Any, uri: str, field: str, problems: Problems) -> None:
    """What needs validation losses needs a validation split."""
    if data.split_exists(uri, data.VALIDATION_FILE):
        return
    if config.search is not None and config.search.metric == "eval_loss":
        problems.append(
            (
                "spec.search.metric",
                f"eval_loss needs a validation split, and {field} has no {data.VALIDATION_FILE}; "
                "add one or search on train_loss",
            )
        )
    if config.hyperparameters.early_stopping_patience:
        problems.append(
            (
                "spec.hyperparameters.early_stopping_patience",
                f"early stopping needs a validation split, and {field} has no {data.VALIDATION_FILE}",
            )
        )


def _teacher(teacher: str, student_config: Any, problems: Problems) -> None:
    from transformers import AutoConfig

    try:
        with model_files(teacher, "spec.distill.teacher") as folder:
            teacher_config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        problems.append(("spec.distill.teacher", f"cannot load the teacher's config from {teacher!r}: {exc}"))
        return
    except InvalidSpec as exc:
        problems.extend(exc.problems)
        return
    if teacher_config.vocab_size != student_config.vocab_size:
        problems.append(
            (
                "spec.distill.teacher",
                f"the teacher's vocabulary ({teacher_config.vocab_size} tokens) differs from the student's "
                f"({student_config.vocab_size}); logit distillation needs one vocabulary",
            )
        )
