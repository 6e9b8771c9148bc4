"""Stochastic gradient descent and learning-rate schedules.

SGD follows PyTorch's update, so that the baselines' recipe (spec section 6) means the same
here: with g = grad + weight_decay * p,
    v <- momentum * v + g;   p <- p - lr * (g + momentum * v if nesterov else v).
A schedule is a callable ``lr = schedule(step)`` over the steps of a whole run.
"""
from __future__ import annotations

import math

import numpy as np

from minissc.checks import check_int


class SGD:
    """SGD with momentum (optionally Nesterov) and L2 weight decay."""

    def __init__(self, parameters, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 5e-4, nesterov: bool = False):
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("SGD got an empty parameter list")
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        self.velocities = [np.zeros_like(p.data) for p in self.parameters]

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for p, velocity in zip(self.parameters, self.velocities):
            if p.grad is None:
                continue
            step = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if self.momentum:
                velocity *= self.momentum
                velocity += step
                step = step + self.momentum * velocity if self.nesterov else velocity
            p.data -= self.lr * step

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"velocity.{i}": v.copy() for i, v in enumerate(self.velocities)}

    def load_state_dict(self, state: dict) -> None:
        if len(state) != len(self.velocities):
            raise ValueError(f"optimizer state has {len(state)} buffers, expected "
                             f"{len(self.velocities)} (a checkpoint of another model?)")
        for i, velocity in enumerate(self.velocities):
            source = np.asarray(state[f"velocity.{i}"])
            if source.shape != velocity.shape:
                raise ValueError(f"optimizer buffer {i} has shape {source.shape}, "
                                 f"expected {velocity.shape}")
            velocity[...] = source


class StepSchedule:
    """The baselines' recipe: lr divided by 10 after given fractions of the run.

    Shift-Net divides at epochs 81 and 122 of 164, the default fractions here, so a
    164-epoch run gets exactly those epochs and a shorter run the same proportions.
    """

    def __init__(self, base_lr: float, total_steps: int, steps_per_epoch: int,
                 milestones=(81 / 164, 122 / 164), gamma: float = 0.1):
        epochs = total_steps / steps_per_epoch
        self.base_lr, self.gamma = base_lr, gamma
        self.milestone_steps = [round(f * epochs) * steps_per_epoch for f in milestones]

    def __call__(self, step: int) -> float:
        passed = sum(step >= m for m in self.milestone_steps)
        return self.base_lr * self.gamma ** passed


class CosineSchedule:
    """Linear warm-up from 0 over `warmup_steps`, then cosine decay from base_lr to 0."""

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0):
        self.base_lr, self.total_steps, self.warmup_steps = base_lr, total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * self.base_lr * (1 + math.cos(math.pi * min(progress, 1.0)))


class OneCycleSchedule:
    """One-cycle (Smith 2018), as PyTorch's OneCycleLR with cosine annealing.

    Rises from base_lr / 25 to base_lr over the first `pct_start` of the run, then falls to
    base_lr / 25 / 1e4: the short schedule for a laptop budget.
    """

    def __init__(self, base_lr: float, total_steps: int, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4):
        self.base_lr, self.total_steps = base_lr, total_steps
        self.initial_lr = base_lr / div_factor
        self.final_lr = self.initial_lr / final_div_factor
        self.peak_step = max(1, round(pct_start * total_steps) - 1)

    @staticmethod
    def _cosine(start: float, end: float, fraction: float) -> float:
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))

    def __call__(self, step: int) -> float:
        if step <= self.peak_step:
            return self._cosine(self.initial_lr, self.base_lr, step / self.peak_step)
        fraction = (step - self.peak_step) / max(1, self.total_steps - 1 - self.peak_step)
        return self._cosine(self.base_lr, self.final_lr, fraction)


SCHEDULES = ("step", "cosine", "onecycle", "constant")


def make_schedule(name: str, base_lr: float, total_steps: int, steps_per_epoch: int,
                  warmup_steps: int = 0):
    """A schedule by name: step (the baselines'), cosine (with warm-up), onecycle, constant."""
    check_int(total_steps, "total_steps", 1)
    check_int(steps_per_epoch, "steps_per_epoch", 1)
    if name == "step":
        return StepSchedule(base_lr, total_steps, steps_per_epoch)
    if name == "cosine":
        return CosineSchedule(base_lr, total_steps, warmup_steps)
    if name == "onecycle":
        return OneCycleSchedule(base_lr, total_steps)
    if name == "constant":
        return lambda step: base_lr
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")

