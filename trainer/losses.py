"""Distillation losses.

Token-level KD reads the teacher's stored top-k logprobs (at T = 1). Per position both
sides are put in the same k + 1 buckets: the teacher's k ids, and one bucket for
everything else. The teacher's buckets are its k probabilities plus the residual
1 - sum(top-k); the student's are its probabilities on the same k ids plus the mass on
every other token of its vocabulary (computed exactly, by a log-sum-exp over the ids
the teacher did not report, never as 1 - sum, which loses the residual to rounding).
KL between the bucket distributions is a lower bound of the dense KL, equal to it
where k is the vocabulary.

Temperature: both bucket distributions are taken at T = 1 and softened the same way,
p ** (1/T) renormalised over the k + 1 buckets. Softening the student over its whole
vocabulary and the teacher over its buckets (the residual as one token) would compare
two different things: its minimum then pushes the student's leftover mass towards 0 as
T grows. With both sides bucketed alike the minimum is the teacher's buckets at every T.
Every KL term is multiplied by T² so the gradient scale does not shrink as T grows
(Hinton et al., 2015).

Memory: the teacher side is [N, k]; the student side needs its [N, V] logits and one
more vocabulary-sized buffer (the logits with the k ids masked out), whatever k is. Only
the stored dataset grows with k.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Direction = Literal["forward", "reverse"]
RESIDUAL_FLOOR = 1e-6  # teacher residual below this is float32 noise: the teacher reported (all but) everything
MASKED_LOGIT = -1e9  # finite stand-in for -inf, so a row whose every id is masked keeps finite gradients


def _kl(p_log: torch.Tensor, q_log: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, summing only where mask is true (masked terms are exactly 0)."""
    p_log = torch.where(mask, p_log, torch.zeros_like(p_log))
    q_log = torch.where(mask, q_log, torch.zeros_like(q_log))
    return (p_log.exp() * mask * (p_log - q_log)).sum(-1)


def student_bucket_logprobs(student_logits: torch.Tensor, top_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[N, k + 1] log-probabilities at T = 1: the student's mass on each of the teacher's ids, then on all others."""
    logits = student_logits.float()
    total = torch.logsumexp(logits, dim=-1, keepdim=True)
    ids = top_ids.clamp(min=0).long()
    # unused slots point at the row's first id, so marking every slot never unmarks a reported id
    reported = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, torch.where(valid, ids, ids[:, :1]), True)
    reported &= valid.any(-1, keepdim=True)
    others = torch.logsumexp(logits.masked_fill(reported, MASKED_LOGIT), dim=-1, keepdim=True)
    return torch.cat([logits.gather(-1, ids), others], dim=-1) - total


def sparse_kd_loss(
    student_logits: torch.Tensor,
    top_ids: torch.Tensor,
    top_logprobs: torch.Tensor,
    temperature: float = 1.0,
    direction: Direction = "forward",
) -> torch.Tensor:
    """Per-position KD loss against stored top-k teacher logprobs, over k + 1 buckets.

    student_logits: [N, V]; top_ids, top_logprobs: [N, k] (the teacher's logprobs at
    T = 1; unused slots have logprob -inf). Returns [N], already multiplied by T².
    """
    T = temperature
    valid = torch.isfinite(top_logprobs)
    teacher_residual = 1.0 - (top_logprobs.exp() * valid).sum(-1, keepdim=True)
    has_residual = teacher_residual > RESIDUAL_FLOOR
    teacher_mass = torch.cat([valid, has_residual], dim=-1)  # buckets where the teacher has probability
    student_mass = torch.cat([valid, torch.ones_like(has_residual)], dim=-1)

    teacher_buckets = torch.cat([top_logprobs.float(), teacher_residual.clamp(min=RESIDUAL_FLOOR).log()], dim=-1)
    teacher_log = torch.log_softmax((teacher_buckets / T).masked_fill(~teacher_mass, float("-inf")), dim=-1)
    student_buckets = student_bucket_logprobs(student_logits, top_ids, valid)
    student_log = torch.log_softmax((student_buckets / T).masked_fill(~student_mass, float("-inf")), dim=-1)

    if direction == "forward":
        kl = _kl(teacher_log.detach(), student_log, teacher_mass)
    else:
        # where the teacher reports no residual, student mass there costs as if the teacher had RESIDUAL_FLOOR
        floor = torch.full_like(teacher_log[:, -1:], math.log(RESIDUAL_FLOOR))
        teacher_log = torch.cat([teacher_log[:, :-1], torch.where(has_residual, teacher_log[:, -1:], floor)], dim=-1)
        kl = _kl(student_log, teacher_log.detach(), student_mass)
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
