"""DINO's weighted k-NN classifier (facebookresearch/dino eval_knn.py, knn_classifier): features
L2-normalised, cosine similarity to every bank feature, the k most similar vote for their class with
weight exp(similarity / T), the class with the largest summed vote is the prediction (top-1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """The predicted class of every query (N_q,), from `bank` (N, D) with labels (N,). Fewer than k bank
    images: all of them vote. Equal votes: the lower class index (argmax's first maximum)."""
    bank = F.normalize(bank.float(), dim=1)
    labels = bank_labels.to(bank.device).long()
    k = min(k, len(bank))
    out = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].float().to(bank.device), dim=1)
        similarity, index = (q @ bank.T).topk(k, dim=1, largest=True, sorted=True)
        votes = torch.zeros(len(q), num_classes, device=bank.device, dtype=similarity.dtype)
        votes.scatter_add_(1, labels[index], (similarity / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out)


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of the weighted k-NN, in percent."""
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return float((predicted.cpu() == query_labels.cpu().long()).float().mean() * 100)
