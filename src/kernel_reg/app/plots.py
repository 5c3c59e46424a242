"""The report's figures: small multiples of learning curves, training losses and the RKHS-norm bracket per
method, and the trade-off between standard and adversarial accuracy (a method has one colour in every figure); the
certified-accuracy curves of Lipschitz networks."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import regularizers, suite
from .config import (
    SEED_FIELDS,
    Config,
    format_value,
    hyperparameter_text,
    hyperparameters,
    identity,
    short_hash,
)
from .rundir import (
    Robustness,
)
from .statistics import Paired, paired
from .studies import RunSummary, family, last_stage_loss_changes, pool_settings, select

# A method's place in tab20: ten hues for the base methods, and each "+project-sn" combination in the
# light shade of its base's hue, so that a method and its combination with the projection read as a pair.
COLOUR_INDEX = {
    "none": 0, "wd": 1, "project-sn": 2, "pgd-l2": 3, "loss-gradl2": 4, "adv-perturbation": 5,
    "gradient-penalty": 6, "vat": 7, "stability": 8, "gradtangent": 9,
    "pgd-linf": 10, "loss-gradl1": 11, "penalize-sn-pi": 12, "pgd-l2+project-sn": 13,
    "loss-gradl2+project-sn": 14, "adv-perturbation+project-sn": 15, "gradient-penalty+project-sn": 16,
    "penalize-sn-svd": 18,
}  # fmt: skip


def method_colour(method: str) -> Any:
    """The colour of a method: its ``COLOUR_INDEX`` (else a hash of its name) in tab20."""
    import matplotlib

    index = COLOUR_INDEX[method] if method in COLOUR_INDEX else int(short_hash(method), 16)
    index %= 20
    hue, shade = index % 10, index // 10
    if hue == 7:  # tab20's grey pair marks the baseline in the bracket figure: navy instead
        return ("#283593", "#7986cb")[shade]
    return matplotlib.colormaps["tab20"](2 * hue + shade)


def text_colour(colour: Any) -> tuple[float, float, float]:
    """``colour`` darkened enough to read as small text on white (tab20's light shades do not)."""
    import matplotlib.colors

    red, green, blue = matplotlib.colors.to_rgb(colour)
    return 0.6 * red, 0.6 * green, 0.6 * blue


def _strength(config: Config, short: bool = False) -> str:
    """The hyperparameters of a setting, as a label ('' without any); ``short``: its strengths alone."""
    if not short:
        return hyperparameter_text(config).replace(", ", " ")
    strengths = {p.name for r in config.regs for p in regularizers.REGISTRY[r.name].params if p.strength} | {"wd"}
    values = hyperparameters(config)
    return " ".join(f"{k}={format_value(v)}" for k, v in values.items() if k.rsplit(".", 1)[-1] in strengths)


def _per_epoch(runs: list[RunSummary], field: str) -> tuple[list[int], list[list[float]]]:
    """(epochs, the seeds' values of ``field`` at each), on the epochs where every seed has a value."""
    epochs = sorted(set.intersection(*({m.epoch for m in r.metrics if getattr(m, field) is not None} for r in runs)))
    return epochs, [[getattr(next(m for m in r.metrics if m.epoch == e), field) for r in runs] for e in epochs]


def _mean_curve(runs: list[RunSummary], field: str) -> tuple[list[int], list[float]]:
    """(epochs, mean over the seeds of ``field`` there), on the epochs where every seed has a value."""
    epochs, values = _per_epoch(runs, field)
    return epochs, [statistics.mean(v) for v in values]


PANEL_COLUMNS = 3  # small multiples a row: a figure that reads at a page's width


def _panels(count: int, ylabel: str, width: float = 3.3, height: float = 2.6) -> tuple[Any, list[Any]]:
    """A grid of ``count`` small panels sharing their y axis, ``PANEL_COLUMNS`` a row, ``ylabel`` on the first
    panel of each row and "epoch" under every panel: a figure that reads at a page's width (about 1000
    pixels), the width a report's or RESULTS.md's figure is shown at."""
    import matplotlib.pyplot as plt

    columns = min(PANEL_COLUMNS, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(width * columns, height * rows), squeeze=False, sharey=True, layout="constrained"
    )  # room for the figure's title, each panel's title and legend
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    for index, ax in enumerate(flat[:count]):
        ax.set_xlabel("epoch", fontsize=8)
        if index % columns == 0:
            ax.set_ylabel(ylabel, fontsize=8)
    return fig, flat[:count]


def _panel_title(method: str, detail: str) -> str:
    """'method (detail)', on two lines when one would run into the next panel's title."""
    if not detail:
        return method
    return f"{method}\n({detail})" if len(method) + len(detail) > 40 else f"{method} ({detail})"


def _row_major(handles: list[Any], names: list[str], columns: int) -> tuple[list[Any], list[str]]:
    """The legend entries reordered so that they read in order across its rows (matplotlib fills a
    legend column by column, the first columns taking the extra entries)."""
    order = [i for column in range(columns) for i in range(column, len(names), columns)]
    return [handles[i] for i in order], [names[i] for i in order]


def _seed_range(runs: list[RunSummary], field: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, lowest and highest value of ``field`` over the seeds there), where every seed has one."""
    epochs, values = _per_epoch(runs, field)
    return epochs, [min(v) for v in values], [max(v) for v in values]


def _zoomed_floor(curves: list[list[float]], share: float = 0.25) -> float:
    """The lower y limit (%) that shows every curve after its first ``share`` of evaluations: their lowest
    value there less 3 points, down to a multiple of 5; the early rise from chance falls below it."""
    late = [v for curve in curves for v in curve[max(1, int(share * len(curve))) :]]
    return max(0.0, 5 * math.floor((100 * min(late, default=0.0) - 3) / 5))


def plot_learning_curves(runs: list[RunSummary], path: Path) -> bool:
    """Small multiples, one panel per method: the test accuracy of each setting over epochs (mean over
    seeds; faint, the legend names what sets it apart, the title what the settings share, or the setting
    when it is the method's only one), the selected setting bold with its range over seeds shaded and its
    training accuracy dashed, the unregularized baseline's selected test accuracy in grey in every panel.
    The y axis starts where the selected settings' curves and the baseline have risen (``_zoomed_floor``),
    so that differences of a few points between them show; a weaker setting may run below it (the title
    says so). False when no run has finished."""
    selection = select(runs)
    if not selection.chosen:
        return False
    methods = sorted(selection.chosen, key=lambda m: (m != "none", m))
    families = [selection.family(method) for method in methods]
    baseline = _mean_curve(selection.of("none"), "test_acc") if "none" in selection.chosen else None
    fig, axes = _panels(len(methods), "accuracy (%)", height=3.3)  # room for each legend below its panel
    shown: list[list[float]] = [] if baseline is None else [baseline[1]]  # what the y axis must show
    others: list[list[float]] = []  # the settings not selected: shown where they fit
    for ax, method, tried in zip(axes, methods, families):
        colour = method_colour(method)
        shared, texts = setting_labels([members[0].config for members in tried])
        if baseline is not None and method != "none":
            ax.plot(baseline[0], [100 * v for v in baseline[1]], color="0.55", lw=1.0, label="_baseline")
        for members, text in zip(tried, texts):
            bold = members is selection.of(method)
            epochs, test = _mean_curve(members, "test_acc")
            (shown if bold else others).append(test)
            style = dict(lw=2.2, alpha=1.0) if bold else dict(lw=1.0, alpha=0.6)
            ax.plot(epochs, [100 * v for v in test], color=colour, label=text or "-", **style)
            if bold:
                if len(members) > 1:
                    epochs, low, high = _seed_range(members, "test_acc")
                    ax.fill_between(epochs, [100 * v for v in low], [100 * v for v in high], color=colour,
                                    alpha=0.2, linewidth=0)  # fmt: skip
                epochs, train = _mean_curve(members, "train_acc")
                shown.append(train)
                ax.plot(epochs, [100 * v for v in train], color=colour, lw=1.4, linestyle="--")
        if len(tried) > 1:  # the grey baseline's label starts with "_": left out of the legend
            _legend_below(ax, min(3, len(tried)), labelcolor=text_colour(colour))
        ax.set_title(_panel_title(method, shared if len(tried) > 1 else texts[0]), fontsize=9)
        ax.tick_params(labelsize=7.5)
        ax.grid(alpha=0.3)
    floor = _zoomed_floor(shown)
    axes[0].set_ylim(floor, 100.5)  # the panels share their y axis
    chosen = "bold: selected by validation" if any(len(f) > 1 for f in families) else "one setting per method"
    cut = "; settings that stay lower run below it" if _zoomed_floor(shown + others) < floor else ""
    fig.suptitle(
        f"test accuracy per setting (mean over seeds; y axis from {floor:g}%{cut})\n{chosen}, shaded: its "
        "range over seeds, dashed: its training accuracy; grey: the unregularized baseline",
        fontsize=9,
    )
    _save(fig, path)
    return True


def plot_training_loss(runs: list[RunSummary], path: Path) -> bool:
    """Has training stopped lowering the training loss? Small multiples, one panel per method: each setting's
    training loss over epochs (the cross-entropy of the clean training set at each evaluation, not the
    regularized objective; mean over seeds, log scale; shaded: its range over seeds), settings in a
    sequential colour by their hyperparameters. Grey: the last learning-rate stage; the legend gives each
    setting's change of the loss over it (``RunSummary.last_stage_loss_change``, the mean over seeds of each
    seed's change). Near 0%: the loss no longer falls (a run stuck at chance too); on a training set the
    network fits, the loss keeps falling towards 0 by a steady share. False when no run has finished."""
    settings, _ = pool_settings(runs)  # every finished run: a study without a validation split has no selection
    if not settings:
        return False
    methods = sorted({members[0].method for members in settings.values()}, key=lambda m: (m != "none", m))
    fig, axes = _panels(len(methods), "training loss (log scale)", height=3.3)
    for ax, method in zip(axes, methods):
        tried = family(settings, method)
        shared, texts = setting_labels([members[0].config for members in tried])
        for start, end in sorted({(r.last_stage, r.metrics[-1].epoch) for members in tried for r in members}):
            ax.axvspan(start, end, color="0.5", alpha=0.2, lw=0)  # one span, unless schedules differ
        for index, (members, text) in enumerate(zip(tried, texts)):
            colour = _sequential(index, len(tried))
            epochs, loss = _mean_curve(members, "train_loss")
            changes = last_stage_loss_changes(members)
            moved = "not measured" if changes is None else f"{statistics.mean(changes):+.1f}%"
            ax.plot(epochs, loss, color=colour, lw=1.6, linestyle=LINE_STYLES[index // 5 % len(LINE_STYLES)],
                    label=f"{text or method}: {moved}")  # fmt: skip
            if len(members) > 1:
                epochs, low, high = _seed_range(members, "train_loss")
                ax.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
        ax.set_yscale("log")
        _legend_below(ax, min(2, len(tried)))
        ax.set_title(_panel_title(method, shared if len(tried) > 1 else ""), fontsize=9)
        ax.tick_params(labelsize=7.5)
        ax.grid(alpha=0.3)
    _log_ticks(axes)
    fig.suptitle(
        "training loss per setting (cross-entropy of the clean training set; mean over seeds, shaded: their range)\n"
        "grey: the last learning-rate stage; legend: the loss's change over it (near 0%: no longer falling)",
        fontsize=9,
    )
    _save(fig, path)
    return True


LINE_STYLES = ("-", "--", ":")  # the first five settings of a panel solid, the next five dashed, ...
LEGEND_DROP = 0.42  # inches from a panel's bottom edge down to its legend: under its tick labels and x label


def _sequential(index: int, count: int) -> Any:
    """The colour of the ``index``-th of ``count`` settings of a panel: viridis, dark to light, five shades
    at most (settings beyond five repeat them with another line style)."""
    import matplotlib

    shades = min(count, 5)
    return matplotlib.colormaps["viridis"](0.85 * (index % shades) / max(1, shades - 1))


def _legend_below(ax: Any, columns: int, labelcolor: Any = None) -> None:
    """The panel's legend under its x label, entries read across ``columns`` to a row, at a fixed drop in
    inches: a drop in axes fractions shrinks with the panel, and a tall legend would then cover the label."""
    import matplotlib.transforms

    handles, names = ax.get_legend_handles_labels()
    handles, names = _row_major(handles, names, columns)
    drop = matplotlib.transforms.ScaledTranslation(0, -LEGEND_DROP, ax.figure.dpi_scale_trans)
    ax.legend(handles, names, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0),
              bbox_transform=ax.transAxes + drop, ncol=columns, frameon=False, handlelength=1.5,
              columnspacing=1.0, labelcolor=labelcolor)  # fmt: skip


def _log_ticks(axes: list[Any]) -> None:
    """Tick labels for log-scale panels that share their y axis: 1, 2 and 5 per decade as plain numbers
    while the curves span at most 3 decades above 0.001; else one per decade as powers of 10 (labels at
    1-2-5 would run into each other, and plain numbers would mix 0.0001 with 5e-05)."""
    import matplotlib.ticker

    values = [v for ax in axes for line in ax.get_lines() for v in line.get_ydata() if 0 < v < math.inf]
    if not values:
        return
    low, high = min(values), max(values)
    axis = axes[0].yaxis  # shared by every panel
    if low >= 1e-3 and math.log10(high / low) <= 3:
        axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    else:
        axis.set_major_locator(matplotlib.ticker.LogLocator(numticks=12))
        axis.set_major_formatter(matplotlib.ticker.LogFormatterSciNotation())
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot_rkhs_bracket(runs: list[RunSummary], path: Path) -> bool:
    """Small multiples, one panel per method at its selected setting (mean over seeds): the lower bounds of
    the RKHS norm (sup ||grad f||: solid, ||f||_delta / eps: dashed) and the spectral upper bound (dotted),
    with the unregularized baseline's in grey. False when no run has finished."""
    selection = select(runs)
    if not selection.chosen:
        return False
    methods = sorted(selection.chosen, key=lambda m: (m != "none", m))
    fig, axes = _panels(len(methods), "bound on the RKHS norm (log scale)")
    series = (("rkhs_lower_grad", "-"), ("rkhs_lower_delta", "--"), ("rkhs_upper_spectral", ":"))
    for ax, method in zip(axes, methods):
        for members, colour in ((selection.of("none"), "0.6"),) if "none" in selection.chosen else ():
            for field, style in series:
                ax.plot(*_mean_curve(members, field), color=colour, linestyle=style, lw=1.0)
        colour = method_colour(method)
        for field, style in series:
            ax.plot(*_mean_curve(selection.of(method), field), color=colour, linestyle=style, lw=1.8)
        ax.set_yscale("log")
        ax.set_title(_panel_title(method, _strength(selection.of(method)[0].config)), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("RKHS-norm bracket at the selected setting: lower bounds (solid: sup ||grad f||, dashed: "
                 "||f||_delta / eps), spectral upper bound (dotted); grey: no regularization", fontsize=9)  # fmt: skip
    _save(fig, path)
    return True


def setting_labels(configs: list[Config]) -> tuple[str, list[str]]:
    """How to tell the settings of one method apart: (what they share, e.g. 'epsilon=1', or ''; for each
    setting, the hyperparameters in which it differs from another, e.g. 'tau=1 kappa=0', naming a default
    value only where the label would otherwise be empty or another's, e.g. 'method=exact'). A single
    setting is labelled with its strengths."""
    values = [{k: format_value(v) for k, v in hyperparameters(c).items()} for c in configs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    varying = [k for k in keys if len({v.get(k) for v in values}) > 1]
    if not varying:
        return "", [_strength(c, short=True) for c in configs]
    shared = " ".join(f"{k}={values[0][k]}" for k in keys if k not in varying)
    texts = [" ".join(f"{k}={v[k]}" for k in varying if k in v) for v in values]
    include = {(r.name, p.name) for c in configs for r in c.regs for p in regularizers.REGISTRY[r.name].params
               if p.name in varying or f"{r.name}.{p.name}" in varying}  # fmt: skip
    for i, config in enumerate(configs):
        if not texts[i] or texts.count(texts[i]) > 1:
            full = {k: format_value(v) for k, v in hyperparameters(config, include).items()}
            texts[i] = " ".join(f"{k}={full[k]}" for k in varying if k in full)
    return shared, texts


Box = tuple[float, float, float, float]  # (left, bottom, right, top), in pixels
LABEL_LINES = 4  # how many lines above or below its point a label may move to find room


def _overlap(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


Segment = tuple[tuple[float, float], tuple[float, float]]  # a drawn line's piece, its two ends in pixels


def _inside_length(box: Box, segment: Segment) -> float:
    """The length of the part of ``segment`` inside ``box`` (Liang-Barsky clipping: the segment is
    a + t (b - a), t in [0, 1], and each side of the box bounds t from one side)."""
    (x0, y0), (x1, y1) = segment
    if not all(map(math.isfinite, (x0, y0, x1, y1))):
        return 0.0  # a point the axes cannot place (NaN, or off a log scale) is not drawn
    dx, dy = x1 - x0, y1 - y0
    low, high = 0.0, 1.0
    for step, room in ((-dx, x0 - box[0]), (dx, box[2] - x0), (-dy, y0 - box[1]), (dy, box[3] - y0)):
        if step == 0:
            if room < 0:
                return 0.0  # parallel to this side and outside it
        elif step < 0:
            low = max(low, room / step)
        else:
            high = min(high, room / step)
    return max(high - low, 0.0) * math.hypot(dx, dy)


def label_boxes(
    anchors: list[tuple[float, float]],
    sizes: list[tuple[float, float]],
    frame: Box,
    gap: float,
    passes: int = 6,
    segments: Sequence[Segment] = (),
) -> list[Box]:
    """Where to write each point's label: of the boxes at ``gap`` from its anchor (right of it, left of it or
    centred, or half a label further right or left; above or below it, by up to ``LABEL_LINES`` - 1 more
    lines), the nearest that stays inside ``frame`` and covers least the other labels, the points and the
    drawn ``segments`` (a line counts as a band ``gap`` wide; all in pixels): placed in order, then each moved
    again, given all the others, until none moves (at most ``passes`` rounds), since a label placed early
    cannot see the ones after it."""
    points = [(x - gap, y - gap, x + gap, y + gap) for x, y in anchors]
    options: list[list[Box]] = []
    for (x, y), (width, height) in zip(anchors, sizes):
        lefts = (x + gap, x - gap - width, x - width / 2, x + gap + width / 2, x - gap - 1.5 * width)
        bottoms = [b for k in range(LABEL_LINES) for b in (y + gap + k * height, y - gap - (k + 1) * height)]
        options.append([(left, bottom, left + width, bottom + height) for bottom in bottoms for left in lefts])
    chosen: list[Box | None] = [None] * len(anchors)
    for _ in range(passes):
        moved = False
        for i, candidates in enumerate(options):
            others = [box for j, box in enumerate(chosen) if j != i and box is not None] + points
            width, height = sizes[i]
            cost = [  # areas in whole pixels: rounding noise must not outrank nearness
                (
                    round(width * height - _overlap(box, frame)),
                    round(sum(_overlap(box, o) for o in others) + gap * sum(_inside_length(box, s) for s in segments)),
                    rank,
                )
                for rank, box in enumerate(candidates)
            ]
            best = candidates[min(cost)[2]]
            moved |= best != chosen[i]
            chosen[i] = best
        if not moved:
            break
    return [box for box in chosen if box is not None]


def _write_labels(
    ax: Any,
    labels: list[tuple[float, float, str, Any]],
    fontsize: float = 7.5,
    lines: Sequence[Sequence[tuple[float, float]]] = (),
) -> None:
    """Write each (x, y, text, colour) label next to its point without covering another or, where it can,
    the drawn ``lines`` (each a sequence of (x, y) in data coordinates; ``label_boxes``). Call it once the
    figure's layout is final: it places the labels in pixels."""
    scale = ax.figure.dpi / 72  # pixels per point
    ax.get_xlim(), ax.get_ylim()  # settles pending autoscaling: transData is stale until then
    anchors = [tuple(ax.transData.transform((x, y))) for x, y, _, _ in labels]
    pixels = [[tuple(ax.transData.transform(point)) for point in line] for line in lines]
    segments = [(a, b) for line in pixels for a, b in zip(line, line[1:])]
    renderer = ax.figure.canvas.get_renderer()

    def size(text: str) -> tuple[float, float]:  # as drawn, plus room that keeps neighbours apart
        probe = ax.text(0, 0, text, fontsize=fontsize)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        return extent.width + 2.5 * scale, extent.height + 1.0 * scale

    sizes = [size(text) for _, _, text, _ in labels]
    frame = tuple(ax.get_window_extent().extents)
    gap = 3.0 * scale
    boxes = label_boxes(anchors, sizes, frame, gap, segments=segments)
    for (x, y, text, colour), (px, py), box in zip(labels, anchors, boxes):
        offset = ((box[0] - px) / scale, (box[1] - py) / scale)
        # pushed a line away, or half a label sideways: a leader line to its point
        far = min(abs(py - box[1]), abs(py - box[3])) > 2 * gap or not box[0] - 2 * gap <= px <= box[2] + 2 * gap
        leader = dict(arrowstyle="-", lw=0.5, color=text_colour(colour), shrinkA=0, shrinkB=3) if far else None
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha="left", va="bottom",
                    fontsize=fontsize, color=text_colour(colour), arrowprops=leader)  # fmt: skip


FrontPoint = tuple[float, float, float, float, str]  # (clean %, its half-interval, robust %, its half-interval, label)


def front_points(
    members: list[tuple[RunSummary, Robustness]], texts: list[str], field: str, key: str
) -> list[FrontPoint]:
    """One point per setting of a method, sorted by clean accuracy: the mean over its seeds of the clean and
    the ``field`` accuracy at radius ``key`` (%), each with the half-width of its 95% t-interval over the seeds
    (n - 1 degrees of freedom; 0 for one seed), and the setting's label. Runs of one setting are those that
    differ in their seeds alone."""
    groups: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for (run, rob), text in zip(members, texts):
        value = (getattr(rob, field) or {}).get(key)
        if value is not None:
            setting = json.dumps(identity(run.config, SEED_FIELDS), sort_keys=True, default=str)
            groups[setting].append((100 * rob.clean, 100 * value, text))
    points = []
    for group in groups.values():
        clean, robust = [g[0] for g in group], [g[1] for g in group]
        if len(group) == 1:
            points.append((clean[0], 0.0, robust[0], 0.0, group[0][2]))
            continue
        x, y = paired(clean), paired(robust)  # a t-interval of the mean (the p-value is not used)
        points.append((x.mean, x.high - x.mean, y.mean, y.high - y.mean, group[0][2]))
    return sorted(points)


def plot_tradeoff(runs: list[RunSummary], path: Path, norm: str = "l2") -> bool:
    """Standard vs adversarial test accuracy, one wide panel a row per eps_test, one curve per method across its
    settings (dashed for a combination with the projection), each point the mean over the setting's seeds with
    its 95% t-intervals (``front_points``), labelled with what sets it apart (the hyperparameters the method's
    settings share are in the legend), as the paper's figure; for l2 the certified accuracies too (dotted,
    hollow triangles) unless they are zero everywhere. False when no run has been evaluated."""
    import matplotlib.pyplot as plt

    evaluated = [(r, r.robustness) for r in runs if r.robustness is not None and getattr(r.robustness, norm)]
    if not evaluated:
        return False
    keys = sorted({k for _, rob in evaluated for k in getattr(rob, norm)}, key=float)
    by_method: dict[str, list[tuple[RunSummary, Robustness]]] = defaultdict(list)
    for run, rob in evaluated:
        by_method[run.method].append((run, rob))
    certified_anywhere = norm == "l2" and any(any((rob.certified_l2 or {}).values()) for _, rob in evaluated)
    # one wide panel a row: the labels of a crowded front need the width
    fig, axes = plt.subplots(len(keys), 1, figsize=(8.4, 3.5 * len(keys)), squeeze=False)
    labels: dict[Any, list[tuple[float, float, str, Any]]] = defaultdict(list)
    lines: dict[Any, list[list[tuple[float, float]]]] = defaultdict(list)  # what the labels should not cross
    seeds = False  # some setting has several seeds: its point is a mean with intervals
    attacks = suite.shared_title(norm, (rob.settings for _, rob in evaluated))
    for ax, key in zip(axes[:, 0], keys):
        for method, members in sorted(by_method.items()):
            colour = method_colour(method)
            shared, texts = setting_labels([run.config for run, _ in members])
            name = f"{method} ({shared})" if shared else method
            line = "--" if "+" in method else "-"
            curves = [(norm, f"{line}o", colour)] + ([("certified_l2", ":^", "none")] if certified_anywhere else [])
            for field, style, fill in curves:
                points = front_points(members, texts, field, key)
                if not points:
                    continue
                xs, x_err, ys, y_err, _ = zip(*points)
                legend = name if field == norm else f"{name}, certified"
                ax.plot(xs, ys, style, color=colour, label=legend, mfc=fill, ms=5)
                lines[ax].append(list(zip(xs, ys)))
                if any(x_err) or any(y_err):
                    ax.errorbar(xs, ys, xerr=x_err, yerr=y_err, fmt="none", ecolor=colour, elinewidth=0.9, capsize=2)
                    seeds = True
                if field == norm:
                    labels[ax] += [(x, y, text, colour) for x, _, y, _, text in points if text]
        eps = float(key)
        title = f"{norm} eps_test = {eps * 255:.3g}/255" if norm == "linf" else f"{norm} eps_test = {eps:g}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("standard accuracy (%)", fontsize=9)
        ax.set_ylabel(f"robust accuracy (%), {attacks}", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    if seeds:
        fig.suptitle("each point: the mean over its seeds, bars: 95% t-intervals (n - 1 degrees of freedom)",
                     fontsize=9)  # fmt: skip
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(names)), fontsize=8.5,
               frameon=False)  # fmt: skip
    for ax, requests in labels.items():
        _write_labels(ax, requests, lines=lines[ax])
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
    labels = []
    for number, (name, (clean, certified)) in enumerate(points.items(), start=1):
        colour = plt.get_cmap("tab20")((number - 1) % 20)  # 20 colours: none repeats below 21 models
        ax.plot(100 * clean, 100 * certified, "o", color=colour, markersize=6, label=f"{number}: {name}")
        labels.append((100 * clean, 100 * certified, str(number), colour))
    if target is not None:
        ax.plot(100 * target[0], 100 * target[1], "*", color="black", markersize=12, label="target")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"certified accuracy at l2 radius {radius:g} (%)")
    ax.set_title("certified against clean accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    _write_labels(ax, labels, fontsize=8)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    """``fig`` to ``path`` (written beside it, then renamed) as a PNG of 256 colours: a third of the bytes of
    matplotlib's own, for figures that are committed with their reports."""
    import matplotlib.pyplot as plt
    from PIL import Image  # matplotlib's own dependency

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    with Image.open(tmp) as image:
        palette = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)


# what a reader of the paper calls each method
READABLE = {
    "none": "no regularization", "wd": "weight decay", "project-sn": "projection (tau)",
    "adv-perturbation": "||f||_delta^2", "gradient-penalty": "||grad f||^2", "loss-gradl2": "grad-l2",
    "loss-gradl1": "grad-l1", "vat": "VAT", "stability": "||f||_tau^2", "gradtangent": "||D_tau f||^2",
    "pgd-l2": "PGD-l2", "pgd-linf": "PGD-linf",
}  # fmt: skip


def method_label_text(method: str) -> str:
    """'gradient-penalty+project-sn' -> '||grad f||^2 + projection'."""
    parts = method.split("+")
    names = [READABLE.get(p, p) for p in parts if p != "project-sn"]
    return " + ".join(names + (["projection"] if "project-sn" in parts and names else [])) or READABLE[method]


def plot_paired_gains(panels: dict[str, dict[str, Paired]], path: Path, reference: str = "baseline") -> bool:
    """One panel per study (e.g. '1000 examples'), side by side on a shared method axis: per method, the mean
    paired difference to the ``reference`` (points) as a dot with its 95% t-interval, filled when the
    Holm-adjusted verdict is a gain or a loss, open when there is no evidence; a zero line. False when no
    panel holds a comparison."""
    import matplotlib.pyplot as plt

    methods = sorted({m for tested in panels.values() for m in tested}, key=lambda m: (m in ("wd", "project-sn"), m))
    if not methods:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.8, 0.36 * len(methods) + 1.4),
                             sharex=True, sharey=True, squeeze=False)  # fmt: skip
    rows = {m: len(methods) - 1 - i for i, m in enumerate(methods)}
    for ax, (title, tested) in zip(axes[0], panels.items()):
        ax.axvline(0.0, color="0.3", linewidth=0.8)
        for method, c in tested.items():
            colour = method_colour(method)
            filled = c.verdict() != "no evidence"
            ax.plot([c.low, c.high], [rows[method]] * 2, color=colour, linewidth=2)
            ax.plot([c.mean], [rows[method]], "o", markerfacecolor=colour if filled else "white",
                    markeredgecolor="0.1", markeredgewidth=1.0, markersize=7)  # fmt: skip
            p = c.p if c.p_holm is None else c.p_holm
            ax.annotate(f"n={c.n}, p={p:.1g}", (c.high, rows[method]), xytext=(4, -3), textcoords="offset points",
                        fontsize=7)  # fmt: skip
        n_max = max((c.n for c in tested.values()), default=0)
        ax.set_title(f"{title} (up to {n_max} paired subsets)", fontsize=10)
        ax.set_xlabel(f"test accuracy - {reference} (points), 95% t-interval", fontsize=9)
        ax.grid(axis="x", color="0.9")
        ax.margins(x=0.22)  # room for the n= and p= labels
    axes[0][0].set_yticks(list(rows.values()), [method_label_text(m) for m in rows], fontsize=8)
    fig.suptitle("Filled dot: Holm-adjusted p < 0.05 (gain or loss); open dot: no evidence. p: Holm-adjusted",
                 fontsize=8, y=0.995)  # fmt: skip
    fig.tight_layout()
    _save(fig, path)
    return True
