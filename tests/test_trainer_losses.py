"""Distillation losses: sparse top-k KD against the dense reference, T², residual mass."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import classifier_kd_loss, dense_kd_loss, sparse_kd_loss, token_kd_loss


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 2.5, 4.0])
def test_sparse_topk_equals_dense_when_k_is_the_vocabulary(direction, temperature):
    torch.manual_seed(0)
    vocab = 11
    student = torch.randn(5, vocab, requires_grad=True)
    teacher = torch.randn(5, vocab) * 2
    teacher_logprobs = torch.log_softmax(teacher, dim=-1)
    top_logprobs, top_ids = teacher_logprobs.topk(vocab, dim=-1)

    sparse = sparse_kd_loss(student, top_ids, top_logprobs, temperature, direction)
    dense = dense_kd_loss(student, teacher, temperature, direction)
    assert torch.allclose(sparse, dense, atol=2e-5)

    (sparse_grad,) = torch.autograd.grad(sparse.sum(), student)
    (dense_grad,) = torch.autograd.grad(dense.sum(), student)
    assert torch.allclose(sparse_grad, dense_grad, atol=2e-5)


def test_residual_mass_is_one_explicit_bucket_hand_computed():
    # vocab of 4; the teacher reports k=2: p(a)=0.5, p(b)=0.3, so 0.2 is elsewhere
    top_ids = torch.tensor([[0, 1]])
    top_logprobs = torch.tensor([[math.log(0.5), math.log(0.3)]])
    # student: p = (0.4, 0.4, 0.1, 0.1) -> buckets (0.4, 0.4, residual 0.2)
    student_logits = torch.log(torch.tensor([[0.4, 0.4, 0.1, 0.1]]))
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4) + 0.2 * math.log(0.2 / 0.2)
    loss = sparse_kd_loss(student_logits, top_ids, top_logprobs, temperature=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)

    # ignoring the residual (renormalising the top-2 to 0.625/0.375) would give a different number
    renormalised = 0.625 * math.log(0.625 / 0.5) + 0.375 * math.log(0.375 / 0.5)
    assert abs(loss.item() - renormalised) > 1e-3

    # a student that puts all its mass on a token the teacher did not report is penalised via the residual
    elsewhere = torch.log(torch.tensor([[0.4, 0.3, 0.3, 1e-9]]))
    moved = torch.log(torch.tensor([[0.5, 0.3, 0.2, 1e-9]]))
    assert sparse_kd_loss(moved, top_ids, top_logprobs).item() == pytest.approx(0.0, abs=1e-6)
    assert sparse_kd_loss(elsewhere, top_ids, top_logprobs).item() > 0.01


def test_padded_topk_slots_are_ignored():
    torch.manual_seed(1)
    student = torch.randn(2, 9, requires_grad=True)
    logprobs, ids = torch.log_softmax(torch.randn(2, 9), -1).topk(3, dim=-1)
    padded_ids = torch.cat([ids, torch.zeros(2, 2, dtype=torch.long)], dim=-1)
    padded_lps = torch.cat([logprobs, torch.full((2, 2), float("-inf"))], dim=-1)
    loss = sparse_kd_loss(student, padded_ids, padded_lps, 2.0)
    assert torch.allclose(loss, sparse_kd_loss(student, ids, logprobs, 2.0))
    (grad,) = torch.autograd.grad(loss.sum(), student)
    assert torch.isfinite(grad).all()


def test_memory_scales_with_k_not_vocabulary():
    # the teacher side is [N, k]: a 50k vocabulary student with k=4 never builds a [N, 50k] teacher tensor
    student = torch.randn(3, 50_000)
    top_ids = torch.randint(0, 50_000, (3, 4))
    top_logprobs = torch.log(torch.full((3, 4), 0.2))
    loss = sparse_kd_loss(student, top_ids, top_logprobs, 2.0)
    assert loss.shape == (3,) and torch.isfinite(loss).all()


@pytest.mark.parametrize("loss_name", ["dense", "classifier"])
def test_t_squared_keeps_gradient_scale_across_temperatures(loss_name):
    torch.manual_seed(2)
    student = (torch.randn(64, 20) * 0.5).requires_grad_(True)
    teacher = torch.randn(64, 20) * 0.5
    labels = teacher.argmax(-1)

    def grad_norm(temperature: float, scale: float = 1.0) -> float:
        if loss_name == "dense":
            loss = dense_kd_loss(student, teacher, temperature).mean()
        else:
            loss = classifier_kd_loss(student, torch.softmax(teacher, -1), labels, temperature, alpha=1.0)
        (grad,) = torch.autograd.grad(loss * scale, student)
        return grad.norm().item()

    norms = {t: grad_norm(t) for t in (2.0, 4.0, 8.0)}
    assert norms[8.0] / norms[2.0] == pytest.approx(1.0, rel=0.15)
    # without T² the gradient would shrink ~T² (16x from T=2 to T=8)
    assert grad_norm(8.0, scale=1 / 64) / grad_norm(2.0, scale=1 / 4) < 0.1


def test_alpha_mixes_kd_and_cross_entropy():
    torch.manual_seed(3)
    student = torch.randn(6, 7)
    teacher_lps, top_ids = torch.log_softmax(torch.randn(6, 7), -1).topk(3, dim=-1)
    targets = top_ids[:, 0]
    kd = sparse_kd_loss(student, top_ids, teacher_lps, 2.0).mean()
    ce = torch.nn.functional.cross_entropy(student, targets)
    mixed = token_kd_loss(student, targets, top_ids, teacher_lps, 2.0, alpha=0.3)
    assert mixed.item() == pytest.approx(0.3 * kd.item() + 0.7 * ce.item(), rel=1e-5)

    probs = torch.softmax(torch.randn(6, 7), -1)
    assert classifier_kd_loss(student, probs, targets, 3.0, alpha=0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(student / 3.0, -1),
        torch.log_softmax(probs.log() / 3.0, -1),
        log_target=True,
        reduction="batchmean",
    )
    full = classifier_kd_loss(student, probs, targets, 3.0, alpha=0.5)
    assert full.item() == pytest.approx(0.5 * 9 * kl.item() + 0.5 * ce.item(), rel=1e-5)


def teacher_top_k(vocab: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(4, vocab, generator=generator) * 1.5
    top_logprobs, top_ids = torch.log_softmax(teacher, dim=-1).topk(k, dim=-1)
    return teacher, top_ids, top_logprobs


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_optimum_recovers_the_teachers_top_k_and_leftover_mass(direction, temperature):
    # free student logits minimised against a k=20 teacher: at every T the optimum is the teacher's
    # own buckets at T = 1 (its top-k probabilities and the mass it left outside them)
    _, top_ids, top_logprobs = teacher_top_k(vocab=100, k=20, seed=4)
    teacher_leftover = 1.0 - top_logprobs.exp().sum(-1)
    assert (teacher_leftover > 0.05).all()
    student = torch.zeros(4, 100, requires_grad=True)
    optimizer = torch.optim.LBFGS([student], lr=1.0, max_iter=300, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = sparse_kd_loss(student, top_ids, top_logprobs, temperature, direction).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    probs = torch.softmax(student.detach(), dim=-1)
    student_top = probs.gather(-1, top_ids)
    assert torch.allclose(student_top, top_logprobs.exp(), atol=2e-3)
    assert torch.allclose(1.0 - student_top.sum(-1), teacher_leftover, atol=2e-3)
    loss = sparse_kd_loss(student.detach(), top_ids, top_logprobs, temperature, direction)
    assert loss.max().item() < 1e-4


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_equals_trl_generalized_jsd_when_k_is_the_vocabulary(direction, temperature):
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer", reason="trl is not installed")
    teacher, top_ids, top_logprobs = teacher_top_k(vocab=32, k=32, seed=5)
    student = torch.randn(4, 32, generator=torch.Generator().manual_seed(6))
    ours = sparse_kd_loss(student, top_ids, top_logprobs, temperature, direction).mean() / temperature**2
    beta = 0.0 if direction == "forward" else 1.0  # TRL: beta 0 is KL(teacher || student), 1 is the reverse
    theirs = gkd.GKDTrainer.generalized_jsd_loss(student, teacher, beta=beta, temperature=temperature)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_bucketed_kl_at_t1_is_a_lower_bound_of_the_dense_kl():
    # merging tokens into one bucket never increases KL (data processing inequality)
    teacher, top_ids, top_logprobs = teacher_top_k(vocab=100, k=10, seed=7)
    student = torch.randn(4, 100, generator=torch.Generator().manual_seed(8))
    for direction in ("forward", "reverse"):
        sparse = sparse_kd_loss(student, top_ids, top_logprobs, 1.0, direction)
        dense = dense_kd_loss(student, teacher, 1.0, direction)
        assert (sparse <= dense + 1e-6).all() and (sparse > 0).all()
