"""Grokfast gradient filters (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying
Slow Gradients"): add `lamb` times a low-pass filtered gradient to the gradient.

- `ema`: h <- alpha h + (1 - alpha) g;  g <- g + lamb h
- `ma`:  h = mean of the last `window` gradients (only once the window is full);  g <- g + lamb h

The filter state is part of the resume state, so a resumed run replays exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grokscope.config import FilterConfig


class GradFilter:
    def __init__(self, cfg: FilterConfig, params: list[Tensor]):
        self.cfg = cfg
        self.params = params
        self.ema: list[Tensor] | None = None
        self.window: list[Tensor] | None = None  # [window, *shape] ring buffers
        self.count = 0  # gradients seen

    @torch.no_grad()
    def apply(self) -> None:
        grads = [p.grad for p in self.params]
        if self.cfg.kind == "ema":
            if self.ema is None:
                self.ema = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.ema, self.cfg.alpha)
                torch._foreach_add_(self.ema, grads, alpha=1 - self.cfg.alpha)
            torch._foreach_add_(grads, self.ema, alpha=self.cfg.lamb)
        elif self.cfg.kind == "ma":
            w = self.cfg.window
            if self.window is None:
                self.window = [torch.zeros((w, *g.shape), dtype=g.dtype) for g in grads]
            slot = self.count % w
            for buf, g in zip(self.window, grads, strict=True):
                buf[slot] = g
            if self.count + 1 >= w:
                for buf, g in zip(self.window, grads, strict=True):
                    g.add_(buf.mean(0), alpha=self.cfg.lamb)
        self.count += 1

    def state(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {"filter/count": torch.tensor(self.count)}
        for name, bufs in (("ema", self.ema), ("window", self.window)):
            for i, b in enumerate(bufs or []):
                out[f"filter/{name}/{i}"] = b
        return out

    def load(self, tensors: dict[str, Tensor]) -> None:
        if "filter/count" not in tensors:
            return
        self.count = int(tensors["filter/count"])
        for name in ("ema", "window"):
            bufs = [tensors[f"filter/{name}/{i}"].clone() for i in range(len(self.params)) if f"filter/{name}/{i}" in tensors]
            if bufs:
                setattr(self, name, bufs)
