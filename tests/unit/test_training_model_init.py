"""Model start points, the checks made before any training, and the schedule."""

from __future__ import annotations

import pytest

from slmops.core.errors import InvalidSpec
from slmops.testing.tiny import build_model, train_tokenizer
from slmops.training import job, model_init
from slmops.training.config import ModelInitConfig


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    tok = train_tokenizer(["12+34=46", "0123456789+="], root / "tok", vocab_size=258)
    return str(
        build_model(
            root / "model",
            tok,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
    )


def _init(base_dir: str, **overrides) -> ModelInitConfig:
    return ModelInitConfig(model=base_dir, from_config=True, config_overrides=overrides)


def test_overrides_apply_and_derived_fields_follow(base_dir):
    config = model_init.model_config(_init(base_dir, num_hidden_layers=1, hidden_size=16), base_dir)
    assert (config.num_hidden_layers, config.hidden_size, len(config.layer_types)) == (1, 16, 1)
    tokenizer = model_init.load_tokenizer(base_dir)
    model_init.check_model(config, tokenizer, max_seq_length=16)
    model = model_init.load_model(
        _init(base_dir, num_hidden_layers=1, hidden_size=16), base_dir, tokenizer, seed=0
    )
    again = model_init.load_model(
        _init(base_dir, num_hidden_layers=1, hidden_size=16), base_dir, tokenizer, seed=0
    )
    assert len(model.model.layers) == 1 and model.config.eos_token_id == tokenizer.eos_token_id
    # Seeded: two fresh models are identical.
    assert all((a == b).all() for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_unknown_override_and_impossible_shapes_are_rejected(base_dir):
    with pytest.raises(InvalidSpec) as info:
        model_init.model_config(_init(base_dir, hidden_sise=8, num_hidden_layers=1), base_dir)
    assert [f for f, _ in info.value.problems] == ["spec.base.config_overrides[hidden_sise]"]

    tokenizer = model_init.load_tokenizer(base_dir)
    config = model_init.model_config(_init(base_dir, hidden_size=30, num_key_value_heads=3), base_dir)
    with pytest.raises(InvalidSpec) as info:
        model_init.check_model(config, tokenizer, max_seq_length=64)
    fields = [f for f, _ in info.value.problems]
    assert fields == ["spec.base.config_overrides"] * 2 + ["spec.hyperparameters.max_seq_length"]


def test_missing_model_and_dataset_fail_before_any_training(base_dir, tmp_path):
    with pytest.raises(InvalidSpec) as info:
        model_init.load_tokenizer(str(tmp_path / "nothing"))
    assert info.value.field == "spec.base.model"

    config = {
        "method": "full",
        "base": {"model": base_dir},
        "dataset_uri": (tmp_path / "empty").as_uri(),
        "hyperparameters": {"max_seq_length": 16},
    }
    with pytest.raises(InvalidSpec) as info:
        job.run(config, str(tmp_path / "out"), lambda *a, **k: None)
    assert info.value.field == "spec.dataset_uri" and "train.jsonl" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_init_seed_seeds_the_fresh_weights_apart_from_the_data_order(base_dir):
    """from_config with init_seed 0 rebuilds exactly the weights build_model(seed=0) saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    saved = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    same = model_init.load_model(ModelInitConfig(model=str(base_dir), from_config=True, init_seed=0),
                                 str(base_dir), tokenizer, seed=1)  # fmt: skip
    other = model_init.load_model(ModelInitConfig(model=str(base_dir), from_config=True), str(base_dir), tokenizer,
                                  seed=1)  # fmt: skip
    weights = dict(saved.named_parameters())
    assert all(torch.equal(p, weights[name]) for name, p in same.named_parameters())
    assert not all(torch.equal(p, weights[name]) for name, p in other.named_parameters())
