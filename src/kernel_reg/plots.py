"""The report's figures: small multiples of learning curves and of the RKHS-norm bracket per method, and
the trade-off between standard and adversarial accuracy (a method has one colour in every figure); the
certified-accuracy curves of Lipschitz networks."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import regularizers
from .config import (
    format_value,
    hyperparameter_text,
    hyperparameters,
    short_hash,
)
from .rundir import (
    Robustness,
)
from .studies import RunSummary, select

CANONICAL_METHODS = (
    "none", "wd", "project-sn", "pgd-l2", "loss-gradl2", "adv-perturbation", "gradient-penalty", "vat", "stability",
    "gradtangent", "pgd-l2+project-sn", "loss-gradl2+project-sn", "adv-perturbation+project-sn",
    "gradient-penalty+project-sn", "loss-gradl1", "pgd-linf", "penalize-sn-pi", "penalize-sn-svd",
)  # fmt: skip


def method_colour(method: str) -> Any:
    """The colour of a method: its place in ``CANONICAL_METHODS`` (else a hash of its name) in tab20."""
    import matplotlib

    index = CANONICAL_METHODS.index(method) if method in CANONICAL_METHODS else int(short_hash(method), 16)
    index %= 20
    hue, shade = index % 10, index // 10
    if hue == 7:  # tab20's grey pair marks the baseline in the bracket figure: navy instead
        return ("#283593", "#7986cb")[shade]
    return matplotlib.colormaps["tab20"](2 * hue + shade)


def _strength(runs: list[RunSummary], short: bool = False) -> str:
    """The hyperparameters of a setting, as a label ('' without any); ``short``: its strengths alone."""
    config = runs[0].config
    if not short:
        return hyperparameter_text(config).replace(", ", " ")
    strengths = {p.name for r in config.regs for p in regularizers.REGISTRY[r.name].params if p.strength} | {"wd"}
    values = hyperparameters(config)
    return " ".join(f"{k}={format_value(v)}" for k, v in values.items() if k.rsplit(".", 1)[-1] in strengths)


def _mean_curve(runs: list[RunSummary], field: str) -> tuple[list[int], list[float]]:
    """(epochs, mean over the seeds of ``field`` there), on the epochs where every seed has a value."""
    epochs = sorted(set.intersection(*({m.epoch for m in r.metrics if getattr(m, field) is not None} for r in runs)))
    values = [statistics.mean(getattr(next(m for m in r.metrics if m.epoch == e), field) for r in runs) for e in epochs]
    return epochs, values


def _panels(count: int, width: float = 3.6, height: float = 2.8) -> tuple[Any, list[Any]]:
    import matplotlib.pyplot as plt

    columns = min(4, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False, sharey=True)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def plot_learning_curves(runs: list[RunSummary], path: Path) -> bool:
    """Small multiples, one panel per method: the test accuracy of each setting over epochs (mean over
    seeds; faint, its strength written at its end), the selected setting bold with its training accuracy
    dashed. False when no run has finished."""
    selection = select(runs)
    if not selection.chosen:
        return False
    methods = sorted(selection.chosen, key=lambda m: (m != "none", m))
    fig, axes = _panels(len(methods))
    for ax, method in zip(axes, methods):
        colour = method_colour(method)
        for members in selection.family(method):
            bold = members is selection.of(method)
            epochs, test = _mean_curve(members, "test_acc")
            style = dict(lw=2.2, alpha=1.0) if bold else dict(lw=1.0, alpha=0.45)
            ax.plot(epochs, [100 * v for v in test], color=colour, label=_strength(members) or "-", **style)
            if bold:
                epochs, train = _mean_curve(members, "train_acc")
                ax.plot(epochs, [100 * v for v in train], color=colour, lw=1.4, linestyle="--")
        if len(selection.family(method)) > 1:
            ax.legend(fontsize=6.5, loc="lower right", frameon=False, handlelength=1.5)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)", fontsize=8)
    fig.suptitle("test accuracy per setting (mean over seeds; bold: selected by validation, its training "
                 "accuracy dashed)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_rkhs_bracket(runs: list[RunSummary], path: Path) -> bool:
    """Small multiples, one panel per method at its selected setting (mean over seeds): the lower bounds of
    the RKHS norm (sup ||grad f||: solid, ||f||_delta / eps: dashed) and the spectral upper bound (dotted),
    with the unregularized baseline's in grey. False when no run has finished."""
    selection = select(runs)
    if not selection.chosen:
        return False
    methods = sorted(selection.chosen, key=lambda m: (m != "none", m))
    fig, axes = _panels(len(methods))
    series = (("rkhs_lower_grad", "-"), ("rkhs_lower_delta", "--"), ("rkhs_upper_spectral", ":"))
    for ax, method in zip(axes, methods):
        for members, colour in ((selection.of("none"), "0.6"),) if "none" in selection.chosen else ():
            for field, style in series:
                ax.plot(*_mean_curve(members, field), color=colour, linestyle=style, lw=1.0)
        colour = method_colour(method)
        for field, style in series:
            ax.plot(*_mean_curve(selection.of(method), field), color=colour, linestyle=style, lw=1.8)
        ax.set_yscale("log")
        strength = _strength(selection.of(method))
        ax.set_title(f"{method} ({strength})" if strength else method, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("RKHS-norm bracket at the selected setting: lower bounds (solid: sup ||grad f||, dashed: "
                 "||f||_delta / eps), spectral upper bound (dotted); grey: no regularization", fontsize=9)  # fmt: skip
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_tradeoff(runs: list[RunSummary], path: Path, norm: str = "l2") -> bool:
    """Standard vs adversarial test accuracy, one panel per eps_test, one curve per method across its
    settings, each point labelled with its strength (as the paper's figure); for l2 the certified
    accuracies too (dotted, hollow triangles) unless they are zero everywhere. False when no run has been
    evaluated."""
    import matplotlib.pyplot as plt

    evaluated = [(r, r.robustness) for r in runs if r.robustness is not None and getattr(r.robustness, norm)]
    if not evaluated:
        return False
    keys = sorted({k for _, rob in evaluated for k in getattr(rob, norm)}, key=float)
    by_method: dict[str, list[tuple[RunSummary, Robustness]]] = defaultdict(list)
    for run, rob in evaluated:
        by_method[run.method].append((run, rob))
    certified_anywhere = norm == "l2" and any(any((rob.certified_l2 or {}).values()) for _, rob in evaluated)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method, members in sorted(by_method.items()):
            colour = method_colour(method)
            curves = [(norm, "-o", colour)] + ([("certified_l2", ":^", "none")] if certified_anywhere else [])
            for field, style, fill in curves:
                points = sorted(
                    (100 * rob.clean, 100 * value, _strength([run], short=True))
                    for run, rob in members
                    if (value := (getattr(rob, field) or {}).get(key)) is not None
                )
                if not points:
                    continue
                xs, ys, labels = zip(*points)
                label = method if field == norm else f"{method}, certified"
                ax.plot(xs, ys, style, color=colour, label=label, mfc=fill, ms=5)
                if field == norm:
                    for x_point, y_point, text in points:
                        ax.annotate(text, (x_point, y_point), fontsize=6, color=colour, xytext=(3, 3),
                                    textcoords="offset points")  # fmt: skip
        eps = float(key)
        ax.set_title(f"{norm} eps_test = {eps * 255:.3g}/255" if norm == "linf" else f"{norm} eps_test = {eps:g}")
        ax.set_xlabel("standard accuracy (%)")
        ax.set_ylabel("adversarial accuracy (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_certified_curves(
    curves: dict[str, tuple[list[float], list[float]]], attacked: dict[str, dict[float, float]], path: Path
) -> None:
    """Certified l2 accuracy against the radius, one line per model (``curves``: name -> (radii, accuracies
    in [0, 1])), with the attacked accuracy of the same model at a few radii as dots (``attacked``: name ->
    {radius: accuracy}, possibly empty): the gap between a dot and its line is what the certificate leaves."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for index, (name, (radii, accuracy)) in enumerate(curves.items()):
        colour = plt.get_cmap("tab10")(index % 10)
        ax.plot(radii, [100 * a for a in accuracy], color=colour, label=name)
        points = sorted(attacked.get(name, {}).items())
        if points:
            ax.plot([r for r, _ in points], [100 * a for _, a in points], "o", color=colour, markersize=5)
    ax.set_xlabel("l2 radius eps")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("certified (lines) and attacked (dots) accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def plot_certified_tradeoff(
    points: dict[str, tuple[float, float]], radius: float, path: Path, target: tuple[float, float] | None = None
) -> None:
    """Clean against certified accuracy at ``radius``, one numbered point per model (``points``: name ->
    (clean, certified), both in [0, 1]; the legend names the numbers, which overlap less than names), and
    ``target`` (clean, certified) as a star: the trade-off a margin or a width moves a model along."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.4, 4.4))
    for number, (name, (clean, certified)) in enumerate(points.items(), start=1):
        colour = plt.get_cmap("tab10")((number - 1) % 10)
        ax.plot(100 * clean, 100 * certified, "o", color=colour, markersize=6, label=f"{number}: {name}")
        ax.annotate(str(number), (100 * clean, 100 * certified), xytext=(4, 3), textcoords="offset points", fontsize=8)
    if target is not None:
        ax.plot(100 * target[0], 100 * target[1], "*", color="black", markersize=12, label="target")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"certified accuracy at l2 radius {radius:g} (%)")
    ax.set_title("certified against clean accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
