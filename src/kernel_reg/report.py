"""Reports over a folder of runs: a Markdown table and PNG plots.

Each run is selected at its epoch of best validation accuracy (the last evaluation when it has no
validation set); the table gives the test accuracy there, and the robust and certified accuracies of
``robustness.json``.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def selection_table(runs: list[RunSummary]) -> str:
    """Per method, the hyperparameters of best mean validation accuracy over seeds (as the paper
    selected them), and the test accuracy there: mean +- std over the seeds, with the runs pooled. Runs are
    pooled as seeds only when their whole configurations differ in seed fields alone. Finished runs only."""
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
    if not settings:
        return ""
    chosen: dict[str, list[RunSummary]] = {}
    tried: dict[str, int] = defaultdict(int)
    for members in settings.values():
        method = members[0].method
        tried[method] += 1
        if method not in chosen or _mean_val(members) > _mean_val(chosen[method]):
            chosen[method] = members
    lines = [
        "| method | selected hyperparameters | settings tried | seeds | val acc | test acc (mean +- std) "
        "| runs pooled |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, members in sorted(chosen.items()):
        params = hyperparameter_text(members[0].config) or "-"
        tests = [100 * r.best.test_acc for r in members]
        spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
        val = 100 * _mean_val(members)
        test = f"{statistics.mean(tests):.1f} +- {spread:.1f}"
        pooled = ", ".join(sorted(r.name for r in members))
        lines.append(f"| {method} | {params} | {tried[method]} | {len(members)} | {val:.1f} | {test} | {pooled} |")
    if duplicates:
        lines += ["", "Counted once: " + "; ".join(duplicates) + "."]
    return "\n".join(lines) + "\n"


def _mean_val(runs: list[RunSummary]) -> float:
    """Mean best validation accuracy of runs that all have one."""
    return statistics.mean(r.best.val_acc or 0.0 for r in runs)


def _label(run: RunSummary) -> str:
    params = hyperparameter_text(run.config)
    return f"{run.method} ({params})" if params else run.method


def plot_learning_curves(runs: list[RunSummary], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for run in runs:
        epochs = [m.epoch for m in run.metrics]
        line = axes[0].plot(epochs, [m.train_loss for m in run.metrics], label=_label(run))[0]
        axes[1].plot(epochs, [m.train_acc for m in run.metrics], color=line.get_color())
        axes[2].plot(epochs, [m.test_acc for m in run.metrics], color=line.get_color())
        if any(m.val_acc is not None for m in run.metrics):
            axes[2].plot(epochs, [m.val_acc for m in run.metrics], color=line.get_color(), linestyle=":")
    for ax, title in zip(axes, ("train loss", "train accuracy", "test (solid) and validation (dotted) accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    fig.legend(loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    _save(fig, path)


def plot_rkhs_bracket(runs: list[RunSummary], path: Path) -> None:
    """The lower bounds (sup gradient norm: solid, ||f||_delta / eps: dashed) and the spectral upper
    bound (dotted) of each run over epochs."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        epochs = [m.epoch for m in run.metrics]
        line = ax.plot(epochs, [m.rkhs_lower_grad for m in run.metrics], label=_label(run))[0]
        ax.plot(epochs, [m.rkhs_lower_delta for m in run.metrics], color=line.get_color(), linestyle="--")
        ax.plot(epochs, [m.rkhs_upper_spectral for m in run.metrics], color=line.get_color(), linestyle=":")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title("RKHS-norm bracket: lower bounds (solid: sup ||grad f||, dashed: ||f||_delta / eps), upper (dotted)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_tradeoff(runs: list[RunSummary], path: Path, norm: str = "l2") -> bool:
    """Standard vs adversarial test accuracy, one panel per eps_test, one curve per method across its
    hyperparameters (as the paper's figure); for l2, the certified accuracies dotted, hollow triangles.
    False when no run has been evaluated."""
    import matplotlib.pyplot as plt

    evaluated = [(r, r.robustness) for r in runs if r.robustness is not None and getattr(r.robustness, norm)]
    if not evaluated:
        return False
    keys = sorted({k for _, rob in evaluated for k in getattr(rob, norm)}, key=float)
    by_method: dict[str, list[Robustness]] = defaultdict(list)
    for run, rob in evaluated:
        by_method[run.method].append(rob)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for color, (method, members) in enumerate(sorted(by_method.items())):
            curves = [(norm, "-o", None)] + ([("certified_l2", ":^", "none")] if norm == "l2" else [])
            for field, style, fill in curves:
                pairs = [(rob.clean, (getattr(rob, field) or {}).get(key)) for rob in members]
                points = sorted(p for p in pairs if p[1] is not None)
                if points:
                    label = method if field == norm else f"{method}, certified"
                    ax.plot(*(100 * np.array(points)).T, style, color=f"C{color % 10}", label=label, mfc=fill)
        eps = float(key)
        ax.set_title(f"{norm} eps_test = {eps * 255:.3g}/255" if norm == "linf" else f"{norm} eps_test = {eps:g}")
        ax.set_xlabel("standard accuracy (%)")
        ax.set_ylabel("adversarial accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
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
        files = [out / f"learning_curves{suffix}.png", out / f"rkhs_bracket{suffix}.png"]
        plot_learning_curves(study.runs, files[0])
        plot_rkhs_bracket(study.runs, files[1])
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
        text += "### All runs\n\n" + markdown_table(study.runs)
        text += "\nPlots: " + ", ".join(f"[{f.name}]({f.name})" for f in files) + "\n"
        sections.append(text)
    table = "\n".join(sections)
    atomic_write_text(out / "report.md", table)
    return table, written
