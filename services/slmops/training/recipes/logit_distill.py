"""LOGIT_DISTILL: the student learns the teacher's distribution, not only its answers.

The loss is `alpha * T^2 * D(teacher || student at temperature T) + (1 - alpha) * CE`
over the completion tokens, with D one of forward KL, reverse KL or the
generalized Jensen-Shannon divergence (mixture weight beta).

- offline: the teacher's top-k log-probabilities stored, with token ids, in a
  synthesis dataset. Both distributions are taken on the teacher's top-k
  support and renormalized there.
- online: a local teacher model runs beside the student in each worker and
  gives its full distribution at every position.
"""

from __future__ import annotations

from typing import Any

from slmops.training import model_init, trainer_kit
from slmops.training.data import IGNORE_INDEX
from slmops.training.recipes import models
from slmops.training.trainer_kit import WorkerContext

PHASE = "train"


def divergence(student_logp: Any, teacher_logp: Any, kind: str, beta: float = 0.5) -> Any:
    """Per-row divergence between two distributions given as log-probabilities over the last dim."""
    import torch

    p, q = teacher_logp.exp(), student_logp.exp()
    if kind == "forward_kl":  # KL(teacher || student): mass-covering
        return (p * (teacher_logp - student_logp)).sum(-1)
    if kind == "reverse_kl":  # KL(student || teacher): mode-seeking
        return (q * (student_logp - teacher_logp)).sum(-1)
    mixture = torch.logsumexp(
        torch.stack(
            [teacher_logp + torch.log(torch.tensor(beta)), student_logp + torch.log(torch.tensor(1 - beta))]
        ),
        dim=0,
    )
    return beta * (p * (teacher_logp - mixture)).sum(-1) + (1 - beta) * (q * (student_logp - mixture)).sum(-1)


def distill_loss(
    student_logits: Any,
    labels: Any,
    settings: Any,
    *,
    teacher_logits: Any = None,
    top_ids: Any = None,
    top_logprobs: Any = None,
) -> tuple[Any, Any, Any]:
    """(loss, kd, ce) for a batch; logits [B, T, V] are shifted here to predict labels[:, 1:]."""
    import torch.nn.functional as F

    logits = student_logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    ce = F.cross_entropy(logits[mask], target[mask])
    t = settings.temperature
    if teacher_logits is not None:
        rows = mask
        student_logp = F.log_softmax(logits[rows] / t, dim=-1)
        teacher_logp = F.log_softmax(teacher_logits[:, :-1].float()[rows] / t, dim=-1)
    else:
        ids, lps = top_ids[:, 1:], top_logprobs[:, 1:].float()
        rows = mask & lps[..., 0].isfinite()
        ids, lps = ids[rows], lps[rows]
        valid = lps.isfinite()
        student_logp = F.log_softmax(logits[rows].gather(-1, ids) / t, dim=-1)
        student_logp = F.log_softmax(student_logp.masked_fill(~valid, float("-inf")), dim=-1)
        teacher_logp = F.log_softmax((lps / t).masked_fill(~valid, float("-inf")), dim=-1)
        student_logp = student_logp.masked_fill(~valid, 0.0)
        teacher_logp = teacher_logp.masked_fill(~valid, 0.0)
    if not rows.any():
        return ce, ce.new_zeros(()), ce
    kd = divergence(student_logp, teacher_logp, settings.loss, settings.jsd_beta).mean() * t * t
    return settings.alpha * kd + (1 - settings.alpha) * ce, kd, ce


def trainer_class(settings: Any, teacher: Any = None) -> Any:
    """TRL's SFTTrainer with the distillation loss."""
    import torch
    from trl import SFTTrainer

    class DistillTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            top_ids = inputs.pop("top_ids", None)
            top_logprobs = inputs.pop("top_logprobs", None)
            labels = inputs.pop("labels")
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            teacher_logits = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(
                        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                    ).logits
            loss, kd, ce = distill_loss(
                outputs.logits,
                labels,
                settings,
                teacher_logits=teacher_logits,
                top_ids=top_ids,
                top_logprobs=top_logprobs,
            )
            if self.model.training:
                self._metrics["train"].setdefault("kd_loss", []).append(float(kd.detach()))
                self._metrics["train"].setdefault("ce_loss", []).append(float(ce.detach()))
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


def load_teacher(ctx: WorkerContext, tok: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    assert ctx.config.distill is not None
    folder = model_init.resolve_model(ctx.config.distill.teacher)
    teacher = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(ctx.device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def train(ctx: WorkerContext, data: dict[str, Any]) -> None:
    settings = ctx.config.distill
    assert settings is not None
    tok = models.tokenizer(ctx)
    model = models.base_model(ctx, tok)
    teacher = load_teacher(ctx, tok) if settings.teacher else None
    train_set, validation = data["train"]
    trainer = trainer_kit.make_trainer(
        ctx, PHASE, model, tok, train_set, validation, trainer_cls=trainer_class(settings, teacher)
    )
    metrics = trainer_kit.train(ctx, trainer, PHASE)
    metrics["parameters"] = float(sum(p.numel() for p in model.parameters()))
    title = f"logit_distill ({settings.loss}, T={settings.temperature:g}, alpha={settings.alpha:g})"
    trainer_kit.finish(ctx, models.save_checkpoint(model, tok, trainer.state.log_history, title), metrics)
