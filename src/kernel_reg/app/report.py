"""Reports over a folder of runs: a Markdown table and PNG plots.

Each run is selected at its epoch of best validation accuracy (the last evaluation when it has no
validation set); the table gives the test accuracy there, and the robust and certified accuracies of
``robustness.json``.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..deprecation import moved_names
from . import suite
from .config import (
    format_value,
    hyperparameter_text,
)
from .extras import require
from .plots import plot_learning_curves, plot_rkhs_bracket, plot_tradeoff, plot_training_loss
from .rundir import (
    Robustness,
    atomic_write_text,
    check_writable,
)
from .statistics import ALPHA, Paired, family
from .studies import RunSummary, Warn, _mean_val, bracket, collect_runs, seed_of, select, setting_order, studies

# moved in 0.2 (importable from here, with a DeprecationWarning, until 0.3)
__getattr__ = moved_names(
    __name__,
    {"Selection": "kernel_reg.app.studies", "Study": "kernel_reg.app.studies", "method_colour": "kernel_reg.app.plots"},
)


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
    header += [f"{suite.shared_title('l2', (r.settings for r in evaluated))} {k}" for k in l2_keys]
    header += [f"{suite.shared_title('linf', (r.settings for r in evaluated))} {float(k) * 255:.3g}/255"
               for k in linf_keys]  # fmt: skip
    header += [f"certified l2 {k}" for k in cert_keys] + ["2x budget", "masking checks", "train min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in sorted(runs, key=lambda r: (r.method, setting_order(r.config), r.name)):
        best = run.best
        params = hyperparameter_text(run.config) or "-"
        rob = run.robustness
        method = run.method
        if run.divergence is not None:
            method += f" (diverged: {run.divergence.split(';')[0]})"
        elif not run.finished:
            method += f" (unfinished: epoch {run.metrics[-1].epoch})"
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
        row.append(f"{run.training_seconds / 60:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    footer = [
        "",
        "Accuracies in %. epoch: of best validation accuracy; test acc: there, on the whole test set; clean, "
        "robust and certified: `kernel-reg evaluate` of the weights it names (robustness.json), on its test subset; "
        "eval: which evaluation, below. "
        "2x budget: the largest drop of robust accuracy (points) when the attack's steps and restarts are "
        "doubled, over the radii checked. train min: what training the run costs, from its own timing "
        "(metrics.jsonl; medians per epoch and per evaluation, so that a paused process does not count). "
        f"All {len(runs)} runs: {sum(r.training_seconds for r in runs) / 3600:.1f} hours of training.",
    ]
    footer += [f"- [{i}] {text}" for i, text in enumerate(evaluations, start=1)]
    return "\n".join(lines + footer) + "\n"


def _evaluation_text(robustness: Robustness) -> str:
    """What a run's robust accuracies mean: the test images and the attacks (the table's "eval" notes)."""
    attacks = "; ".join(f"{norm}: {text}" for norm, text in robustness.described().items())
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
    """Per method, the hyperparameters of best mean validation accuracy over the seeds that all its
    settings ran on (as the paper selected them; ``studies.select``), and the test accuracy there: mean +-
    std over the seeds, with the runs pooled. Runs are pooled as seeds only when their whole configurations
    differ in seed fields alone; "in its grid" says whether the selection is an interior point of the grid
    (``studies.bracket``: EDGE when it is not). Finished runs only."""
    selection = select(runs)
    if not selection.chosen:
        return ""
    lines = [
        "| method | selected hyperparameters | settings tried | in its grid | seeds | val acc "
        "| test acc (mean +- std) | runs pooled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    diverged = [r for r in runs if r.divergence is not None]
    for method in sorted(selection.chosen):
        members = selection.of(method)
        params = hyperparameter_text(members[0].config) or "-"
        tests = [100 * r.best.test_acc for r in members]
        # one seed has no spread: "74.9 (1 seed)", never a misleading "+- 0.0"
        spread = f" +- {statistics.stdev(tests):.1f}" if len(tests) > 1 else " (1 seed)"
        test = f"{statistics.mean(tests):.1f}{spread}"
        pooled = ", ".join(sorted(r.name for r in members))
        tried = len(selection.family(method))
        where = bracket(selection, method, diverged)
        val = 100 * _mean_val(members)
        lines.append(f"| {method} | {params} | {tried} | {where} | {len(members)} | {val:.1f} | {test} | {pooled} |")
    if selection.duplicates:
        lines += ["", "Counted once: " + "; ".join(selection.duplicates) + "."]
    return "\n".join(lines) + "\n"


def paired_row(label: str, params: str, comparison: Paired | None, n: int) -> str:
    """A table row: the mean paired difference with its 95% t-interval (n - 1 degrees of freedom), the
    Holm-adjusted p-value over the table's comparisons, the verdict by that p-value, and mean +- standard
    error (descriptive only)."""
    if comparison is None:
        return f"| {label} | {params} | {n} | - | - | needs 2 paired subsets | - |"
    c = comparison
    interval = f"{c.mean:+.2f} [{c.low:+.2f}, {c.high:+.2f}]"
    return f"| {label} | {params} | {c.n} | {interval} | {c.p_holm:.3g} | {c.verdict()} | {c.mean:+.2f} +- {c.se:.2f} |"


def paired_by_subset(
    members: list[RunSummary], reference: list[RunSummary], measure: Callable[[RunSummary], float]
) -> list[float]:
    """Per training subset, measure(member) - measure(the reference run with the same subset and
    initialisation seed), averaged over the seeds both ran on that subset: one difference per subset, in
    subset order. Two trainings on one subset are not independent draws of the data; counting them as two
    pairs would narrow the interval."""
    by_seed = {seed_of(r): r for r in reference}
    per_subset: dict[int, list[float]] = defaultdict(list)
    for run in members:
        if seed_of(run) in by_seed:
            per_subset[run.config.shuf_seed].append(measure(run) - measure(by_seed[seed_of(run)]))
    return [sum(points) / len(points) for _, points in sorted(per_subset.items())]


def paired_differences(members: list[RunSummary], reference: list[RunSummary]) -> list[float]:
    """Test accuracy (points) of the members - that of the reference, paired by training subset
    (``paired_by_subset``)."""
    return paired_by_subset(members, reference, lambda run: 100 * run.best.test_acc)


PROJECTED = "+project-sn"


Comparison = tuple[str, str, str, list[float]]  # (reference: "baseline" | "alone", method, hyperparameters, points)


def paired_comparisons(runs: list[RunSummary]) -> list[Comparison]:
    """Per method at its selected setting, its paired differences of test accuracy (points) to the
    unregularized baseline on the same training subsets; then, for each method combined with the projection
    ("X+project-sn"), to X alone, each at its own selected setting. [] without a baseline."""
    selection = select(runs)
    if "none" not in selection.chosen:
        return []
    rows: list[Comparison] = []
    for method in sorted(m for m in selection.chosen if m != "none"):
        members = selection.of(method)
        rows.append(("baseline", method, hyperparameter_text(members[0].config) or "-",
                     paired_differences(members, selection.of("none"))))  # fmt: skip
    combined = [m for m in selection.chosen if m.endswith(PROJECTED) and m[: -len(PROJECTED)] in selection.chosen]
    for method in sorted(combined):
        members = selection.of(method)
        rows.append(("alone", method, hyperparameter_text(members[0].config) or "-",
                     paired_differences(members, selection.of(method[: -len(PROJECTED)]))))  # fmt: skip
    return rows


def paired_table(runs: list[RunSummary]) -> str:
    """The ``paired_comparisons`` as Markdown tables, one family: the p-values are Holm-adjusted over every
    comparison of the table (``statistics.family``). '' without a baseline."""
    rows = paired_comparisons(runs)
    if not rows:
        return ""
    combined = [method for reference, method, _, _ in rows if reference == "alone"]
    tested = family({f"{section}:{method}": d for section, method, _, d in rows})
    lines = paired_header("method", "test acc - baseline")
    for section, method, params, differences in rows:
        if section == "alone" and method == min(combined):  # the second table starts
            lines += ["", "Adding the projection, each method at its own selected setting:", ""]
            lines += paired_header("method", "test acc - the method alone")
        lines.append(paired_row(method, params, tested.get(f"{section}:{method}"), len(differences)))
    return "\n".join(lines) + "\n" + verdict_note(len(tested))


def paired_header(first: str, difference: str) -> list[str]:
    """The header and rule of a table of ``paired_row`` rows."""
    return [f"| {first} | selected hyperparameters | paired subsets | {difference} (points): mean [95% t-interval] "
            "| p (Holm) | verdict | mean +- s.e. (descriptive) |", "|---|---|---|---|---|---|---|"]  # fmt: skip


def verdict_note(comparisons: int) -> str:
    """The rule behind the verdicts of a table of ``comparisons`` paired comparisons, one Holm family."""
    if comparisons == 0:
        return "\nNo comparison of this table has 2 paired subsets yet: no verdict.\n"
    return (f"\nVerdicts: Holm-adjusted p < {ALPHA:g} over the {comparisons} comparisons of this table "
            "(t-test on paired subsets, n - 1 degrees of freedom); 'no evidence' otherwise. Intervals are per "
            "comparison (not adjusted).\n")  # fmt: skip


# each study's figures: file name (before its study's suffix) and what draws it (False: nothing to draw)
FIGURES: tuple[tuple[str, Callable[[list[RunSummary], Path], bool]], ...] = (
    ("learning_curves", plot_learning_curves),
    ("training_loss", plot_training_loss),
    ("rkhs_bracket", plot_rkhs_bracket),
    *((f"tradeoff_{norm}", partial(plot_tradeoff, norm=norm)) for norm in ("l2", "linf")),
)
# a report's link to one of its figures beside it: [name](name), name = a figure's stem, its suffix, ".png"
FIGURE_LINK = re.compile(rf"\[((?:{'|'.join(stem for stem, _ in FIGURES)})(?:_[\w.-]+)?\.png)\]\(\1\)")


def linked_figures(report: Path) -> set[str]:
    """The file names of the figures that the report at ``report`` links to (none when it is absent)."""
    try:
        return set(FIGURE_LINK.findall(report.read_text(errors="replace")))
    except FileNotFoundError:
        return set()


def write_report(
    root: str | Path, out_dir: str | Path | None = None, warn: Warn = lambda _: None
) -> tuple[str, list[Path]]:
    """The Markdown report of the runs under ``root``, one section per study (experiment and setting),
    written with each study's plots to ``out_dir`` (default root); returns its text and the files."""
    matplotlib = require("matplotlib", "plots", "kernel-reg report (its figures)")

    matplotlib.use("Agg")
    skipped: list[str] = []

    def note(line: str) -> None:
        skipped.append(line)
        warn(line)

    runs = collect_runs(root, note)
    if not runs:
        raise FileNotFoundError(f"no run with logged evaluations under {root}")
    out = Path(out_dir or root)
    check_writable(out, "the report is written there; choose another --out")
    groups = studies(runs)
    earlier = linked_figures(out / "report.md")
    sections, written = [], [out / "report.md"]
    for study in groups:
        suffix = "" if len(groups) == 1 else f"_{study.slug}"
        files = []
        for stem, plot in FIGURES:
            path = out / f"{stem}{suffix}.png"
            if plot(study.runs, path):
                files.append(path)
        written += files
        text = f"## {study.title}\n\n"
        if study.differs:
            text += "Differs from the preset: " + ", ".join(f"{k}={format_value(v)}" for k, v in study.differs.items())
            text += ".\n\n"
        selection = selection_table(study.runs)
        if selection:
            text += (
                "### Selected by validation accuracy\n\nEach method's setting is the one of best mean "
                "validation accuracy over the training subsets that all its settings ran on; the test "
                "accuracy is then over all the subsets the selected setting ran on.\n\n" + selection + "\n"
            )
        paired = paired_table(study.runs)
        if paired:
            text += "### Paired with the unregularized baseline (same training subsets)\n\n" + paired + "\n"
        text += "### All runs\n\n" + markdown_table(study.runs)
        text += "\nPlots: " + ", ".join(f"[{f.name}]({f.name})" for f in files) + "\n"
        sections.append(text)
    table = "\n".join(sections)
    if skipped:  # a reader of the report must know that runs are missing from it, not only the terminal
        here = f"{Path(root)}/"  # paths relative to the root: no path of this machine in a published report
        table += "\n## Left out\n\n" + "".join(f"- {line.replace(here, '')}\n" for line in skipped)
    atomic_write_text(out / "report.md", table)
    # an earlier report's figure that this one does not draw (its runs changed, or its study was renamed when
    # the folder gained a second study) would sit beside this report, unlinked and out of date
    for name in earlier - {path.name for path in written}:
        (out / name).unlink(missing_ok=True)
    return table, written
