"""Reports over a folder of runs: a Markdown table and PNG plots.

Each run is selected at its epoch of best validation accuracy (the last evaluation when it has no
validation set); the table gives the test accuracy there, and the robust and certified accuracies of
``robustness.json``.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config, hyperparameter_text, hyperparameters, method_label
from .rundir import CONFIG, ROBUSTNESS, atomic_write_text, read_config, read_metrics


@dataclass
class RunSummary:
    path: Path
    config: Config
    metrics: list[dict]
    robustness: dict | None

    @property
    def method(self) -> str:
        return method_label(self.config)

    @property
    def finished(self) -> bool:
        return self.metrics[-1]["epoch"] == self.config.num_epochs - 1

    @property
    def best(self) -> dict:
        """The evaluation of best validation accuracy (ties: the earliest), or the last one."""
        with_val = [m for m in self.metrics if m.get("val_acc") is not None]
        if not with_val:
            return self.metrics[-1]
        return max(with_val, key=lambda m: (m["val_acc"], -m["epoch"]))


def collect_runs(root: str | Path) -> list[RunSummary]:
    """Every run folder under ``root`` (any depth) that has logged at least one evaluation."""
    runs = []
    for config_path in sorted(Path(root).rglob(CONFIG)):
        run_dir = config_path.parent
        metrics = read_metrics(run_dir)
        if not metrics:
            continue
        robustness_path = run_dir / ROBUSTNESS
        robustness = json.loads(robustness_path.read_text()) if robustness_path.is_file() else None
        runs.append(RunSummary(run_dir, read_config(run_dir), metrics, robustness))
    return runs


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_table(runs: list[RunSummary]) -> str:
    """One row per run: method, hyperparameters, best val, test at best val, robust and certified accuracies."""
    l2_keys = sorted({k for r in runs if r.robustness for k in r.robustness["l2"]}, key=float)
    linf_keys = sorted({k for r in runs if r.robustness for k in r.robustness["linf"]}, key=float)
    cert_keys = sorted({k for r in runs if r.robustness for k in (r.robustness["certified_l2"] or {})}, key=float)
    header = ["method", "hyperparameters", "n_train", "epoch", "val acc", "test acc", "clean"]
    header += [f"PGD-l2 {k}" for k in l2_keys] + [f"PGD-linf {float(k) * 255:.3g}/255" for k in linf_keys]
    header += [f"certified l2 {k}" for k in cert_keys] + ["2x budget", "masking checks"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in sorted(runs, key=lambda r: (r.method, sorted(hyperparameters(r.config).items()), str(r.path))):
        best = run.best
        params = hyperparameter_text(run.config) or "-"
        rob = run.robustness or {}
        method = run.method if run.finished else f"{run.method} (unfinished: epoch {run.metrics[-1]['epoch']})"
        row = [method, params, str(run.config.n_train or "all"), str(best["epoch"])]
        row += [_percent(best.get("val_acc")), _percent(best["test_acc"]), _percent(rob.get("clean"))]
        row += [_percent(rob.get("l2", {}).get(k)) for k in l2_keys]
        row += [_percent(rob.get("linf", {}).get(k)) for k in linf_keys]
        row += [_percent((rob.get("certified_l2") or {}).get(k)) for k in cert_keys]
        row.append(_budget_change(rob))
        row.append(("FIRED: " + "; ".join(rob["suspicious"])) if rob.get("suspicious") else ("ok" if rob else "-"))
        lines.append("| " + " | ".join(row) + " |")
    notes = sorted({f"{k}: {v}" for r in runs if r.robustness for k, v in r.robustness.get("attacks", {}).items()})
    footer = [
        "",
        "Accuracies in %. epoch: of best validation accuracy; test acc: there, on the whole test set; clean, "
        "PGD and certified: `kernel-reg evaluate` of the weights it names (robustness.json), on its test subset. "
        "2x budget: the largest drop of robust accuracy (points) when the attack's steps and restarts are "
        "doubled, over the radii checked.",
    ]
    footer += [f"- {note}" for note in notes]
    return "\n".join(lines + footer) + "\n"


def _budget_change(robustness: dict) -> str:
    """max over checked radii of (robust accuracy - accuracy under twice the budget), in points."""
    drops = [
        100 * (robustness[norm][key] - doubled)
        for norm, by_key in (robustness.get("doubled") or {}).items()
        for key, doubled in by_key.items()
    ]
    return f"{max(drops):.1f} ({len(drops)} radii)" if drops else "-"


def selection_table(runs: list[RunSummary]) -> str:
    """Per method, the hyperparameters of best mean validation accuracy over seeds (as the paper
    selected them), and the test accuracy there: mean +- std over the seeds. Finished runs only."""
    groups: dict[tuple[str, str], list[RunSummary]] = defaultdict(list)
    for run in runs:
        if run.finished and run.best.get("val_acc") is not None:
            params = hyperparameter_text(run.config) or "-"
            groups[(run.method, params)].append(run)
    if not groups:
        return ""
    chosen: dict[str, tuple[str, list[RunSummary]]] = {}
    for (method, params), members in groups.items():
        mean_val = statistics.mean(r.best["val_acc"] for r in members)
        if method not in chosen or mean_val > statistics.mean(r.best["val_acc"] for r in chosen[method][1]):
            chosen[method] = (params, members)
    lines = [
        "| method | selected hyperparameters | settings tried | seeds | val acc | test acc (mean +- std) |",
        "|---|---|---|---|---|---|",
    ]
    for method, (params, members) in sorted(chosen.items()):
        tests = [100 * r.best["test_acc"] for r in members]
        spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
        tried = sum(1 for m, _ in groups if m == method)
        val = statistics.mean(100 * r.best["val_acc"] for r in members)
        test = f"{statistics.mean(tests):.1f} +- {spread:.1f}"
        lines.append(f"| {method} | {params} | {tried} | {len(members)} | {val:.1f} | {test} |")
    return "\n".join(lines) + "\n"


def _label(run: RunSummary) -> str:
    params = hyperparameter_text(run.config)
    return f"{run.method} ({params})" if params else run.method


def plot_learning_curves(runs: list[RunSummary], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for run in runs:
        epochs = [m["epoch"] for m in run.metrics]
        line = axes[0].plot(epochs, [m["train_loss"] for m in run.metrics], label=_label(run))[0]
        axes[1].plot(epochs, [m["train_acc"] for m in run.metrics], color=line.get_color())
        axes[2].plot(epochs, [m["test_acc"] for m in run.metrics], color=line.get_color())
        if any(m.get("val_acc") is not None for m in run.metrics):
            axes[2].plot(epochs, [m.get("val_acc") for m in run.metrics], color=line.get_color(), linestyle=":")
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
        epochs = [m["epoch"] for m in run.metrics]
        line = ax.plot(epochs, [m["rkhs_lower_grad"] for m in run.metrics], label=_label(run))[0]
        ax.plot(epochs, [m["rkhs_lower_delta"] for m in run.metrics], color=line.get_color(), linestyle="--")
        ax.plot(epochs, [m["rkhs_upper_spectral"] for m in run.metrics], color=line.get_color(), linestyle=":")
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

    evaluated = [r for r in runs if r.robustness and r.robustness.get(norm)]
    if not evaluated:
        return False
    keys = sorted({k for r in evaluated for k in r.robustness[norm]}, key=float)
    by_method: dict[str, list[RunSummary]] = defaultdict(list)
    for run in evaluated:
        by_method[run.method].append(run)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for color, (method, members) in enumerate(sorted(by_method.items())):
            curves = [(norm, "-o", None)] + ([("certified_l2", ":^", "none")] if norm == "l2" else [])
            for field, style, fill in curves:
                pairs = [(r.robustness["clean"], (r.robustness.get(field) or {}).get(key)) for r in members]
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


def _save(fig, path: Path) -> None:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def write_report(root: str | Path, out_dir: str | Path | None = None) -> tuple[str, list[Path]]:
    """The Markdown table of the runs under ``root``, written with the plots to ``out_dir`` (default root)."""
    import matplotlib

    matplotlib.use("Agg")
    runs = collect_runs(root)
    if not runs:
        raise FileNotFoundError(f"no run with logged evaluations under {root}")
    out = Path(out_dir or root)
    selection = selection_table(runs)
    table = markdown_table(runs)
    if selection:
        table = "## Selected by validation accuracy\n\n" + selection + "\n## All runs\n\n" + table
    atomic_write_text(out / "report.md", table)
    written = [out / "report.md", out / "learning_curves.png", out / "rkhs_bracket.png"]
    plot_learning_curves(runs, written[1])
    plot_rkhs_bracket(runs, written[2])
    for norm in ("l2", "linf"):
        if plot_tradeoff(runs, out / f"tradeoff_{norm}.png", norm):
            written.append(out / f"tradeoff_{norm}.png")
    return table, written
