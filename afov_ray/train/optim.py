"""Optimiser, learning-rate schedule and layer freezing as in the official code.

docs/method.md "Optimiser settings per stage" (TMP, annotation-free, downstream):

- SGD, momentum 0.9, **dampening 0.1**, coupled weight decay 1e-4;
- two parameter groups when ``lr_head`` is set: parameters whose name contains ``final.`` (the 1x1
  head) use ``lr_head`` and ``weight_decay_head`` (falls back to ``weight_decay`` when None);
- ``CosineAnnealingLR(T_max=num_epochs)`` stepped once per **epoch** (official). The epoch-e LR is
  ``lr * (1 + cos(pi * e / T)) / 2``. ``per_iteration=True`` is the documented alternative: the same
  cosine over ``num_epochs * steps_per_epoch`` steps, which changes the effective schedule;
- ``optimizer="adamw"`` is our documented alternative (not in the official code): AdamW with the same
  parameter groups and schedule, ``momentum``/``dampening`` unused. It converges in far fewer steps at
  small CPU budgets (bench/quality.py uses it; see README "Quality benchmark");
- linear probing freezes every parameter except the head and keeps the model in ``eval()`` so BN
  statistics stay frozen (section 6.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from afov_ray.config import option

HEAD_PREFIX = "final."


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adamw"] = option("sgd", "sgd (official) | adamw (ours: far fewer steps to a usable "
                                                       "model at small budgets)")
    lr: float = option(0.02, "base learning rate (body, or all when lr_head is null)", min=0)
    lr_head: float | None = option(2.0, "learning rate of final.* (null: one group)", min=0)
    momentum: float = option(0.9, "SGD momentum", min=0, max=1)
    dampening: float = option(0.1, "SGD dampening (official 0.1)", min=0, max=1)
    weight_decay: float = option(1e-4, "weight decay (coupled for SGD, decoupled for AdamW)", min=0)
    weight_decay_head: float | None = option(None, "head weight decay (null: same as weight_decay)", min=0)
    per_iteration_schedule: bool = option(False, "cosine stepped per iteration (option) instead of per epoch "
                                                 "(official)")


def _is_head(name: str, head_prefix: str) -> bool:
    return head_prefix in name


def build_optimizer(model: nn.Module, cfg: OptimConfig, head_prefix: str = HEAD_PREFIX) -> torch.optim.Optimizer:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    if cfg.lr_head is None:
        groups = [{"params": [p for _, p in params], "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                   "name": "all"}]
    else:
        head = [p for n, p in params if _is_head(n, head_prefix)]
        body = [p for n, p in params if not _is_head(n, head_prefix)]
        wd_head = cfg.weight_decay if cfg.weight_decay_head is None else cfg.weight_decay_head
        groups = []
        if body:
            groups.append({"params": body, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "body"})
        if head:
            groups.append({"params": head, "lr": cfg.lr_head, "weight_decay": wd_head, "name": "head"})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer != "sgd":
        raise ValueError(f"optim.optimizer: unknown {cfg.optimizer!r}; expected sgd | adamw")
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening,
                           weight_decay=cfg.weight_decay)


def cosine_factor(step: int, total: int) -> float:
    """(1 + cos(pi * step / total)) / 2, the CosineAnnealingLR factor with eta_min = 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


class CosineSchedule:
    """Cosine annealing per epoch (official) or per iteration (option).

    Call ``step_epoch()`` at the end of every epoch and ``step_iteration()`` after every optimiser
    step; only the one matching the mode changes the LR. State is a plain dict for checkpoints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, num_epochs: int, steps_per_epoch: int = 1,
                 per_iteration: bool = False):
        self.optimizer = optimizer
        self.num_epochs = int(num_epochs)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.per_iteration = per_iteration
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = lr
        self.epoch = 0
        self.iteration = 0
        self._apply()

    def _factor(self) -> float:
        if self.per_iteration:
            return cosine_factor(self.iteration, self.num_epochs * self.steps_per_epoch)
        return cosine_factor(self.epoch, self.num_epochs)

    def _apply(self) -> None:
        f = self._factor()
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * f

    def step_iteration(self) -> None:
        self.iteration += 1
        if self.per_iteration:
            self._apply()

    def step_epoch(self) -> None:
        self.epoch += 1
        if not self.per_iteration:
            self._apply()

    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "iteration": self.iteration, "base_lrs": list(self.base_lrs),
                "per_iteration": self.per_iteration}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()


def freeze_for_linear_probe(model: nn.Module, head_prefix: str = HEAD_PREFIX) -> list[str]:
    """Freeze every parameter except the head's; returns the names left trainable.

    The caller must also keep the model in ``eval()`` during training (use ``LinearProbeMode``) so
    BatchNorm running statistics are frozen, as in the official linear probing.
    """
    trainable = []
    for name, p in model.named_parameters():
        keep = _is_head(name, head_prefix)
        p.requires_grad_(keep)
        if keep:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"no parameter name contains {head_prefix!r}; cannot linear-probe")
    return trainable
