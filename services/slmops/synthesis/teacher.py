"""Teachers: the model whose answers become the dataset.

`EndpointTeacher` (endpoint_teacher.py) calls an OpenAI-compatible HTTP API
with the official `openai` client (completions, or chat completions),
concurrently, within rate limits and with bounded retries, sending the W3C
`traceparent` of the current span on every request. `LocalTeacher` generates
with transformers from a model folder, `batch_size` prompts at a time (left
padded, so a greedy answer is the one the prompt gets alone), through the
model's chat template (with the system prompt) when `chat` is set, a model
without one being an invalid spec. Both answer `generate(prompts)` with one
dict per prompt: completion, finish_reason, completion_tokens, top_logprobs
(the form `slmops.synthesis.logprobs` describes, or None), vocab_size when
top_logprobs carries token ids, unmapped_tokens when an endpoint's tokens were
mapped to ids (how many had none), and `error` when the prompt failed for good
(endpoint results also carry `attempts`, `prompt_tokens` and, on error, `status`).
With `samples` > 1 both ask for that many answers per prompt: the result
describes the first, lists each (completion, finish_reason, completion_tokens,
top_logprobs, vocab_size) in `samples`, and its completion_tokens is their total.

The local teacher's log-probabilities come from the model's raw logits (before
temperature and top-p), one position per completion token, plus the EOS token
as the last position when generation stopped on it: n == completion_tokens
(+1 on EOS). A stop string cuts the completion and its tokens at the first
token whose text reaches the cut.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from slmops.core.datasets import chat_messages
from slmops.core.errors import InvalidSpec
from slmops.core.spec_checks import SamplingConfig
from slmops.synthesis import logprobs
from slmops.synthesis.config import EndpointTeacherConfig, LocalTeacherConfig
from slmops.synthesis.endpoint_teacher import EndpointTeacher, backoff_delay, is_retryable

log = logging.getLogger(__name__)

__all__ = ["EndpointTeacher", "LocalTeacher", "Teacher", "backoff_delay", "is_retryable", "make_teacher"]


class Teacher(Protocol):
    def generate(self, prompts: list[str]) -> list[dict[str, Any]]: ...


class LocalTeacher:
    """A teacher generating with transformers from a model folder (or hub id) on this worker."""

    def __init__(self, config: LocalTeacherConfig, sampling: SamplingConfig, *, system_prompt: str = "",
                 samples: int = 1):  # fmt: skip
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from slmops.core import artifacts

        path = str(artifacts.local_path(config.model)) if config.model.startswith("file://") else config.model
        self.torch = torch
        self.config, self.sampling = config, sampling
        self.system_prompt = system_prompt
        self.samples = max(1, samples)
        self.device = config.device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if config.chat and not self.tokenizer.chat_template:
            raise InvalidSpec("spec.local.chat", f"the model has no chat template ({config.model}): "
                                                         "turn chat off or use a model that has one")  # fmt: skip
        # Left padding: every row of a batch ends at its prompt's last token, where generation continues.
        self.tokenizer.padding_side = "left"
        self.eos_id = self.tokenizer.eos_token_id
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = self.tokenizer.pad_token_id
        self.model = AutoModelForCausalLM.from_pretrained(path).to(config.device).eval()
        # Every id that ends an answer: the tokenizer's EOS and generation_config's (a chat model's
        # end-of-turn token, e.g. <|im_end|>, is listed there).
        listed = getattr(self.model.generation_config, "eos_token_id", None)
        listed = listed if isinstance(listed, list) else [listed]
        self.stop_ids = list(dict.fromkeys(i for i in [self.eos_id, *listed] if i is not None))
        model_vocab = self.model.config.get_text_config().vocab_size or 0
        self.vocab_size = max(len(self.tokenizer), model_vocab)

    def generate(self, prompts: list[str]) -> list[dict[str, Any]]:
        """One result per prompt, in order, generated config.batch_size prompts at a time."""
        size = max(1, self.config.batch_size)
        results: list[dict[str, Any]] = []
        for start in range(0, len(prompts), size):
            results.extend(self._batch(prompts[start : start + size]))
        return results

    def complete(self, prompt: str) -> dict[str, Any]:
        """The result for one prompt."""
        return self._batch([prompt])[0]

    def _batch(self, prompts: list[str]) -> list[dict[str, Any]]:
        """Generate for prompts together: samples answers each, rows prompt after prompt."""
        torch, s, chat = self.torch, self.sampling, self.config.chat
        texts = [self._render(p) for p in prompts] if chat else prompts
        # A chat template writes its own special tokens: the tokenizer adds none again.
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
        inputs = inputs.to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_tokens,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.stop_ids or None,
            "num_return_sequences": self.samples,
            "return_dict_in_generate": True,
            # Raw logits, not `scores`: scores come after the temperature and top-p processors.
            "output_logits": bool(s.top_logprobs),
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        with torch.no_grad():
            out = self.model.generate(**inputs, **kwargs)
        width = inputs["input_ids"].shape[1]
        results = []
        for i in range(len(prompts)):
            answers = [self._answer(out, i * self.samples + j, width) for j in range(self.samples)]
            # Like the endpoint teacher: the first answer, and the tokens of all of them.
            result = {**answers[0], "completion_tokens": sum(a["completion_tokens"] for a in answers)}
            if self.samples > 1:
                result["samples"] = answers
            results.append(result)
        return results

    def _render(self, prompt: str) -> str:
        """The prompt (after the system prompt, when there is one) through the model's chat template."""
        messages = chat_messages(prompt, self.system_prompt)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _answer(self, out: Any, row: int, width: int) -> dict[str, Any]:
        """The answer in row `row` of generate's output (prompts `width` tokens wide, padding included)."""
        generated = out.sequences[row, width:].tolist()
        new_ids, text, finish, on_eos = self._cut(generated)
        answer: dict[str, Any] = {
            "completion": text,
            "finish_reason": finish,
            "completion_tokens": len(new_ids),
            "top_logprobs": None,
        }
        k = self.sampling.top_logprobs
        if k:
            positions = generated[: len(new_ids) + 1] if on_eos else new_ids
            logits = [step[row] for step in out.logits[: len(positions)]]
            answer["top_logprobs"] = logprobs.from_logits(positions, logits, k, self._decode_each)
            answer["vocab_size"] = self.vocab_size
        return answer

    def _cut(self, generated: list[int]) -> tuple[list[int], str, str, bool]:
        """(completion ids, completion, finish_reason, stopped on EOS) for the generated ids."""
        ids, finish, on_eos = generated, "length", False
        end = next((i for i, token in enumerate(ids) if token in self.stop_ids), None)
        if end is not None:
            ids, finish, on_eos = ids[:end], "stop", True
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((text.index(stop) for stop in self.sampling.stop if stop in text), default=None)
        if cut is not None:
            text, finish, on_eos = text[:cut], "stop", False
            ids = self._tokens_reaching(ids, text)
        return ids, text, finish, on_eos

    def _tokens_reaching(self, ids: list[int], text: str) -> list[int]:
        """The shortest prefix of ids whose text starts with text (binary search)."""
        low, high = 0, len(ids)
        while low < high:
            middle = (low + high) // 2
            if self.tokenizer.decode(ids[:middle], skip_special_tokens=True).startswith(text):
                high = middle
            else:
                low = middle + 1
        return ids[:low]

    def _decode_each(self, ids: list[int]) -> list[str]:
        """The text of each token id on its own."""
        return self.tokenizer.batch_decode([[i] for i in ids])


def make_teacher(
    teacher: EndpointTeacherConfig | LocalTeacherConfig,
    sampling: SamplingConfig,
    *,
    system_prompt: str = "",
    traceparent: str = "",
    threads: int = 1,
    share: float = 1.0,
    samples: int = 1,
) -> Teacher:
    if isinstance(teacher, EndpointTeacherConfig):
        return EndpointTeacher(teacher, sampling, system_prompt=system_prompt, traceparent=traceparent,
                               threads=threads, share=share, samples=samples)  # fmt: skip
    return LocalTeacher(teacher, sampling, system_prompt=system_prompt, samples=samples)
