"""The collapse verdict: whether a run's representation collapsed, from its monitors at initialisation
and at the end (monitor/watch.py final_values).

`verdict(init, final)` is None, or {"rule": the first rule that fired, "rules": every rule that fired,
"values": the monitors they read, "thresholds": theirs}. A rule that reads a monitor the run does not have
(prototype statistics of a method without prototypes, an embedding of a method without one) does not
fire. The rules, in the order they are tried:

- `prototype_entropy_gap`: H(batch-mean teacher distribution) - mean per-image H < PROTOTYPE_GAP nats.
  Both of DINO's collapses drive it to 0 (Caron et al. 2021, Sec. 5.3, Fig. 7: one prototype for every
  image, or a uniform output).
- `prototype_kl`: KL(teacher || student) < PROTOTYPE_KL nats: the student matches the teacher, the loss
  has nothing left to teach (DINO Fig. 7, right: KL falls to 0 in the collapsed runs).
- `rank_features`, `rank_embedding`: the effective rank (RankMe) of the backbone's pooled features fell
  below RANK_RATIO of its value at initialisation, or the embedding's below RANK_RATIO_EMBEDDING of its
  own (dimensional collapse).
- `std_embedding`, `std_features`: lightly's std of the L2-normalised rows, times sqrt(d) (1 for an
  isotropic Gaussian embedding, 0 for a constant one), below STD_SCALED.

How each threshold was chosen is said at its definition.
"""

from __future__ import annotations

import math
from typing import Any

# The thresholds, checked on single runs on streams the demo does not report (dataset.data_seed=1, seed 0,
# the demo's settings: vit_nano, 16 px, cpu/ configs, batch 32, 1e12 FLOPs, budget.ladder=null, 128
# monitor images); the README's "Monitors and the collapse verdict" gives every value measured.
# PROTOTYPE_GAP, PROTOTYPE_KL: the investigation's proposal (0.1 nats). cpu/dino ends at a gap of
# 0.04 and a KL of 0.006 (its teacher at 6.89 of ln 1024 = 6.93 nats: the uniform output), against 1.7
# and 1.05 at initialisation.
PROTOTYPE_GAP = 0.1  # nats
PROTOTYPE_KL = 0.1  # nats
# RANK_RATIO (the backbone's features): chosen, 0.3 of the rank at initialisation, between what runs that
# learn and runs that collapse reach on the data_seed=1 streams. Learning: supervised 1.28, MAE 1.41,
# SimCLR 0.93, CLIP 0.64 (final / init, above); the EMA sweep's ladders (configs/method/cpu/byol.yaml and
# dino.yaml, scripts/score_teacher.py: 2048 scenes) have BYOL's own heads at 0.35-0.49 of random init's
# rank and DINO's published schedule at 0.55-0.70, both with linear probes above random init's. Collapsed:
# DINO forced to collapse (base and centre momentum 0) 0.16. The proposal, one half, also fires on
# runs that learn (BYOL's 0.49 with its probe at 41%; CLIP's rank falls below half at small budgets while
# its k-NN accuracy rises: it aligns its features to a few distinct pseudo-captions).
RANK_RATIO = 0.3  # of the effective rank at initialisation
# RANK_RATIO_EMBEDDING: chosen between the measured ratios of an embedding that learns and one that
# collapses: CLIP's image embedding ends at 0.54 (it aligns to a few distinct pseudo-captions, so a lower
# rank is by design), SimCLR's pre-norm projection at 1.17, BYOL's (MoCo v3 heads) at 0.33; DINO's
# collapsed bottleneck at 0.12. The same 0.3 as the features: between 0.33 and 0.12.
RANK_RATIO_EMBEDDING = 0.3
# STD_SCALED: chosen, a tenth of an isotropic embedding's spread (lightly's value is about 1/sqrt(d)
# there); a constant embedding gives 0. Measured std x sqrt(d) at the end: 0.56-0.90 for every
# method's features and embedding (BYOL's features 0.56), cpu/dino's collapsed bottleneck 0.15 (caught by
# the prototype rules instead).
STD_SCALED = 0.1  # std_of_l2_normalized x sqrt(d)


def _rank_rule(
    name: str, init: dict[str, float], final: dict[str, float], threshold: float
) -> tuple[bool, dict] | None:
    key = f"rank_{name}"
    if key not in init or key not in final or init[key] <= 0:
        return None
    ratio = final[key] / init[key]
    return ratio < threshold, {f"{key}_init": init[key], f"{key}_final": final[key], f"{key}_ratio": ratio}


def _std_rule(name: str, final: dict[str, float]) -> tuple[bool, dict] | None:
    std, dim = final.get(f"std_{name}"), final.get(f"dim_{name}")
    if std is None or dim is None:
        return None
    scaled = std * math.sqrt(dim)
    return scaled < STD_SCALED, {f"std_{name}": std, f"dim_{name}": dim, f"std_{name}_x_sqrt_dim": scaled}


def _below(key: str, final: dict[str, float], threshold: float) -> tuple[bool, dict] | None:
    if key not in final:
        return None
    return final[key] < threshold, {key: final[key]}


RULES: tuple[tuple[str, float, Any], ...] = (
    ("prototype_entropy_gap", PROTOTYPE_GAP, lambda i, f: _below("entropy_gap", f, PROTOTYPE_GAP)),
    ("prototype_kl", PROTOTYPE_KL, lambda i, f: _below("kl_teacher_student", f, PROTOTYPE_KL)),
    ("rank_features", RANK_RATIO, lambda i, f: _rank_rule("features", i, f, RANK_RATIO)),
    (
        "rank_embedding",
        RANK_RATIO_EMBEDDING,
        lambda i, f: _rank_rule("embedding", i, f, RANK_RATIO_EMBEDDING),
    ),
    ("std_embedding", STD_SCALED, lambda i, f: _std_rule("embedding", f)),
    ("std_features", STD_SCALED, lambda i, f: _std_rule("features", f)),
)


def verdict(init: dict[str, float] | None, final: dict[str, float] | None) -> dict[str, Any] | None:
    """None, or the first rule that fired with every fired rule's values and thresholds."""
    if not init or not final:
        return None
    fired: list[str] = []
    values: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    for name, threshold, rule in RULES:
        result = rule(init, final)
        if result is not None and result[0]:
            fired.append(name)
            values |= result[1]
            thresholds[name] = threshold
    if not fired:
        return None
    return {"rule": fired[0], "rules": fired, "values": values, "thresholds": thresholds}
