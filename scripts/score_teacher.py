"""Score pretrained backbones for the EMA-teacher sweep of issue 20 (Deliver 4 and 5).

A measurement tool for this sweep (the tables in configs/method/cpu/dino.yaml and byol.yaml), not part of
the package; its effective rank and teacher statistics are the package's monitors (budgetssl.monitor). It
computes, for each run folder given (a rung or a single run,
with its `.hydra/config.yaml`, last checkpoint and `summary.json`), and for random init:

- `linear_probe`: a multinomial logistic regression on the backbone's pooled features (frozen, eval
  mode) of the synthetic dataset's held-out split (`build_dataset(cfg, "val")`, dataset.data_seed=1, the
  tuning stream, never the demo's): the first 2048 scenes train it, the next 1024 test it; main-shape
  label, 5 classes, chance 20%. Features are standardised with the training scenes' mean and std; the
  head is trained full batch with L-BFGS (strong Wolfe line search) to a gradient tolerance of 1e-6, with
  an L2 penalty of 1e-4 (chosen, not tuned: it keeps the problem strictly convex so L-BFGS converges
  on separable features); the record says whether it converged and its final loss. Accuracy in percent.
- `effective_rank`: RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of
  pretrained self-supervised representations by their rank", eq. 1): exp of the entropy of the
  singular values of the (uncentred) 2048 x D training-feature matrix normalised to sum 1 (+1e-7).
- DINO only, the teacher on a held-out batch (the 512 first test scenes, two global crops each drawn by
  the method's own views under a fixed seed), with the run's final centre and teacher temperature
  (Caron et al. 2021, Sec. 5.3, Fig. 7: collapse shows as a teacher entropy at ln K (uniform) or 0 (one
  prototype), and a KL(teacher || student) near 0):
  `teacher_entropy` (mean per-image entropy of the centred, sharpened softmax, nats) against `ln_k`;
  `entropy_gap` (entropy of the batch-mean distribution minus the mean per-image entropy: near 0 when
  every image gets the same distribution); `kl_teacher_student` (teacher crop i against the student's
  crop j != i, nats); `prototypes_used` (distinct argmax prototypes over the batch's teacher outputs).

Usage: python scripts/score_teacher.py OUT.json RUN_FOLDER|random_init:SEED ... (rows already in OUT.json
are kept; without a random_init:SEED argument a random-init row of seed 0 is added).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from budgetssl.backbones.backbone import build_backbone
from budgetssl.config.compose import compose_config
from budgetssl.data.base import build_dataset
from budgetssl.engine.checkpoint_files import read_checkpoint
from budgetssl.engine.rng import seed_everything
from budgetssl.methods.augment import to_normalized
from budgetssl.methods.base import build_method
from budgetssl.monitor import measures
from budgetssl.plugins import check_config

TRAIN, TEST, STATS = 2048, 1024, 512
RANDOM = "random_init"  # a row name: random_init:SEED scores an untrained backbone of that seed
RANDOM_INIT = ["dataset.image_size=16", "dataset.data_seed=1", "transfer.data_seed=1"]
L2 = 1e-4


def run_config(folder: Path):
    node = OmegaConf.load(folder / ".hydra" / "config.yaml")
    if node.method.name in ("byol", "dino") and "momentum_rule" not in node.method:
        # A run from before method.momentum_rule existed ran the budget-aware start.
        node.method.momentum_rule, node.method.momentum_floor = "budget_aware", 0.99
    return check_config(node)


def held_out(run, count: int):
    dataset = build_dataset(dataclasses.replace(run.dataset, num_val=count), "val")
    samples = [dataset[i] for i in range(count)]
    return dataset.info, samples


@torch.no_grad()
def pooled_features(backbone, info, samples) -> torch.Tensor:
    normalise = torch.nn.Sequential(*to_normalized(info))
    images = torch.stack([normalise(s["image"]) for s in samples])
    backbone.eval()
    return torch.cat([backbone(chunk) for chunk in images.split(256)]).double()


def linear_probe(features: torch.Tensor, labels: torch.Tensor, classes: int) -> dict:
    x_train, x_test = features[:TRAIN], features[TRAIN : TRAIN + TEST]
    y_train, y_test = labels[:TRAIN], labels[TRAIN : TRAIN + TEST]
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-8)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    w = torch.zeros(x_train.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=2000,
        tolerance_grad=1e-6,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def loss_fn():
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ w + b, y_train) + L2 * (w**2).sum()
        loss.backward()
        return loss

    for _ in range(5):  # LBFGS.step stops at max_iter; a few restarts to reach the tolerance
        opt.step(loss_fn)
        loss = loss_fn()  # step returns the loss before its iterations; this is the one after
        grad = torch.cat([w.grad.flatten(), b.grad]).abs().max().item()
        if grad <= 1e-6:
            break
    with torch.no_grad():
        accuracy = ((x_test @ w + b).argmax(1) == y_test).double().mean().item() * 100
        train_accuracy = ((x_train @ w + b).argmax(1) == y_train).double().mean().item() * 100
    return {
        "linear_probe": round(accuracy, 2),
        "linear_train_accuracy": round(train_accuracy, 2),
        "probe_loss": loss.item(),
        "probe_max_grad": grad,
        "probe_converged": grad <= 1e-6,
    }


@torch.no_grad()
def dino_stats(method, samples) -> dict:
    """The teacher's statistics on two global crops of each held-out scene, through the package's
    monitors (budgetssl.monitor.measures), with the run's final centre and teacher temperature."""
    cfg = method.cfg
    views = method.views()
    torch.manual_seed(0)
    crops = torch.stack([views(s)["global"] for s in samples])  # (B, G, C, H, W)
    g = crops.shape[1]
    x = crops.transpose(0, 1).flatten(0, 1)
    method.eval()
    t = method.teacher(x).double().chunk(g)
    s = method.head(method.backbone(x)).double().chunk(g)
    q = [F.softmax((ti - method.center.double()) / cfg.teacher_temp, dim=-1) for ti in t]
    p = [F.softmax(si / cfg.student_temp, dim=-1) for si in s]
    kl = [measures.kl_divergence(q[i], p[j]) for i in range(g) for j in range(g) if i != j]
    return {
        "teacher_entropy": sum(measures.mean_entropy(qi) for qi in q) / g,
        "ln_k": math.log(cfg.out_dim),
        "entropy_gap": sum(measures.entropy_gap(qi) for qi in q) / g,
        "kl_teacher_student": sum(kl) / len(kl),
        "prototypes_used": measures.prototypes_in_use(torch.cat(q)),
    }


def score(run, method_state: dict | None, summary: dict) -> dict:
    seed_everything(run.seed)
    info, samples = held_out(run, TRAIN + TEST)
    backbone = build_backbone(run.backbone, run.dataset.image_size)
    method = None
    if method_state is not None:
        method = build_method(run.method, backbone, info)
        method.load_state_dict(method_state)
    features = pooled_features(backbone, info, samples)
    labels = torch.tensor([s["label"] for s in samples])
    row = {
        **linear_probe(features, labels, len(info.class_names)),
        "effective_rank": measures.effective_rank(features[:TRAIN]),
    }
    if method is not None and run.method.name == "dino":
        row.update(dino_stats(method, samples[TRAIN : TRAIN + STATS]))
    for key in ("steps", "teacher_base_momentum", "teacher_init_weight", "final_loss"):
        row[key] = summary.get(key)
    return row


def main(out: str, *folders: str) -> None:
    rows: dict[str, dict] = {}
    if Path(out).is_file():
        rows = json.loads(Path(out).read_text())
    if not any(name.startswith(RANDOM) for name in folders):
        folders = (*folders, f"{RANDOM}:0")
    for name in folders:
        if name in rows:
            continue
        if name.startswith(RANDOM):  # random init at the seed after the colon
            seed = int(name.partition(":")[2] or 0)
            run = check_config(compose_config([*RANDOM_INIT, f"seed={seed}"]))
            rows[name] = score(run, None, {})
        else:
            folder = Path(name)
            run = run_config(folder)
            last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
            state = read_checkpoint(last)["model"]
            rows[name] = score(run, state, json.loads((folder / "summary.json").read_text()))
        print(name, rows[name], flush=True)
        tmp = Path(out).with_suffix(".tmp")  # written whole, then renamed
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
