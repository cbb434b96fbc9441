"""Monitors of a representation on one batch, as pure functions of tensors (no module, no state).

Each reads a matrix of N embeddings (N, d) or N probability rows (N, K) and returns a float; the
sources of the definitions are given per function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# RankMe's epsilon (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained
# self-supervised representations by their rank", eq. 1: p_k = sigma_k / ||sigma||_1 + eps, a small
# constant for numerical stability; 1e-7, the value the paper gives for float32).
RANKME_EPS = 1e-7


def effective_rank(z: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe: exp of the Shannon entropy of the L1-normalised singular values of the (N, d) matrix z
    (not centred, as in the paper). Between 1 (one direction) and min(N, d) (all singular values equal)."""
    _check_matrix(z, "effective_rank")
    s = torch.linalg.svdvals(z.detach().double())
    if float(s.sum()) == 0.0:
        return 1.0  # the zero matrix: every direction is empty; one as for a constant embedding
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def std_of_l2_normalized(z: torch.Tensor) -> float:
    """The mean over dimensions of the per-dimension std of the L2-normalised rows of z (lightly's
    `lightly.utils.debug.std_of_l2_normalized`, after SimSiam, Chen & He 2021, Sec. 4.1 / Fig. 2):
    0 for a constant embedding (collapse), about 1/sqrt(d) for an isotropic Gaussian one."""
    _check_matrix(z, "std_of_l2_normalized")
    if z.shape[0] < 2:
        raise ValueError("std_of_l2_normalized needs at least two rows")
    return float(F.normalize(z.detach().double(), dim=1).std(dim=0).mean())


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of probabilities p (..., K); 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def mean_entropy(p: torch.Tensor) -> float:
    """The mean per-row entropy (nats) of (N, K) probabilities: a uniform row gives ln K, a one-hot 0."""
    _check_matrix(p, "mean_entropy")
    return float(entropy(p.double()).mean())


def entropy_gap(p: torch.Tensor) -> float:
    """H(mean_i p_i) - mean_i H(p_i) (nats): the entropy of the batch's mean distribution minus the mean
    per-image entropy, i.e. the mutual information between an image and the prototype drawn for it.
    It is 0 in both of DINO's collapses (Caron et al. 2021, Sec. 5.3 and Fig. 7): every image on the same
    prototype (one-hot rows, all alike) and a uniform output (every row uniform)."""
    _check_matrix(p, "entropy_gap")
    p = p.double()
    return float(entropy(p.mean(dim=0)) - entropy(p).mean())


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """The mean over rows of KL(p_i || q_i) (nats) for (N, K) probabilities, e.g. teacher || student
    (DINO, Sec. 5.3, Fig. 7 right: it falls to 0 when the two collapse together)."""
    _check_matrix(p, "kl_divergence")
    if p.shape != q.shape:
        raise ValueError(f"kl_divergence needs matching shapes, got {tuple(p.shape)} and {tuple(q.shape)}")
    p, q = p.double(), q.double()
    return float((torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(dim=-1).mean())


def prototypes_in_use(p: torch.Tensor) -> int:
    """How many distinct prototypes are the most probable one for some row of (N, K) probabilities."""
    _check_matrix(p, "prototypes_in_use")
    return int(p.argmax(dim=1).unique().numel())


def prototype_measures(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> dict[str, float]:
    """DINO-like monitors from logits already centred and divided by their temperatures (softmax gives
    the distributions the loss compares): the teacher's mean entropy against ln K, the entropy gap,
    KL(teacher || student) and the prototypes in use."""
    teacher = teacher_logits.detach().double().softmax(dim=-1)
    student = student_logits.detach().double().softmax(dim=-1)
    k = teacher.shape[-1]
    return {
        "teacher_entropy": mean_entropy(teacher),
        "log_prototypes": math.log(k),
        "entropy_gap": entropy_gap(teacher),
        "kl_teacher_student": kl_divergence(teacher, student),
        "prototypes_used": float(prototypes_in_use(teacher)),
        "prototypes": float(k),
    }


def embedding_measures(z: torch.Tensor, name: str) -> dict[str, float]:
    """The rank and spread of one (N, d) embedding, under `rank_<name>`, `std_<name>` (lightly's value)
    and `dim_<name>` (d: a healthy std is about 1/sqrt(d))."""
    z = z.detach().flatten(1)
    return {
        f"rank_{name}": effective_rank(z),
        f"std_{name}": std_of_l2_normalized(z),
        f"dim_{name}": float(z.shape[1]),
    }


def _check_matrix(x: torch.Tensor, what: str) -> None:
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{what} needs a non-empty (N, d) matrix, got shape {tuple(x.shape)}")
