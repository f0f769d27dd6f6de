"""Training on chat records through the real training job on Ray: a tiny base without a chat template
learns ChatML `messages` records (`chat_template: chatml`); its checkpoint keeps the template and stops at
`<|im_end|>`, and the predictor's /chat/completions gives the model exactly the prompt ids training used."""

from __future__ import annotations

import json

import pytest

from slmops.core import artifacts, predictor_key
from slmops.core.chat_template import CHATML, SHIPPED_TOKENS
from slmops.core.errors import InvalidSpec
from slmops.testing.tiny import build_model, train_tokenizer
from slmops.training import chat, data, job, model_init
from tests.integration._recording_predictor import RecordingPredictor

pytestmark = pytest.mark.integration

SYSTEM = "Add the numbers."
NAME = "chat-student"
IM_END = SHIPPED_TOKENS["chatml"][0]


def _record(a: int, b: int) -> dict:
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{a}+{b}="}]
    return {"messages": [*turns, {"role": "assistant", "content": str(a + b)}]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A base checkpoint whose tokenizer has no chat template, and a dataset of messages records."""
    root = tmp_path_factory.mktemp("chat-training")
    tok = train_tokenizer(["0123456789+= Add the numbers.", "system user assistant"], root / "tok", 280)
    base = build_model(root / "base", tok, hidden_size=32, num_hidden_layers=1, max_position_embeddings=64)
    artifacts.finalize(str(base), "checkpoint")
    records = [_record(a, b) for a in range(6) for b in range(4)]
    folder = root / "dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:20]))
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[20:]))
    artifacts.finalize(str(folder), "dataset")
    return {
        "base": artifacts.to_uri(base),
        "dataset": artifacts.to_uri(folder),
        "root": root,
        "records": records,
    }


def _config(inputs, **extra) -> dict:
    return {
        "method": "sft_distill",
        "base": {"model": inputs["base"]},
        "dataset_uri": inputs["dataset"],
        "hyperparameters": {"learning_rate": 1e-2, "max_steps": 3, "batch_size": 8, "max_seq_length": 48},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        **extra,
    }


def test_messages_without_a_template_are_refused_at_job_start(inputs):
    with pytest.raises(InvalidSpec) as info:
        job.run(_config(inputs), str(inputs["root"] / "refused"), lambda *a, **k: None)
    assert info.value.field == "spec.chat_template" and "chatml" in str(info.value)
    assert not (inputs["root"] / "refused").exists()


def test_the_checkpoint_is_served_in_the_format_it_was_trained_on(ray_cluster, inputs, tmp_path, monkeypatch):
    import httpx
    import openai
    from transformers import AutoTokenizer, GenerationConfig

    output = inputs["root"] / "student"
    result = job.run(_config(inputs, chat_template="chatml"), str(output), lambda *a, **k: None)
    assert result["metrics"]["steps"] == 3 and result["metrics"]["train_examples"] == 20

    # The checkpoint keeps the template and lists the end of turn among its EOS ids.
    assert (output / "chat_template.jinja").read_text() == CHATML
    assert json.loads((output / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    tokenizer = AutoTokenizer.from_pretrained(output)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert im_end in tokenizer.all_special_ids
    assert GenerationConfig.from_pretrained(output).eos_token_id == [tokenizer.eos_token_id, im_end]

    # What training tokenized (the base's tokenizer with ChatML applied, as the job did).
    base_tok = model_init.load_tokenizer(model_init.resolve_model(inputs["base"]))
    chat.apply(base_tok, "chatml")
    record = inputs["records"][21]
    example, _ = data.tokenize_messages(base_tok, record["messages"], 48)
    first_label = next(i for i, label in enumerate(example.labels) if label != data.IGNORE_INDEX)
    prompt_ids = example.input_ids[:first_label]
    assert (
        tokenizer.decode(example.input_ids[first_label:]) == f"{record['messages'][-1]['content']}{IM_END}\n"
    )

    key_file = predictor_key.ensure(tmp_path / "keys")
    monkeypatch.setenv("SLMOPS_PREDICTOR_API_KEY_FILE", str(key_file))
    predictor = RecordingPredictor(output, key_file.read_text().strip(), NAME)
    try:
        assert im_end in predictor.served.engine.eos_token_ids  # it stops at the end of a turn
        client = openai.OpenAI(base_url=predictor.base_url, api_key=key_file.read_text().strip(),
                               max_retries=0, http_client=httpx.Client(trust_env=False, timeout=60))  # fmt: skip
        answer = client.chat.completions.create(model=NAME, messages=record["messages"][:-1], max_tokens=4)
    finally:
        predictor.close()
    assert predictor.seen == [prompt_ids]
    assert answer.usage.prompt_tokens == len(prompt_ids)
