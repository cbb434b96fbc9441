"""The EMA teacher of BYOL and DINO: a copy of student parts that trails them by momentum.

timm's ModelEmaV3 follows one whole module; a teacher here follows a chain of student parts
(backbone, then a head) that stay registered once, on the method, so the copy is ours.

The start of the momentum's cosine, `method.momentum_rule` (RULES; `planned_base_momentum`):
- `published`: the method's `base_momentum` at any plan length, the schedule as published.
- `budget_aware`: the start fitted to the plan (below), which keeps the random initial teacher's weight
  in the final one under 1%.
- `floor`: the budget-aware start, but never below `method.momentum_floor`. At the demo's plans (tens
  to hundreds of updates) this is the floor itself, at reference plans the published start.
Which one the method configs use, and the sweep that chose it, is written in configs/method/cpu/dino.yaml
and cpu/byol.yaml.

The budget-aware rule. BYOL and DINO raise the momentum from m0 = 0.996 to 1 on a cosine over
training. After N updates the initial teacher's weight in the final one is W = prod_i m_i. A short plan
keeps the teacher near its random start (N = 55 at the demo's 1e12 FLOPs: W = 0.89), so the teacher
must move faster when the plan is short. The rule, derived for the cosine schedule: with
m_i = 1 - (1 - m0) (1 + cos(pi i / (N - 1))) / 2, i = 0 .. N-1, the cosines cancel in pairs, so
sum_i (1 - m_i) = (1 - m0) N / 2 exactly, and since ln(m) <= -(1 - m),
W <= exp(-(1 - m0) N / 2). Hence the planned start
    m0' = min(m0, 1 - 2 ln(1 / W_max) / N)   (clamped at 0)
keeps W <= W_max = 1% at any plan length and equals the reference schedule (m0' = m0) whenever the
plan has at least 2 ln(100) / (1 - m0) = 2303 updates (m0 = 0.996), which every reference run has
(BYOL: 300 epochs of ImageNet at batch 4096, about 94k updates).

Why the configs do not use it (they use `published`): a fast teacher is the failure the methods' authors
warn of, and the sweep measured it. DINO's main_dino.py (--momentum_teacher help) recommends a higher start
with small batches (0.9995 at batch 256), not a lower one, and the DINO paper (Caron et al. 2021, Sec. 5.2,
"teacher network" ablation) finds a teacher that copies the student does not train; BYOL (Grill et al.
2020, Sec. 5, Table 5a, target decay rate) finds a decay rate of 0 unstable and rates from 0.9 to 0.999 train.
The budget-aware start falls below 0.9 on the demo's plans (0.78 on its 42-update DINO rung, 0.85 on
BYOL's 61), and the sweep (configs/method/cpu/dino.yaml, cpu/byol.yaml) found there a collapsed DINO
teacher (batch-mean minus per-image entropy 0.01-0.05 nats) and a BYOL whose linear probe falls with
budget; on a ladder it also trains a larger rung's teacher unlike its separate run (below).

Under train.schedule=wsd the momentum is an annealed value (engine/schedule.py): it stays at its planned
start on the trunk and rises to 1 on the cosine over each rung's cool-down. Its start is planned on the
ladder's smallest rung (Timeline.reference_steps), because the trunk shares one start with every rung
before any rung's end is known, and the bound holds for every rung with it: a rung of N updates spends
its first N - C at m0' and its last C (the cool-down) on the cosine, so sum_i (1 - m_i) =
(1 - m0') (N - C / 2) >= (1 - m0') N / 2, and N is smallest for the smallest rung, which m0' is fitted to.

A rung and its separate run (train.schedule=wsd at the rung's budget, no ladder) follow the same
momentum on every step exactly when the rule gives both plans the same start: always under `published`;
under `floor` whenever no rung is long enough for the budget-aware start to pass the floor (at most
2 ln(100) / (1 - floor) updates, 921 at 0.99: every rung of the demo's ladder); under `budget_aware`
only for the smallest rung, a larger rung's teacher starting lower (faster) than its separate run's
(tests/test_schedule.py checks both).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from budgetssl.config.schema import MethodConfig
from budgetssl.engine.schedule import cosine
from budgetssl.errors import ConfigError

MAX_INIT_WEIGHT = 0.01  # the most the random initial teacher may weigh in the final one (budget_aware)
PUBLISHED, FLOOR, BUDGET_AWARE = "published", "floor", "budget_aware"
RULES = (PUBLISHED, FLOOR, BUDGET_AWARE)


@dataclass
class TeacherConfig(MethodConfig):
    """The momentum fields of a method with an EMA teacher (values in its configs/method/*.yaml)."""

    base_momentum: float = MISSING  # the published start of the cosine to 1
    momentum_rule: str = MISSING  # published | floor | budget_aware (module docstring)
    momentum_floor: float = MISSING  # the lowest start the floor rule plans (read by that rule only)


def check_teacher_config(cfg: TeacherConfig) -> None:
    """Refuse a momentum outside [0, 1], an unknown rule, or a floor above the published start."""
    for name in ("base_momentum", "momentum_floor"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"method.{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.momentum_rule not in RULES:
        raise ConfigError(
            f"method.momentum_rule must be one of {', '.join(RULES)}, got {cfg.momentum_rule!r}"
        )
    if cfg.momentum_rule == FLOOR and cfg.momentum_floor > cfg.base_momentum:
        raise ConfigError(
            f"method.momentum_floor={cfg.momentum_floor} is above method.base_momentum={cfg.base_momentum}: "
            "the floor rule never starts above the published start; lower the floor or use "
            "method.momentum_rule=published"
        )


def momentum_at(fraction: float, base: float) -> float:
    """BYOL/DINO schedule: cosine from `base` at the start to 1 at the end of the budget (`fraction`: a
    step's clock.anneal)."""
    return cosine(fraction, base, 1.0)


def decay_leaving(max_init_weight: float) -> float:
    """(1 - m0) x N, the start's distance from 1 times the updates, at which the bound on the initial
    teacher's weight, exp(-(1 - m0) N / 2) (init_weight_bound), is `max_init_weight`: 2 ln(1 / W_max)."""
    return 2.0 * math.log(1.0 / max_init_weight)


def budget_aware_momentum(base: float, steps: int, max_init_weight: float = MAX_INIT_WEIGHT) -> float:
    """The budget-aware start for a plan of `steps` updates (the module docstring derives it): the
    reference's `base` when the plan is long enough, lower when it is short."""
    if steps < 1:
        return base
    return max(0.0, min(base, 1.0 - decay_leaving(max_init_weight) / steps))


def budget_aware_updates(base: float, max_init_weight: float = MAX_INIT_WEIGHT) -> int:
    """The fewest updates at which the budget-aware start is the published `base` (module docstring):
    2 ln(1 / W_max) / (1 - base) rounded up, 2303 at 0.996 and 922 at 0.99. A shorter plan starts lower under
    `budget_aware` (and `floor`, down to its floor) and keeps more than W_max of the initial teacher under
    `published`."""
    return math.ceil(decay_leaving(max_init_weight) / (1.0 - base)) if base < 1 else 0


def init_weight_bound(start: float, steps: int) -> float:
    """The most the initial teacher weighs in the final one after `steps` updates whose momentum rises
    from `start` to 1 (module docstring: W <= exp(-(1 - m0) N / 2), on the cosine and on a rung's wsd
    schedule alike)."""
    return math.exp(-(1.0 - start) * steps / 2.0)


def planned_base_momentum(base: float, steps: int, rule: str = BUDGET_AWARE, floor: float = 0.0) -> float:
    """The start of the cosine schedule for a plan of `steps` updates under `rule` (module docstring)."""
    if rule == PUBLISHED:
        return base
    if rule == FLOOR:
        return max(floor, budget_aware_momentum(base, steps))
    if rule == BUDGET_AWARE:
        return budget_aware_momentum(base, steps)
    raise ValueError(f"unknown momentum rule {rule!r}; valid: {', '.join(RULES)}")


class EmaTeacher(nn.Module):
    """Forward-only copies of `parts`, applied in order; updated as teacher = m*teacher + (1-m)*student.

    The current momentum, the planned start of its schedule and the initial teacher's weight in the
    current one (`init_weight`, the product of the momenta so far) are buffers, so a checkpoint holds
    them with the weights. The momentum and the planned start are also kept as host numbers where they
    are set, so that a step never waits for the device to read them back (a load reads them again).
    """

    def __init__(
        self,
        parts: dict[str, nn.Module],
        base_momentum: float,
        rule: str = BUDGET_AWARE,
        floor: float = 0.0,
    ) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown momentum rule {rule!r}; valid: {', '.join(RULES)}")
        self.parts = nn.ModuleDict({name: copy.deepcopy(part) for name, part in parts.items()})
        self.parts.requires_grad_(False)
        self.base_momentum, self.rule, self.floor = base_momentum, rule, floor
        self.register_buffer("momentum", torch.tensor(base_momentum, dtype=torch.float64))
        self.register_buffer("planned_base", torch.tensor(base_momentum, dtype=torch.float64))
        self.register_buffer("init_weight", torch.tensor(1.0, dtype=torch.float64))
        self.momentum_now: float | None = None  # the buffers' values on the host, where known
        self.planned_now: float | None = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.momentum_now = self.planned_now = None  # read from the loaded buffers when next needed
        super()._load_from_state_dict(*args, **kwargs)

    def plan(self, steps: int) -> float:
        """Fit the schedule to a plan of `steps` updates; re-sets the current step's momentum, whose
        update has not run yet when the plan becomes known (the engine's first, metered step)."""
        start = planned_base_momentum(self.base_momentum, steps, self.rule, self.floor)
        if float(self.momentum) == float(self.planned_base) and float(self.init_weight) == 1.0:
            self.momentum.fill_(start)  # still at fraction 0, before any update
            self.momentum_now = start
        self.planned_base.fill_(start)
        self.planned_now = start
        return start

    @classmethod
    def of(cls, parts: dict[str, nn.Module], cfg: TeacherConfig) -> EmaTeacher:
        """The teacher of `parts` on the momentum schedule `cfg` sets."""
        return cls(parts, cfg.base_momentum, cfg.momentum_rule, cfg.momentum_floor)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, **first: object) -> torch.Tensor:
        """The parts in order; `first` are keyword arguments of the first part (a backbone's
        `readout="tokens"`, for iBOT's and DINOv2's teachers on patch tokens)."""
        for i, part in enumerate(self.parts.values()):
            x = part(x, **first) if i == 0 else part(x)
        return x

    def momentum_of(self, anneal: float) -> float:
        """The momentum at `anneal` on this teacher's schedule: BYOL's and DINO's cosine from the planned
        start to 1 (a teacher on another ramp overrides this: I-JEPA's linear one, methods/zoo/ijepa.py)."""
        base = self.planned_now if self.planned_now is not None else float(self.planned_base)
        return momentum_at(float(anneal), base)

    def schedule(self, anneal: float) -> float:
        """Set the momentum of the step at `anneal` (its clock's anneal position; a Clock reads as it)."""
        m = self.momentum_of(anneal)
        self.momentum.fill_(m)
        self.momentum_now = m
        return m

    @torch.no_grad()
    def update(self, students: dict[str, nn.Module]) -> None:
        if set(students) != set(self.parts):
            raise ValueError(f"teacher parts {sorted(self.parts)} != student parts {sorted(students)}")
        m = self.momentum_now if self.momentum_now is not None else float(self.momentum)
        self.init_weight.mul_(m)
        teacher_params, student_params = [], []
        for name, part in self.parts.items():
            student = students[name]
            teacher_params += list(part.parameters())
            student_params += list(student.parameters())
            for t, s in zip(part.buffers(), student.buffers(), strict=True):
                t.copy_(s)  # batch-norm statistics follow the student, as in BYOL and DINO
        if not math.isclose(m, 1.0):
            torch._foreach_lerp_(teacher_params, [p.detach() for p in student_params], 1.0 - m)
