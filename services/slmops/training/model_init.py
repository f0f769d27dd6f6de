"""Where a training run starts: resolve the base model, build its config, load it.

The base model is a Hugging Face model folder, an artifact URI (`file://`, or
any fsspec scheme, copied to a local folder first) or a hub id. With
`from_config` the run starts from fresh random weights in the base model's
configuration with `config_overrides` applied: a new, usually smaller, student
that keeps the base model's tokenizer.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import fsspec

from slmops.core.errors import InvalidSpec, collect
from slmops.training.config import ModelInitConfig

# Config attributes derived from others: dropped when a source is overridden,
# so the model class derives them again from the new values.
DERIVED = {
    "layer_types": ("num_hidden_layers",),
    "head_dim": ("hidden_size", "num_attention_heads"),
}
FIELD = "spec.base.model"


def resolve_model(model: str, cache_dir: str | None = None) -> str:
    """A local folder (or hub id) transformers can load from; remote URIs are copied locally."""
    if model.startswith("file://"):
        return model[len("file://") :]
    if "://" not in model:
        return model
    target = os.path.join(cache_dir or tempfile.mkdtemp(prefix="slmops-base-"), "model")
    fs, path = fsspec.core.url_to_fs(model)
    if not fs.exists(path):
        raise InvalidSpec(FIELD, f"{model!r} does not exist")
    fs.get(path.rstrip("/") + "/", target, recursive=True)
    return target


def load_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise InvalidSpec(FIELD, f"cannot load a tokenizer from {model_dir!r}: {exc}") from exc
    if tokenizer.eos_token_id is None:
        raise InvalidSpec(FIELD, f"the tokenizer of {model_dir!r} has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(init: ModelInitConfig, model_dir: str) -> Any:
    """The transformers config the run starts from, overrides applied (with from_config)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise InvalidSpec(FIELD, f"cannot load a model config from {model_dir!r}: {exc}") from exc
    if not init.config_overrides:
        return config
    collect(
        [
            (f"spec.base.config_overrides[{key}]", f"{config.model_type} configs have no such attribute")
            for key in init.config_overrides
            if not hasattr(config, key)
        ]
    )
    data = config.to_dict()
    for derived, sources in DERIVED.items():
        if derived not in init.config_overrides and any(s in init.config_overrides for s in sources):
            data.pop(derived, None)
    data.update(init.config_overrides)
    return type(config).from_dict(data)


def check_model(config: Any, tokenizer: Any, max_seq_length: int) -> None:
    """InvalidSpec if the config cannot make a model for this tokenizer and sequence length."""
    import torch
    from transformers import AutoModelForCausalLM

    where = "spec.base.config_overrides"
    problems: list[tuple[str, str]] = []
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads and not getattr(config, "head_dim", None) and config.hidden_size % heads:
        problems.append(
            (where, f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads {heads}")
        )
    if heads and kv_heads and heads % kv_heads:
        problems.append(
            (where, f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        )
    if getattr(config, "vocab_size", len(tokenizer)) < len(tokenizer):
        problems.append(
            (where, f"vocab_size {config.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions and max_seq_length > positions:
        problems.append(
            (
                "spec.hyperparameters.max_seq_length",
                f"{max_seq_length} exceeds the model's max_position_embeddings {positions}",
            )
        )
    if not problems:
        try:
            with torch.device("meta"):
                AutoModelForCausalLM.from_config(config)
        except (ValueError, TypeError, RuntimeError, AssertionError) as exc:
            problems.append((where, f"the model cannot be built from this config: {exc}"))
    collect(problems)


def set_special_tokens(config: Any, tokenizer: Any) -> None:
    """Give the config the tokenizer's special ids where it lacks them (exporters copy them)."""
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, name, None) is None and getattr(tokenizer, name, None) is not None:
            setattr(config, name, getattr(tokenizer, name))


def load_model(init: ModelInitConfig, model_dir: str, tokenizer: Any, seed: int) -> Any:
    """The model to train, in float32: pretrained weights, or seeded fresh ones from config."""
    import torch
    from transformers import AutoModelForCausalLM

    if init.from_config:
        config = model_config(init, model_dir)
        set_special_tokens(config, tokenizer)
        torch.manual_seed(seed if init.init_seed is None else init.init_seed)
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        set_special_tokens(model.config, tokenizer)
    fit_vocabulary(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = stop_ids(tokenizer, model.generation_config.eos_token_id)
    return model.float()


def fit_vocabulary(model: Any, tokenizer: Any) -> None:
    """Grow the embeddings when the tokenizer gained tokens (a chat template's special tokens)."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))


def stop_ids(tokenizer: Any, current: int | list[int] | None = None) -> int | list[int]:
    """generation_config's eos_token_id: the tokenizer's EOS, the chat template's end of turn, and the
    ids it already held (a pretrained base's own)."""
    from slmops.training import chat

    ids = chat.eos_ids(tokenizer)
    held = current if isinstance(current, list) else [] if current is None else [current]
    ids += [int(i) for i in held if int(i) not in ids]
    return ids[0] if len(ids) == 1 else ids
