"""Distillation losses.

Token-level KD reads the teacher's stored top-k logprobs, so the teacher side never
has a vocabulary-sized tensor: per position it is k probabilities plus one explicit
bucket for the residual mass 1 - sum(top-k), the probability the teacher put on every
token it did not report. The student is bucketed the same way: its probabilities on
the teacher's k ids, plus 1 - their sum. KL between those (k + 1)-bucket
distributions is exact where k = vocabulary size, and never pretends the top-k
were the whole distribution otherwise.

Temperature: the student is softened over its full vocabulary (logits / T). The
teacher is softened over its buckets (p ** (1/T), renormalised): exact for the top-k
ids relative to each other, and the residual treated as one token, the only choice
that needs nothing the teacher did not store. Every KL term is multiplied by T² so
the gradient scale does not shrink as T grows (Hinton et al., 2015).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Direction = Literal["forward", "reverse"]
RESIDUAL_FLOOR = 1e-6  # residual mass treated as zero (float32 noise); also keeps log() finite


def _kl(p_log: torch.Tensor, q_log: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, summing only where mask is true (masked terms are exactly 0)."""
    p_log = torch.where(mask, p_log, torch.zeros_like(p_log))
    q_log = torch.where(mask, q_log, torch.zeros_like(q_log))
    return (p_log.exp() * mask * (p_log - q_log)).sum(-1)


def sparse_kd_loss(
    student_logits: torch.Tensor,
    top_ids: torch.Tensor,
    top_logprobs: torch.Tensor,
    temperature: float = 1.0,
    direction: Direction = "forward",
) -> torch.Tensor:
    """Per-position KD loss against stored top-k teacher logprobs.

    student_logits: [N, V]; top_ids, top_logprobs: [N, k] (the teacher's logprobs at
    T = 1; unused slots have logprob -inf). Returns [N], already multiplied by T².
    """
    T = temperature
    valid = torch.isfinite(top_logprobs)
    buckets = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=-1)  # k ids + residual

    # teacher: k probabilities + residual mass, softened over the buckets. A residual below
    # the float32 noise of the stored logprobs is zero: softening must not inflate rounding error.
    teacher_residual = 1.0 - (top_logprobs.exp() * valid).sum(-1, keepdim=True)
    has_residual = teacher_residual > RESIDUAL_FLOOR
    teacher_bucket_logits = torch.cat([top_logprobs, teacher_residual.clamp(min=RESIDUAL_FLOOR).log()], dim=-1) / T
    teacher_bucket_logits = teacher_bucket_logits.masked_fill(~torch.cat([valid, has_residual], dim=-1), float("-inf"))
    teacher_log = torch.log_softmax(teacher_bucket_logits, dim=-1)
    teacher_log[:, -1:] = torch.where(has_residual, teacher_log[:, -1:], math.log(RESIDUAL_FLOOR))

    # student: softened over its whole vocabulary, then read at the teacher's ids
    student_logp = torch.log_softmax(student_logits.float() / T, dim=-1)
    student_top = student_logp.gather(-1, top_ids.clamp(min=0).long())
    student_residual = (1.0 - (student_top.exp() * valid).sum(-1, keepdim=True)).clamp(min=RESIDUAL_FLOOR)
    student_log = torch.cat([student_top, student_residual.log()], dim=-1)

    if direction == "forward":
        kl = _kl(teacher_log.detach(), student_log, buckets)
    else:
        kl = _kl(student_log, teacher_log.detach(), buckets)
    return kl * T**2


def dense_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    direction: Direction = "forward",
) -> torch.Tensor:
    """Per-position KD loss with the full teacher distribution ([N, V] each), times T². The reference."""
    student_log = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log = torch.log_softmax(teacher_logits.float() / temperature, dim=-1).detach()
    everything = torch.ones_like(student_log, dtype=torch.bool)
    if direction == "forward":
        kl = _kl(teacher_log, student_log, everything)
    else:
        kl = _kl(student_log, teacher_log, everything)
    return kl * temperature**2


def token_kd_loss(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    top_ids: torch.Tensor,
    top_logprobs: torch.Tensor,
    temperature: float,
    alpha: float,
    direction: Direction = "forward",
) -> torch.Tensor:
    """alpha * sparse KD + (1 - alpha) * CE on the teacher's sampled tokens, mean over positions.

    student_logits [N, V] at the positions that predict target_ids [N]; top_* [N, k].
    """
    kd = sparse_kd_loss(student_logits, top_ids, top_logprobs, temperature, direction).mean()
    if alpha >= 1.0:
        return kd
    ce = F.cross_entropy(student_logits.float(), target_ids.long())
    return alpha * kd + (1.0 - alpha) * ce


def classifier_kd_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * KL(teacher_T || student_T) * T² + (1 - alpha) * CE(student, hard label), mean over rows.

    teacher_probs [N, C] are the teacher's probabilities at T = 1 (the dataset's label_probs).
    """
    ce = F.cross_entropy(student_logits, labels)
    if alpha <= 0.0:
        return ce
    teacher_log = torch.log_softmax(teacher_probs.clamp(min=1e-12).log() / temperature, dim=-1)
    student_log = torch.log_softmax(student_logits / temperature, dim=-1)
    kd = F.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean") * temperature**2
    return alpha * kd + (1.0 - alpha) * ce
