"""The Square attack (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020): random search, no gradients."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..arguments import check_int, check_logits, check_positive
from ..tensors import margin, normalize_l2, per_example, randint, randn
from .base import BallAttack


def _p_schedule(p_init: float, query: int, queries: int) -> float:
    """The fraction of pixels changed per query: p_init halved at 10, 50, 200, 500, 1000, 2000, 4000,
    6000 and 8000 queries of a 10,000-query budget (rescaled to ``queries``)."""
    scaled = int(query / queries * 10000)
    halvings = sum(scaled > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    out: float = p_init / 2**halvings
    return out


def _meta_pattern(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The l2 Square attack's square update (size, size): concentric rings of weight 1/(ring+1)^2 around
    the centre of each half, the second half of opposite sign, unit l2 norm."""
    half = max(size // 2, 1)
    pattern = torch.zeros(size, size, device=device, dtype=dtype)
    for block, sign in ((slice(0, half), 1.0), (slice(half, size), -1.0)):
        width = pattern[:, block].shape[1]
        if width == 0:
            continue
        rows = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
        cols = torch.arange(width, device=device, dtype=dtype) - (width - 1) / 2
        ring = torch.maximum(rows.abs()[:, None], cols.abs()[None, :]).floor()
        pattern[:, block] = sign / (ring + 1) ** 2
    out: torch.Tensor = pattern / pattern.norm()
    return out


class Square(BallAttack):
    """Square attack (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020): random search that minimises
    the margin

        f_y(x + delta) - max_{j != y} f_j(x + delta)

    with square-shaped updates, using no gradients at all (a check on gradient masking).

    linf: starts from vertical stripes of +-eps, then sets a random square (side round(sqrt(p H W)),
    between 1 and min(H, W) - 1) of each channel to +-eps. l2: starts from a random point of the sphere
    ||delta||_2 = eps, then moves the perturbation's mass in two random squares into the first, shaped by
    the meta-pattern, keeping ||delta||_2 = eps (before clipping to the input range). A proposal is kept
    when it lowers the margin; examples stop once their margin is <= 0. p follows the paper's halving
    schedule from ``p_init`` (halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000
    queries, rescaled to ``queries``).

    Args (keyword-only):
        norm: "linf" (default) or "l2", the ball.
        eps: its radius, > 0 (default 8/255).
        queries: the budget per example, >= 1 (default 5000): one forward pass for the start, then at most
            queries - 1 proposals.
        p_init: the initial fraction of pixels of a square, > 0; None (default): 0.05 (linf) or 0.1 (l2).
        clip: the input range (lo, hi) x_adv stays in, or None (default (0, 1)).
        generator: the source of the random draws (None, default: the global RNG).

    Shape:
        x: images (n, C, H, W) with H, W >= 2; y: (n,) class indices; model(x): logits (n, k).

    Returns:
        x_adv (n, C, H, W), detached, with ||x_adv - x|| <= eps and x_adv in the clip box.

    Raises:
        ValueError: for inputs that are not image batches of at least 2 x 2 pixels.

    Example:
        >>> attack = attacks.Square(norm="linf", eps=8 / 255, queries=1000)
        >>> x_adv = attack(model, x, y)  # x: (n, C, H, W) in [0, 1]
    """

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float = 8 / 255,
        queries: int = 5000,
        p_init: float | None = None,
        clip: tuple[float, float] | None = (0.0, 1.0),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(norm=norm, eps=eps, clip=clip, generator=generator)
        self.queries = check_int("queries", queries)
        self.p_init = (0.05 if norm == "linf" else 0.1) if p_init is None else check_positive("p_init", p_init)
        self.name = "Square"

    def _clip(self, x_adv: torch.Tensor) -> torch.Tensor:
        return x_adv.clamp(*self.clip) if self.clip is not None else x_adv

    def _signs(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return (2 * randint(2, shape, like, self.generator) - 1).to(like.dtype)

    def _windows(self, n: int, side: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A random side x side square per example: its mask (n, 1, H, W), top rows and left columns (n,)."""
        height, width = like.shape[-2:]
        top = randint(height - side + 1, (n,), like, self.generator)
        left = randint(width - side + 1, (n,), like, self.generator)
        rows = torch.arange(height, device=like.device)
        cols = torch.arange(width, device=like.device)
        in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side)
        in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side)
        return (in_rows[:, :, None] & in_cols[:, None, :])[:, None].to(like.dtype), top, left

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = x.shape
        if self.norm == "linf":  # vertical stripes
            return self.eps * self._signs((n, channels, 1, width), x).expand(n, channels, height, width)
        return self.eps * normalize_l2(randn(tuple(x.shape), x, self.generator))

    def _propose(self, delta: torch.Tensor, side: int) -> torch.Tensor:
        n, channels, height, width = delta.shape
        if self.norm == "linf":
            window = self._windows(n, side, delta)[0]
            return delta * (1 - window) + self.eps * self._signs((n, channels, 1, 1), delta) * window
        first, top, left = self._windows(n, side, delta)
        second = self._windows(n, side, delta)[0]
        both = torch.clamp(first + second, max=1.0)
        # the budget of both squares plus what the perturbation does not use goes into the first square
        budget = (self.eps**2 - delta.flatten(1).pow(2).sum(1) + (delta * both).flatten(1).pow(2).sum(1)).clamp_min(0)
        pattern = _meta_pattern(side, delta.device, delta.dtype)  # unit norm
        rows = torch.arange(height, device=delta.device)[None] - top[:, None]  # (n, H): row within the square
        cols = torch.arange(width, device=delta.device)[None] - left[:, None]
        placed = pattern[rows.clamp(0, side - 1)[:, :, None], cols.clamp(0, side - 1)[:, None, :]]
        placed = (placed * first[:, 0]).unsqueeze(1)  # (n, 1, H, W), zero outside the square
        scale = (budget / channels).sqrt()
        return delta * (1 - both) + per_example(scale, delta) * self._signs((n, channels, 1, 1), delta) * placed

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``Attack.__call__``, after checking that x is a batch of images (n, C, H, W) with H, W >= 2."""
        if x.dim() != 4 or min(x.shape[-2:]) < 2:
            raise ValueError(f"Square needs image batches (n, C, H, W) with H, W >= 2, got shape {tuple(x.shape)}")
        return super().__call__(model, x, y)

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The random search, without gradients; see the class docstring."""
        n, _, height, width = x.shape
        x_adv = self._clip(x + self._start(x))
        delta = x_adv - x
        best = margin(check_logits(model(x_adv), n), y)
        for query in range(1, self.queries):
            todo = (best > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            p = _p_schedule(self.p_init, query, self.queries)
            side = min(max(int(round(math.sqrt(p * height * width))), 1), height - 1, width - 1)
            proposal = self._clip(x[todo] + self._propose(delta[todo], side)) - x[todo]
            value = margin(model(x[todo] + proposal), y[todo])
            improved = value < best[todo]
            delta[todo[improved]] = proposal[improved]
            best[todo[improved]] = value[improved]
        return x + delta
