"""Linear heads on frozen features, trained to convergence with their own lr chosen on a held-out part.

The protocol (the same for the linear classifier and the segmentation probe; configs/config.yaml
`readout` holds its values):
- the training images are split once (seeded) into a fit part and a held-out part (`held_out_fraction`);
- features are standardised per channel by the fit part's mean and variance (MAE's linear probe puts a
  BatchNorm1d(affine=False) before its head: facebookresearch/mae main_linprobe.py);
- one linear head per lr of the grid, all trained side by side (one step updates every head, each with
  its own AdamW group and lr; the heads share nothing, so each follows its own trajectory), from zero
  weights, weight decay `weight_decay`, a constant lr, shuffled mini-batches of the fit part (whole
  batches only, so every step costs the same);
- after each epoch, each head's loss and score on the held-out part; a head keeps the weights of its best
  held-out loss, and has converged (early stopping) once that best fell by less than `tol` nats over the
  last `patience` epochs: it stops there (its lr set to 0), and training ends when every head has
  converged or at `max_epochs` (then the heads still improving are marked not converged);
- the head whose held-out score is best is kept (the first, i.e. smallest lr, of equal scores): DINO's
  eval_linear.py sweeps lrs and keeps the best (there on the test split; here on a part of the
  training images, so the test split stays unseen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from budgetssl.meter.counter import Counting


@dataclass(frozen=True)
class LinearSettings:
    lrs: tuple[float, ...]
    weight_decay: float = 0.0
    max_epochs: int = 300
    patience: int = 10
    tol: float = 1e-3
    held_out_fraction: float = 0.2
    batch_size: int = 256
    eps: float = 1e-6  # of the standardisation: MAE's BatchNorm1d eps


class Classification:
    """Logits (L, n, K) of n feature vectors; cross-entropy; held-out score: top-1 accuracy (percent)."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        L, n, K = logits.shape
        per = F.cross_entropy(logits.reshape(L * n, K), targets.repeat(L), reduction="none")
        return per.view(L, n).mean(dim=1)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(dim=-1) == targets).float().mean(dim=1) * 100


class Segmentation:
    """Logits (L, n, K, h, w) of n feature maps, upsampled bilinearly to the masks' size (as
    transfer/heads.py Segmenter.logits does); cross-entropy over the labelled pixels; held-out score:
    mIoU (percent, over the classes present in the masks or predictions)."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def upsampled(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """F.interpolate(..., mode="bilinear", align_corners=False) as two small matrix products: the
        resize is separable, each axis's matrix is that interpolation applied to the identity, so the
        result is the same (tests/test_readout.py) at under half the cost on CPU, and counted."""
        h, w = logits.shape[-2:]
        rows = self.axis(h, size[0], logits)
        cols = self.axis(w, size[1], logits)
        return torch.einsum("Hh,lnkhw,Ww->lnkHW", rows, logits, cols)

    @staticmethod
    def axis(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(n, dtype=like.dtype, device=like.device).view(n, 1, 1, n)
        return F.interpolate(eye, size=(1, size), mode="bilinear", align_corners=False).view(n, size).T

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        L, n, K = logits.shape[:3]
        up = self.upsampled(logits, targets.shape[-2:]).reshape(L * n, K, *targets.shape[-2:])
        per = F.cross_entropy(up, targets.repeat(L, 1, 1), ignore_index=self.ignore_index, reduction="none")
        labelled = (targets != self.ignore_index).sum().clamp(min=1)
        return per.view(L, -1).sum(dim=1) / labelled

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # (L, n, H, W): the class of each pixel. max's indices are argmax's (the first maximum, NaN as
        # the maximum: tests/test_readout.py), several times faster on CPU, where argmax over a dimension
        # that is not the last takes a slow strided path.
        predicted = self.upsampled(logits, targets.shape[-2:]).max(dim=2).indices
        keep = targets != self.ignore_index
        K = self.num_classes
        out = []
        for p in predicted:
            cells = targets[keep] * K + p[keep]
            cm = torch.bincount(cells, minlength=K * K).view(K, K).double()
            tp = cm.diag()
            union = cm.sum(0) + cm.sum(1) - tp
            present = union > 0
            out.append(float((tp[present] / union[present]).mean() * 100) if bool(present.any()) else 0.0)
        return torch.tensor(out)


@dataclass
class LinearFit:
    """The kept head (on standardised features) and how it was chosen."""

    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (D,) of the fit part, per channel
    var: torch.Tensor  # (D,)
    protocol: dict[str, Any]
    loss_history: list[float]  # the kept head's training loss in each epoch run (constant once it stopped)
    steps: int
    epochs: int
    steps_per_epoch: int
    flops_per_step: int  # every head's step at once: forward and backward (fma=2)
    eval_flops_per_epoch: int  # each epoch's held-out loss and score of every head
    eps: float = 1e-6  # of the standardisation

    @property
    def flops(self) -> int:
        return self.steps * self.flops_per_step + self.epochs * self.eval_flops_per_epoch


def _logits(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(L, K, D) weights, (L, K) biases, x (n, D, *S) -> (L, n, K, *S)."""
    out = torch.einsum("lkd,nd...->lnk...", weight, x)
    return out + bias.view(bias.shape[0], 1, bias.shape[1], *([1] * (x.ndim - 2)))


def standardise(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.view(shape)) / (var.view(shape) + eps).sqrt()


def fit_linear(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    task: Classification | Segmentation,
    settings: LinearSettings,
    seed: int = 0,
) -> LinearFit:
    """Train the heads of `settings.lrs` on `features` (N, D, *S) for `targets` (N, ...) and keep the
    best on the held-out part (the module docstring gives the protocol)."""
    device = features.device
    targets = targets.to(device).long()
    n = len(features)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_held = max(1, round(n * settings.held_out_fraction))
    if n - n_held < 1:
        raise ValueError(f"{n} training images cannot be split into a fit and a held-out part")
    held, fit = order[:n_held].to(device), order[n_held:].to(device)
    dims = [0, *range(2, features.ndim)]
    mean = features[fit].mean(dim=dims)
    var = features[fit].var(dim=dims, unbiased=False)
    x = standardise(features, mean, var, settings.eps)
    lrs = list(settings.lrs)
    L, D = len(lrs), features.shape[1]
    weight = torch.zeros(L, num_classes, D, device=device, requires_grad=True)
    bias = torch.zeros(L, num_classes, device=device, requires_grad=True)
    optimizer = StackedAdamW([weight, bias], torch.tensor(lrs, device=device), settings.weight_decay)
    batch = min(settings.batch_size, len(fit))
    steps_per_epoch = len(fit) // batch
    train_losses: list[list[float]] = []  # per epoch, per lr: the mean loss of its steps
    held_losses: list[list[float]] = []  # per epoch, per lr: the held-out loss
    best = [float("inf")] * L  # per lr: the best held-out loss so far, its epoch, score and weights
    best_epoch, best_score = [0] * L, [0.0] * L
    kept_weight, kept_bias = weight.detach().clone(), bias.detach().clone()
    converged_at: list[int | None] = [None] * L
    flops_per_step = eval_flops = None
    steps = epochs = 0

    def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
        losses, logits = torch.zeros(L, device=device), []
        for i in range(0, n_held, batch):
            part = held[i : i + batch]
            logits.append(_logits(weight, bias, x[part]))
            losses += task.loss(logits[-1], targets[part]) * len(part)
        return losses / n_held, task.score(torch.cat(logits, dim=1), targets[held])

    def step(part: torch.Tensor) -> torch.Tensor:
        weight.grad = bias.grad = None
        loss = task.loss(_logits(weight, bias, x[part]), targets[part])
        loss.sum().backward()
        return loss.detach()

    for epoch in range(settings.max_epochs):
        shuffled = fit[torch.randperm(len(fit), generator=generator).to(device)]
        epoch_loss = torch.zeros(L, device=device)
        for s in range(steps_per_epoch):
            part = shuffled[s * batch : (s + 1) * batch]
            if flops_per_step is None:
                counting = Counting()
                with counting:
                    epoch_loss += step(part)
                flops_per_step = int(counting.total)
            else:
                epoch_loss += step(part)
            optimizer.step()
            steps += 1
        epochs = epoch + 1
        with torch.no_grad():
            if eval_flops is None:
                counting = Counting()
                with counting:
                    losses, scores = evaluate()
                eval_flops = int(counting.total)
            else:
                losses, scores = evaluate()
        train_losses.append([float(v) / steps_per_epoch for v in epoch_loss])
        held_losses.append([float(v) for v in losses])
        for i in range(L):
            if converged_at[i] is not None:
                continue
            if held_losses[-1][i] < best[i]:
                best[i], best_epoch[i], best_score[i] = held_losses[-1][i], epochs, float(scores[i])
                kept_weight[i], kept_bias[i] = weight[i].detach(), bias[i].detach()
            if plateaued([h[i] for h in held_losses], settings):
                converged_at[i] = epochs
                optimizer.stop(i)
        if all(c is not None for c in converged_at):
            break
    chosen = max(range(L), key=lambda i: (best_score[i], -i))
    protocol = {
        "optimizer": "adamw",
        "lrs": lrs,
        "lr": lrs[chosen],
        "weight_decay": settings.weight_decay,
        "batch_size": batch,
        "max_epochs": settings.max_epochs,
        "patience": settings.patience,
        "tol": settings.tol,
        "fit_images": len(fit),
        "held_out_images": n_held,
        "held_out_scores": best_score,  # per lr, at its kept epoch: accuracy or mIoU (percent)
        "held_out_losses": best,  # per lr, at its kept epoch
        "kept_epoch": best_epoch[chosen],  # the kept head's weights: its best held-out loss
        "kept_epoch_per_lr": best_epoch,
        "epochs": converged_at[chosen] or epochs,  # the kept head's epochs until it stopped
        "converged": converged_at[chosen] is not None,
        "converged_per_lr": [c is not None for c in converged_at],
        "final_loss": train_losses[(converged_at[chosen] or epochs) - 1][chosen],  # its training loss
        "criterion": f"early stop: the best held-out loss fell by less than {settings.tol:g} nats over "
        f"the last {settings.patience} epochs (the weights of the best held-out loss kept)",
    }
    return LinearFit(
        weight=kept_weight[chosen].clone(),
        bias=kept_bias[chosen].clone(),
        mean=mean,
        var=var,
        protocol=protocol,
        loss_history=[h[chosen] for h in train_losses],
        steps=steps,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        flops_per_step=flops_per_step or 0,
        eval_flops_per_epoch=eval_flops or 0,
        eps=settings.eps,
    )


class StackedAdamW:
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2; torch.optim.AdamW's update and defaults: betas 0.9 /
    0.999, eps 1e-8) on parameters stacked over heads (dim 0), each head with its own lr: one update for
    every head, where torch's optimizer would loop over one parameter group per head. `stop(i)` sets
    head i's lr to 0, which leaves its weights as they are."""

    def __init__(self, params: list[torch.Tensor], lrs: torch.Tensor, weight_decay: float) -> None:
        self.params, self.lrs, self.weight_decay = params, lrs.clone(), weight_decay
        self.betas, self.eps, self.t = (0.9, 0.999), 1e-8, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def stop(self, head: int) -> None:
        self.lrs[head] = 0.0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            lr = self.lrs.view(-1, *([1] * (p.ndim - 1)))
            p.mul_(1 - lr * self.weight_decay)
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.sub_(lr * (m / (1 - b1**self.t)) / denom)


def plateaued(losses: list[float], settings: LinearSettings) -> bool:
    """The convergence rule: after `patience` epochs or more, the best loss of the last `patience` epochs
    is no more than `tol` (nats) below the best loss before them."""
    p = settings.patience
    if len(losses) <= p:
        return False
    before, recent = min(losses[:-p]), min(losses[-p:])
    return recent > before - settings.tol


def predict(fit: LinearFit, features: torch.Tensor) -> torch.Tensor:
    """The kept head's logits (n, K, *S) on raw features (n, D, *S)."""
    x = standardise(features, fit.mean, fit.var, fit.eps)
    return _logits(fit.weight[None], fit.bias[None], x)[0]
