"""Reports over a folder of runs: a Markdown table and PNG plots.

Each run is selected at its epoch of best validation accuracy (the last evaluation when it has no
validation set); the table gives the test accuracy there, and the robust and certified accuracies of
``robustness.json``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import regularizers
from .config import (
    SEED_FIELDS,
    Config,
    format_value,
    hyperparameter_text,
    hyperparameters,
    identity,
    method_label,
    preset_config,
    setting_key,
    short_hash,
)
from .rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    ROBUSTNESS,
    MetricsRow,
    Robustness,
    RunFolderError,
    atomic_write_text,
    check_writable,
    read_config,
    read_metrics,
    read_robustness,
    trained_to_end,
)

Warn = Callable[[str], None]


@dataclass
class RunSummary:
    path: Path
    config: Config
    metrics: list[MetricsRow]
    robustness: Robustness | None
    name: str = ""  # the folder relative to the report's root

    @property
    def method(self) -> str:
        return method_label(self.config)

    @property
    def finished(self) -> bool:
        return trained_to_end(self.config, self.metrics)

    @property
    def best(self) -> MetricsRow:
        """The evaluation of best validation accuracy (ties: the earliest), or the last one."""
        with_val = [m for m in self.metrics if m.val_acc is not None]
        if not with_val:
            return self.metrics[-1]
        return max(with_val, key=lambda m: (m.val_acc, -m.epoch))


def _set_aside_or_hidden(path: Path, root: Path) -> bool:
    """A folder that ``--fresh`` set aside (``name.old-<time>``) or a hidden one (``.submitit``)."""
    return any(part.startswith(".") or ".old-" in part for part in path.relative_to(root).parts)


def collect_runs(root: str | Path, warn: Warn = lambda _: None) -> list[RunSummary]:
    """Every run folder under ``root`` (any depth) that has logged at least one evaluation; folders set
    aside by ``--fresh`` and hidden ones are ignored, damaged ones skipped with a one-line ``warn``."""
    root = Path(root)
    runs = []
    for config_path in sorted(root.rglob(CONFIG)):
        run_dir = config_path.parent
        if _set_aside_or_hidden(run_dir, root):
            continue
        try:
            metrics = read_metrics(run_dir)
            if not metrics:
                if (run_dir / CHECKPOINT).is_file():
                    missing = f"it has a {CHECKPOINT} but no metrics rows ({METRICS} is missing or empty)"
                    warn(f"kernel-reg report: skipping {run_dir}: {missing}; `kernel-reg train` rewrites them")
                continue
            config = read_config(run_dir)
            name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
            robustness = read_robustness(run_dir)
            if robustness is not None and robustness.trained_to not in (None, metrics[-1].epoch):
                warn(f"kernel-reg report: {run_dir}: {ROBUSTNESS} evaluated the run trained to epoch "
                     f"{robustness.trained_to}, it has been trained since (epoch {metrics[-1].epoch}): its "
                     "robustness is left out; evaluate it again")  # fmt: skip
                robustness = None
            runs.append(RunSummary(run_dir, config, metrics, robustness, name))
        except RunFolderError as error:
            warn(f"kernel-reg report: skipping {run_dir}: {error}")
    return runs


_REGULARIZATION = ("regs", "wd")


def _context(config: Config) -> dict[str, object]:
    """What a run shares with the runs it is compared with: its setting without the regularization."""
    return {k: v for k, v in identity(config, SEED_FIELDS + _REGULARIZATION).items() if "." not in k}


@dataclass
class Study:
    """The runs of one experiment under one setting of everything but the regularization: they are
    compared in one table. ``differs``: the context's values that differ from the experiment's preset."""

    experiment: str
    differs: dict[str, object]
    runs: list[RunSummary]

    @property
    def title(self) -> str:
        changed = ", ".join(f"{k}={format_value(v)}" for k, v in self.differs.items())
        return f"{self.experiment} ({changed})" if changed else self.experiment

    @property
    def slug(self) -> str:
        return self.experiment + (
            "_" + short_hash(json.dumps(self.differs, sort_keys=True, default=str)) if self.differs else ""
        )


def studies(runs: list[RunSummary]) -> list[Study]:
    """The runs grouped by experiment and context: runs of different experiments, training-set sizes,
    schedules, widths, ... are never in one table."""
    grouped: dict[tuple[str, str], list[RunSummary]] = defaultdict(list)
    for run in runs:
        grouped[(run.config.experiment, json.dumps(_context(run.config), sort_keys=True, default=str))].append(run)
    result = []
    for (experiment, _), members in sorted(grouped.items()):
        preset = _context(preset_config(experiment))
        context = _context(members[0].config)
        result.append(Study(experiment, {k: v for k, v in context.items() if preset.get(k) != v}, members))
    return result


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_table(runs: list[RunSummary]) -> str:
    """One row per run: run folder, method, hyperparameters, best val, test at best val, robust and
    certified accuracies, the 2x-budget drop and the masking checks."""
    evaluated = [r.robustness for r in runs if r.robustness is not None]
    l2_keys = sorted({k for r in evaluated for k in r.l2}, key=float)
    linf_keys = sorted({k for r in evaluated for k in r.linf}, key=float)
    cert_keys = sorted({k for r in evaluated for k in (r.certified_l2 or {})}, key=float)
    evaluations = list(dict.fromkeys(_evaluation_text(r) for r in evaluated))
    header = ["run", "method", "hyperparameters", "n_train", "epoch", "val acc", "test acc", "eval", "clean"]
    header += [f"PGD-l2 {k}" for k in l2_keys] + [f"PGD-linf {float(k) * 255:.3g}/255" for k in linf_keys]
    header += [f"certified l2 {k}" for k in cert_keys] + ["2x budget", "masking checks"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in sorted(runs, key=lambda r: (r.method, sorted(map(str, hyperparameters(r.config).items())), r.name)):
        best = run.best
        params = hyperparameter_text(run.config) or "-"
        rob = run.robustness
        method = run.method if run.finished else f"{run.method} (unfinished: epoch {run.metrics[-1].epoch})"
        row = [run.name, method, params, str(run.config.n_train or "all"), str(best.epoch)]
        row += [_percent(best.val_acc), _percent(best.test_acc)]
        row += [
            f"[{evaluations.index(_evaluation_text(rob)) + 1}]" if rob else "-",
            _percent(rob.clean if rob else None),
        ]
        row += [_percent(rob.l2.get(k) if rob else None) for k in l2_keys]
        row += [_percent(rob.linf.get(k) if rob else None) for k in linf_keys]
        row += [_percent((rob.certified_l2 or {}).get(k) if rob else None) for k in cert_keys]
        row.append(_budget_change(rob) if rob else "-")
        checks = "-" if rob is None or rob.masking_checks is None else "ok"
        row.append(("FIRED: " + "; ".join(rob.suspicious)) if rob and rob.suspicious else checks)
        lines.append("| " + " | ".join(row) + " |")
    footer = [
        "",
        "Accuracies in %. epoch: of best validation accuracy; test acc: there, on the whole test set; clean, "
        "PGD and certified: `kernel-reg evaluate` of the weights it names (robustness.json), on its test subset; "
        "eval: which evaluation, below. "
        "2x budget: the largest drop of robust accuracy (points) when the attack's steps and restarts are "
        "doubled, over the radii checked.",
    ]
    footer += [f"- [{i}] {text}" for i, text in enumerate(evaluations, start=1)]
    return "\n".join(lines + footer) + "\n"


def _evaluation_text(robustness: Robustness) -> str:
    """What a run's robust accuracies mean: the test images and the attacks (the table's "eval" notes)."""
    attacks = "; ".join(f"{norm}: {text}" for norm, text in robustness.attacks.items())
    return f"{robustness.n} test images, {robustness.weights or 'best'} weights of epoch {robustness.epoch}; {attacks}"


def _budget_change(robustness: Robustness) -> str:
    """max over checked radii of (robust accuracy - accuracy under twice the budget), in points."""
    by_norm = {"l2": robustness.l2, "linf": robustness.linf}
    drops = [
        100 * (by_norm[norm][key] - doubled)
        for norm, by_key in robustness.doubled.items()
        for key, doubled in by_key.items()
    ]
    return f"{max(drops):.1f} ({len(drops)} radii)" if drops else "-"


@dataclass
class Selection:
    """The runs of a study by setting (seeds pooled: whole configurations equal but for seed fields; a
    configuration found twice counted once), and per method the setting of best mean validation accuracy."""

    settings: dict[str, list[RunSummary]]  # setting_key -> runs (its seeds)
    chosen: dict[str, str]  # method -> the selected setting_key
    duplicates: list[str]

    def of(self, method: str) -> list[RunSummary]:
        return self.settings[self.chosen[method]]

    def family(self, method: str) -> list[list[RunSummary]]:
        """The settings tried for ``method``, each a list of seeds, by hyperparameters."""
        members = [runs for runs in self.settings.values() if runs[0].method == method]
        return sorted(members, key=lambda runs: sorted(map(str, hyperparameters(runs[0].config).items())))


def select(runs: list[RunSummary]) -> Selection:
    """Pool the finished runs with a validation accuracy into settings, and select per method (as the
    paper selected the hyperparameters)."""
    settings: dict[str, list[RunSummary]] = defaultdict(list)
    duplicates: list[str] = []
    for run in sorted(runs, key=lambda r: r.name):
        if run.finished and run.best.val_acc is not None:
            same = settings[setting_key(run.config)]
            twin = next((r for r in same if identity(r.config) == identity(run.config)), None)
            if twin is None:
                same.append(run)
            else:  # the same configuration, seeds included: one sample, not two
                duplicates.append(f"{run.name} repeats {twin.name} (the same configuration, seeds included)")
    chosen: dict[str, str] = {}
    for key, members in settings.items():
        method = members[0].method
        if method not in chosen or _mean_val(members) > _mean_val(settings[chosen[method]]):
            chosen[method] = key
    return Selection(dict(settings), chosen, duplicates)


def selection_table(runs: list[RunSummary]) -> str:
    """Per method, the hyperparameters of best mean validation accuracy over seeds (as the paper
    selected them), and the test accuracy there: mean +- std over the seeds, with the runs pooled. Runs are
    pooled as seeds only when their whole configurations differ in seed fields alone. Finished runs only."""
    selection = select(runs)
    if not selection.chosen:
        return ""
    lines = [
        "| method | selected hyperparameters | settings tried | seeds | val acc | test acc (mean +- std) "
        "| runs pooled |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in sorted(selection.chosen):
        members = selection.of(method)
        params = hyperparameter_text(members[0].config) or "-"
        tests = [100 * r.best.test_acc for r in members]
        spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
        test = f"{statistics.mean(tests):.1f} +- {spread:.1f}"
        pooled = ", ".join(sorted(r.name for r in members))
        tried = len(selection.family(method))
        lines.append(
            f"| {method} | {params} | {tried} | {len(members)} | {100 * _mean_val(members):.1f} | {test} | {pooled} |"
        )
    if selection.duplicates:
        lines += ["", "Counted once: " + "; ".join(selection.duplicates) + "."]
    return "\n".join(lines) + "\n"


def _seed(run: RunSummary) -> tuple[int, int]:
    return run.config.shuf_seed, run.config.seed


MIN_PAIRED = 3  # paired seeds below which no gain or loss is called


def paired_table(runs: list[RunSummary]) -> str:
    """Per method at its selected setting, the paired difference of test accuracy to the unregularized
    baseline on the same training subsets: mean +- standard error over the seeds, and a verdict that calls
    a gain or a loss only when the mean difference exceeds two standard errors, on at least ``MIN_PAIRED``
    seeds. '' without a baseline."""
    selection = select(runs)
    if "none" not in selection.chosen:
        return ""
    baseline = {_seed(r): r.best.test_acc for r in selection.of("none")}
    lines = [
        "| method | selected hyperparameters | paired seeds | test acc - baseline (points, mean +- s.e.) | verdict |",
        "|---|---|---|---|---|",
    ]
    for method in sorted(m for m in selection.chosen if m != "none"):
        members = selection.of(method)
        differences = [100 * (r.best.test_acc - baseline[_seed(r)]) for r in members if _seed(r) in baseline]
        params = hyperparameter_text(members[0].config) or "-"
        if len(differences) < 2:
            lines.append(f"| {method} | {params} | {len(differences)} | - | needs paired seeds |")
            continue
        mean = statistics.mean(differences)
        error = statistics.stdev(differences) / math.sqrt(len(differences))
        verdict = "gain" if mean > 2 * error else "loss" if mean < -2 * error else "no difference shown"
        if len(differences) < MIN_PAIRED:  # two differences estimate their spread too poorly to judge
            verdict = f"(needs {MIN_PAIRED} paired seeds)"
        lines.append(f"| {method} | {params} | {len(differences)} | {mean:+.2f} +- {error:.2f} | {verdict} |")
    return "\n".join(lines) + "\n"


def _mean_val(runs: list[RunSummary]) -> float:
    """Mean best validation accuracy of runs that all have one."""
    return statistics.mean(r.best.val_acc or 0.0 for r in runs)


# Methods in a fixed order, so that a method has the same colour in every figure of every report: the
# ten main ones take tab20's dark shades, the others its light ones.
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
    """(epochs, mean over the seeds of ``field`` there), on the epochs every seed evaluated."""
    epochs = sorted(set.intersection(*({m.epoch for m in r.metrics} for r in runs)))
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


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def write_report(
    root: str | Path, out_dir: str | Path | None = None, warn: Warn = lambda _: None
) -> tuple[str, list[Path]]:
    """The Markdown report of the runs under ``root``, one section per study (experiment and setting),
    written with each study's plots to ``out_dir`` (default root); returns its text and the files."""
    import matplotlib

    matplotlib.use("Agg")
    runs = collect_runs(root, warn)
    if not runs:
        raise FileNotFoundError(f"no run with logged evaluations under {root}")
    out = Path(out_dir or root)
    check_writable(out, "the report is written there; choose another --out")
    groups = studies(runs)
    sections, written = [], [out / "report.md"]
    for study in groups:
        suffix = "" if len(groups) == 1 else f"_{study.slug}"
        files = [
            f
            for f, plot in ((out / f"learning_curves{suffix}.png", plot_learning_curves),
                            (out / f"rkhs_bracket{suffix}.png", plot_rkhs_bracket))
            if plot(study.runs, f)
        ]  # fmt: skip
        for norm in ("l2", "linf"):
            if plot_tradeoff(study.runs, out / f"tradeoff_{norm}{suffix}.png", norm):
                files.append(out / f"tradeoff_{norm}{suffix}.png")
        written += files
        text = f"## {study.title}\n\n"
        if study.differs:
            text += "Differs from the preset: " + ", ".join(f"{k}={format_value(v)}" for k, v in study.differs.items())
            text += ".\n\n"
        selection = selection_table(study.runs)
        if selection:
            text += "### Selected by validation accuracy\n\n" + selection + "\n"
        paired = paired_table(study.runs)
        if paired:
            text += "### Paired with the unregularized baseline (same training subsets)\n\n" + paired + "\n"
        text += "### All runs\n\n" + markdown_table(study.runs)
        text += "\nPlots: " + ", ".join(f"[{f.name}]({f.name})" for f in files) + "\n"
        sections.append(text)
    table = "\n".join(sections)
    atomic_write_text(out / "report.md", table)
    return table, written
