"""Small tensor pieces shared by attacks, penalties and evaluation: per-example norms and broadcasting,
l2 projection and normalisation, random draws from an optional generator, the logit margin, and forward
passes over a large batch in chunks."""

from __future__ import annotations

from collections.abc import Callable

import torch


def randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal draws of ``shape`` in ``like``'s dtype and on its device: from ``generator`` (on the
    generator's own device, then moved: a CPU generator serves CUDA tensors), or from the global RNG
    (``generator`` None, the default)."""
    device = like.device if generator is None else generator.device
    return torch.randn(shape, device=device, dtype=like.dtype, generator=generator).to(like.device)


def rand(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform draws in [0, 1) of ``shape``, in ``like``'s dtype and on its device, as ``randn``."""
    device = like.device if generator is None else generator.device
    return torch.rand(shape, device=device, dtype=like.dtype, generator=generator).to(like.device)


def randint(
    high: int, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Integers uniform in [0, high) of ``shape``, int64 on ``like``'s device, as ``randn``."""
    device = like.device if generator is None else generator.device
    return torch.randint(0, high, shape, device=device, generator=generator).to(like.device)


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-example values (n,) shaped (n, 1, ..., 1), a view, to broadcast against a batch ``like`` (n, *shape)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example l2 norms ||t_i||_2 of a batch t (n, *shape), shaped (n, 1, ..., 1) to broadcast against it."""
    return per_example(t.flatten(1).norm(dim=1), t)


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection of each example of ``delta`` (n, *shape) onto the l2 ball of radius ``eps``:
    delta_i * eps / max(||delta_i||_2, eps)."""
    return delta * (eps / flat_norm(delta).clamp_min(eps))


def normalize_l2(t: torch.Tensor) -> torch.Tensor:
    """Each example of ``t`` (n, *shape) divided by its l2 norm, t_i / ||t_i||_2 (zero rows stay zero).

    Each example is first divided by its largest entry, since the squares of tiny gradients (VAT's, at
    xi = 1e-6) underflow to a zero norm and would blow the direction up instead of normalizing it."""
    tiny = torch.finfo(t.dtype).tiny
    t = t / per_example(t.flatten(1).abs().amax(dim=1), t).clamp_min(tiny)
    return t / flat_norm(t).clamp_min(tiny)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The logit margin f_y - max_{j != y} f_j per example, for logits (n, k) and labels y (n,) -> (n,).

    Negative exactly when another class scores higher than y; a tie for the top gives 0 (which ``argmax``
    may count as misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``fn`` on ``chunk_size`` rows of ``inputs`` at a time, the results concatenated along dim 0 (a large
    batch through a model without holding all its activations at once)."""
    return torch.cat([fn(chunk) for chunk in torch.split(inputs, chunk_size)])
