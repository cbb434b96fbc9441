"""A terminal progress bar: FLOPs spent of the budget, steps, loss and ETA."""

from __future__ import annotations

from tqdm.auto import tqdm


def si(value: float) -> str:
    """1.23e12 -> '1.23T'."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


class Progress:
    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self.bar: tqdm | None = None

    def start(self, steps: int, budget_flops: float) -> None:
        self.budget = budget_flops
        # disable=None: a bar on a terminal, nothing in logs and pipes.
        disable = None if self.enabled else True
        self.bar = tqdm(total=steps, desc=self.label, unit="step", disable=disable, dynamic_ncols=True)

    def update(self, steps_done: int, flops: int, loss: float) -> None:
        if self.bar is None or self.bar.disable:  # no bar shown: nothing to format (once per step)
            return
        self.bar.set_postfix_str(f"FLOPs {si(flops)}/{si(self.budget)}, loss {loss:.4f}", refresh=False)
        self.bar.update(steps_done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
