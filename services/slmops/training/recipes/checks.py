"""Checks every recipe shares: the spec's sections, then what the inputs hold.

Each check appends (proto field path, problem) pairs; the caller raises them
all at once.
"""

from __future__ import annotations

from typing import Any

from slmops.core.errors import InvalidSpec
from slmops.training import data
from slmops.training.recipes.registry import Problems, Recipe
from slmops.training.recipes.sections import SEARCHABLE

_SECTION_FIELDS = {"lora": "spec.lora", "distill": "spec.distill", "adapters": "spec.adapters"}
_USED_BY = {"lora": "LORA, QLORA and MULTI_ADAPTER", "distill": "LOGIT_DISTILL", "adapters": "MULTI_ADAPTER"}
PEEK = 32  # records read from each dataset at Create


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
            problems.append(("spec.dataset_uri", "MULTI_ADAPTER reads one dataset per adapter (spec.adapters)"))
    elif not raw.get("dataset_uri"):
        problems.append(("spec.dataset_uri", "is required: a dataset artifact with train.jsonl"))
    hp, res = raw["hyperparameters"], raw["resources"]
    if isinstance(hp["batch_size"], int) and isinstance(res["num_workers"], int) and res["num_workers"] > 0:
        if hp["batch_size"] % res["num_workers"]:
            problems.append(
                (
                    "spec.hyperparameters.batch_size",
                    f"{hp['batch_size']} does not split evenly over {res['num_workers']} workers",
                )
            )
    search = raw.get("search")
    if search:
        allowed = recipe.searchable()
        for index, dim in enumerate(search["space"]):
            if dim["name"] not in allowed:
                problems.append(
                    (
                        f"spec.search.space[{index}].name",
                        f"{recipe.name.upper()} has no searchable field {dim['name']!r}; "
                        f"it has {', '.join(sorted(allowed))}",
                    )
                )
        if recipe.name == "multi_adapter":
            problems.append(("spec.search", "does not apply to MULTI_ADAPTER (search each adapter's recipe)"))


def inputs(recipe: Recipe, config: Any, problems: Problems) -> None:
    """Look inside the base model, the datasets and the teacher the way the job will."""
    model_config = _model_config(config, problems)
    if model_config is None:
        return
    if config.lora is not None and config.lora.target_modules:
        _target_modules(model_config, config.lora.target_modules, problems)
    for name, uri in config.datasets().items():
        field = "spec.dataset_uri" if name == "train" else f"spec.adapters[{[a.name for a in config.adapters].index(name)}].dataset_uri"
        _dataset(recipe, config, uri, field, model_config, problems)
    if config.distill is not None and config.distill.teacher:
        _teacher(config.distill.teacher, model_config, problems)


def _model_config(config: Any, problems: Problems) -> Any:
    from slmops.training import model_init

    try:
        model_dir = model_init.resolve_model(config.base.model)
        return model_init.model_config(config.base, model_dir)
    except InvalidSpec as exc:
        problems.extend(("spec.base.model" if f == model_init.FIELD else f, p) for f, p in exc.problems)
        return None


def module_names(model_config: Any) -> set[str]:
    """The last name of every linear layer of a model built from model_config (on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


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


def _dataset(recipe: Recipe, config: Any, uri: str, field: str, model_config: Any, problems: Problems) -> None:
    if not data.split_exists(uri, data.TRAIN_FILE):
        problems.append((field, f"{uri!r} has no {data.TRAIN_FILE}"))
        return
    try:
        records = data.read_records(uri, data.TRAIN_FILE, field, allow_text=recipe.name == "full", limit=PEEK)
    except InvalidSpec as exc:
        problems.extend(exc.problems)
        return
    if not records:
        problems.append((field, f"{data.TRAIN_FILE} has no records"))
        return
    if recipe.name == "logit_distill" and not config.distill.teacher:
        if not all(data.has_topk_ids(r) for r in records):
            problems.append(
                (
                    field,
                    "has no stored top-k log-probabilities with token ids, which offline LOGIT_DISTILL needs: "
                    "synthesize with top_logprobs > 0 and a known teacher tokenizer, or set spec.distill.teacher",
                )
            )
            return
        vocab = next((r.get("teacher", {}).get("vocab_size") for r in records if r.get("teacher")), None)
        if vocab and int(vocab) != model_config.vocab_size:
            problems.append(
                (
                    field,
                    f"the teacher's vocabulary ({int(vocab)} tokens) differs from the student's "
                    f"({model_config.vocab_size}); logit distillation needs one vocabulary",
                )
            )


def _teacher(teacher: str, student_config: Any, problems: Problems) -> None:
    from transformers import AutoConfig

    from slmops.training import model_init

    try:
        teacher_config = AutoConfig.from_pretrained(model_init.resolve_model(teacher))
    except (OSError, ValueError, InvalidSpec) as exc:
        problems.append(("spec.distill.teacher", f"cannot load the teacher's config from {teacher!r}: {exc}"))
        return
    if teacher_config.vocab_size != student_config.vocab_size:
        problems.append(
            (
                "spec.distill.teacher",
                f"the teacher's vocabulary ({teacher_config.vocab_size} tokens) differs from the student's "
                f"({student_config.vocab_size}); logit distillation needs one vocabulary",
            )
        )
