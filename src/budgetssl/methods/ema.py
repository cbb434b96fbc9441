"""The EMA teacher of BYOL and DINO: a copy of student parts that trails them by momentum.

timm's ModelEmaV3 follows one whole module; a teacher here follows a chain of student parts
(backbone, then a head) that stay registered once, on the method, so the copy is ours.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from budgetssl.engine.schedule import cosine


def momentum_at(fraction: float, base: float) -> float:
    """BYOL/DINO schedule: cosine from `base` at the start to 1 at the end of the budget."""
    return cosine(fraction, base, 1.0)


class EmaTeacher(nn.Module):
    """Forward-only copies of `parts`, applied in order; updated as teacher = m*teacher + (1-m)*student.

    The current momentum is a buffer, so a checkpoint holds the schedule's position with the weights.
    """

    def __init__(self, parts: dict[str, nn.Module], base_momentum: float) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({name: copy.deepcopy(part) for name, part in parts.items()})
        self.parts.requires_grad_(False)
        self.base_momentum = base_momentum
        self.register_buffer("momentum", torch.tensor(base_momentum, dtype=torch.float64))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts.values():
            x = part(x)
        return x

    def schedule(self, fraction: float) -> float:
        m = momentum_at(fraction, self.base_momentum)
        self.momentum.fill_(m)
        return m

    @torch.no_grad()
    def update(self, students: dict[str, nn.Module]) -> None:
        if set(students) != set(self.parts):
            raise ValueError(f"teacher parts {sorted(self.parts)} != student parts {sorted(students)}")
        m = float(self.momentum)
        teacher_params, student_params = [], []
        for name, part in self.parts.items():
            student = students[name]
            teacher_params += list(part.parameters())
            student_params += list(student.parameters())
            for t, s in zip(part.buffers(), student.buffers(), strict=True):
                t.copy_(s)  # batch-norm statistics follow the student, as in BYOL and DINO
        if not math.isclose(m, 1.0):
            torch._foreach_lerp_(teacher_params, [p.detach() for p in student_params], 1.0 - m)
