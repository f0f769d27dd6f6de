"""A chat template that writes BOS itself gives the predictor the same ids as apply_chat_template.

The engine here is a stand-in holding only a real Hugging Face tokenizer (prompt_ids needs
nothing else); the tokenizer adds BOS to whatever it encodes, as Llama's do.
"""

from __future__ import annotations

from types import SimpleNamespace

from slmops.core import chat_template
from slmops.predictor.engines import prompt_ids

LLAMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<|start|>", "<|eot|>"]
    vocab = {token: i for i, token in enumerate(specials + [chr(b) for b in range(32, 127)] + ["\n"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials[2:]})
    tokenizer.chat_template = LLAMA_LIKE
    return tokenizer


def test_a_template_that_writes_bos_gets_one_bos_not_two():
    tokenizer = _tokenizer()
    messages = [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+2="}]
    text = chat_template.render(LLAMA_LIKE, messages, {"bos_token": "<s>"})
    engine = SimpleNamespace(encode=lambda t: list(tokenizer.encode(t)), context_length=1024)
    assert tokenizer.encode(text)[:2] == [0, 0]  # the tokenizer alone would give two
    expected = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert prompt_ids(engine, text, tokenizer.bos_token_id) == list(expected)


def test_a_plain_prompt_keeps_the_bos_its_tokenizer_adds():
    tokenizer = _tokenizer()
    engine = SimpleNamespace(encode=lambda t: list(tokenizer.encode(t)), context_length=1024)
    assert prompt_ids(engine, "1+2=", tokenizer.bos_token_id) == tokenizer.encode("1+2=")
    assert prompt_ids(engine, "1+2=", tokenizer.bos_token_id)[0] == 0
