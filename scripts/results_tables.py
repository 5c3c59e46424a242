"""Regenerate the tables of RESULTS.md that quote run records, from the records alone.

    python scripts/results_tables.py            # rewrite every generated block of RESULTS.md in place
    python scripts/results_tables.py --check    # exit 1, naming each block that differs (the test suite runs this)

A generated block sits between ``<!-- generated: KIND ARGUMENT -->`` and ``<!-- end generated -->``; the text
between them is the output of ``GENERATORS[KIND](ARGUMENT)`` and nothing else, so that a number in it can
only change when the records do. Kinds:

- ``paired EXPERIMENT``: the paired table of ``kernel-reg report`` for that experiment's study under
  ``results/small_data_fit`` (paired t-intervals, Holm-adjusted verdicts), without the augmentation runs.
- ``augmentation EXPERIMENT[@EPOCHS]``: the augmentation control of that experiment: the baseline with each
  augmentation against the baseline; each penalty alone against the baseline with the deformations as
  data augmentation (the same random deformations the stability penalties use: penalty or augmentation?);
  each penalty on top of crops + deformations against the baseline with them (does kernel regularization
  add to augmentation?) and against the penalty alone (does augmentation add to it?); paired on training
  subsets, Holm-adjusted over the whole table. ``@EPOCHS``: the augmented runs trained that many epochs
  (e.g. ``@600``: longer than the runs without augmentation, which fit their data in theirs).
- ``selection FOLDER``: the selection table of ``kernel-reg report FOLDER`` (one study): per method, the
  setting of best mean validation accuracy and the test accuracy there, mean +- std over the seeds.
- ``certified FILE[,FILE...]``: ``scripts/certified_table.py``'s table of the rows its ``--json`` wrote
  (a run named in two files: the first file's row).
- ``certifications FOLDER``: per run folder under FOLDER with a ``certified.json`` (``kernel-reg
  certify``): clean accuracy, the Lipschitz bound L, and certified accuracy per pair of classes and by the
  global rule at each radius, on the test images it names.
- ``finite-difference EXPERIMENT``: grad-l2 with the finite-difference parameter gradient against the
  exact one (``results/finite_difference``), per training subset beside the small-data baseline on it, the
  mean +- s.e. and the paired t-interval and p of finite difference - exact.
- ``reproduction FILE[,FILE...]``: what each committed output of ``kernel-reg reproduce`` says: the run
  retrained, its thread count, the machine it was retrained on when not the record's (CPU model and
  instruction set), how many evaluations the retraining matched bit for bit, its largest differences, the
  last test accuracy recorded and retrained, and its exit status.
- ``robustness FOLDER``: the table of ``scripts/robustness_summary.py FOLDER`` (a robustness sweep's
  experiment folder under results/): per evaluated run, clean, robust at each radius under the budget and
  the worst of it and twice it, with Square at the middle radius, certified accuracy and Lipschitz bound.
- ``reattack PUBLISHED,AGAIN``: the runs of the study folder PUBLISHED that ``kernel-reg evaluate --out
  AGAIN`` attacked again (say, with more target classes): both robust accuracies and their worst case at
  each l2 radius, and how many images only one of the two broke, from their per-image records on the same images.
- ``claim2 EXPERIMENT``: claim 2 replicated (``results/robustness_claim2``): per setting, the mean over its
  seeds of the clean and robust accuracy (robustness.json) with 95% t-intervals, and the training loss at
  the last epoch with its change over the last learning-rate stage (has it stopped falling?); then each
  combination with the projection against PGD-l2 alone at the same epsilon, paired on training subsets,
  clean and at every radius, Holm-adjusted over the whole table.
- ``claim2-full EXPERIMENT``: claim 2's front-defining models evaluated on every test image
  (``scripts/claim2_front.py``, records under ``results/robustness_claim2/full_test``), each beside its
  study record on the first images.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kernel_reg.app.config import hyperparameter_text, method_label
from kernel_reg.app.report import (
    paired_by_subset,
    paired_differences,
    paired_header,
    paired_row,
    paired_table,
    selection_table,
    verdict_note,
)
from kernel_reg.app.rundir import (
    ROBUSTNESS,
    Robustness,
    atomic_write_text,
    read_certification,
    read_config,
    read_robustness,
    unpack_bits,
)
from kernel_reg.app.statistics import family, paired
from kernel_reg.app.studies import (
    RunSummary,
    Study,
    collect_runs,
    last_stage_loss_changes,
    main_study,
    pool_settings,
    seed_of,
    select,
    studies,
    unaugmented_by_epochs,
)
from kernel_reg.progress import say

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the other table scripts, however this one is loaded
import certified_table  # noqa: E402
import robustness_summary  # noqa: E402

SMALL_DATA = ROOT / "results" / "small_data_fit"  # the small-data study's run folders
CLAIM2 = ROOT / "results" / "robustness_claim2"  # claim 2 replicated: its run folders
MARKER = re.compile(r"^[ \t]*<!--\s*(end\s+)?generated\b.*$", re.M)  # any line that looks like a marker
START = re.compile(r"<!-- generated: (\S+) (\S+) -->")
END = "<!-- end generated -->"


@functools.cache
def _studies(root: Path) -> list[Study]:
    """The studies of the run folders under ``root``, read once per process for all the blocks."""
    return studies(collect_runs(root))


def small_data_studies(experiment: str, epochs: int | None = None) -> tuple[Study, dict[str, Study]]:
    """The study of ``experiment`` under results/small_data_fit without augmentation and those with it,
    by their transforms, all trained ``epochs`` epochs. None: the main study's (the one without
    augmentation of fewest epochs; longer ones are controls). Where no study without augmentation was
    trained ``epochs`` epochs, the main one stands in for it."""
    found = [s for s in _studies(SMALL_DATA) if s.experiment == experiment]
    try:
        plain = unaugmented_by_epochs(found, experiment)
    except ValueError as error:
        raise SystemExit(f"results/small_data_fit holds {error}") from None
    main = main_study(plain)
    if main is None:
        raise SystemExit(f"results/small_data_fit holds no study of {experiment} without augmentation")
    epochs = main.runs[0].config.num_epochs if epochs is None else epochs
    augmented = {str(s.differs.get("aug_transforms", "auto")): s for s in found
                 if s.differs.get("aug") and s.runs[0].config.num_epochs == epochs}  # fmt: skip
    return plain.get(epochs, main), augmented


def paired_study(experiment: str) -> str:
    """The paired table of the small-data study of ``experiment`` (the study without augmentation)."""
    return paired_table(small_data_studies(experiment)[0].runs)


BOTH = "crop+deform"  # the augmentation the penalties are trained on top of
DEFORM = "deform"  # the augmentation by the deformations of the stability penalties


def augmentation(argument: str) -> str:
    """The augmentation control of ``EXPERIMENT[@EPOCHS]`` as a Markdown table (see the module docstring)."""
    experiment, _, epochs = argument.partition("@")
    if epochs and not epochs.isdigit():
        raise SystemExit(f"augmentation {argument}: after '@' comes a number of epochs (e.g. {experiment}@600)")
    plain, augmented = small_data_studies(experiment, int(epochs) if epochs else None)
    if not augmented:
        return f"No run with augmentation is committed for {argument} yet."
    alone = select(plain.runs)
    chosen = {transforms: select(study.runs) for transforms, study in augmented.items()}
    rows: dict[str, tuple[str, list[RunSummary], list[RunSummary]]] = {}
    for transforms, selection in sorted(chosen.items()):
        if "none" in selection.chosen and "none" in alone.chosen:
            rows[f"baseline + {transforms} - baseline"] = ("-", selection.of("none"), alone.of("none"))
    both = chosen.get(BOTH)
    penalties = sorted(m for m in (both.chosen if both is not None else ()) if m != "none")
    deformed = chosen.get(DEFORM)
    for method in penalties:  # the penalty, or its deformations as data?
        if deformed is not None and "none" in deformed.chosen and method in alone.chosen:
            params = hyperparameter_text(alone.of(method)[0].config) or "-"
            rows[f"{method} - baseline + {DEFORM}"] = (params, alone.of(method), deformed.of("none"))
    for method in penalties:
        assert both is not None
        params = hyperparameter_text(both.of(method)[0].config) or "-"
        if "none" in both.chosen:
            rows[f"{method} + {BOTH} - baseline + {BOTH}"] = (params, both.of(method), both.of("none"))
        if method in alone.chosen:
            rows[f"{method} + {BOTH} - {method}"] = (params, both.of(method), alone.of(method))
    differences = {label: paired_differences(members, reference) for label, (_, members, reference) in rows.items()}
    tested = family(differences)
    lines = paired_header("comparison", "test acc difference")
    lines += [paired_row(label, params, tested.get(label), len(differences[label]))
              for label, (params, _, _) in rows.items()]  # fmt: skip
    augmented_epochs = next(iter(augmented.values())).runs[0].config.num_epochs
    schedule = f"Trained {augmented_epochs} epochs with augmentation, {plain.runs[0].config.num_epochs} without.\n"
    return "\n".join(lines) + "\n" + verdict_note(len(tested)) + schedule


def epsilon_of(run: RunSummary) -> object:
    """The epsilon of a run's first regularizer (the lower bound of a combination), None without one."""
    return dict(run.config.regs[0].params).get("epsilon") if run.config.regs else None


def interval(values: list[float]) -> str:
    """'mean [low, high]', the 95% t-interval of the mean at n - 1 degrees of freedom ('mean' for one value)."""

    def one(value: float) -> str:
        text = f"{value:.1f}"
        return "0.0" if text == "-0.0" else text  # a change of -0.01% is no fall

    if len(values) == 1:
        return one(values[0])
    c = paired(values)
    return f"{one(c.mean)} [{one(c.low)}, {one(c.high)}]"


def claim2(experiment: str) -> str:
    """Claim 2 replicated for ``experiment`` as two Markdown tables (see the module docstring)."""
    found = [s for s in _studies(CLAIM2) if s.experiment == experiment] if CLAIM2.is_dir() else []
    runs = [r for study in found for r in study.runs if r.robustness is not None and r.finished]
    if not runs:
        return f"No evaluated run of claim 2 is committed for {experiment} yet."
    if len(found) != 1:
        raise SystemExit(f"results/robustness_claim2 holds {len(found)} studies of {experiment}; expected one")
    radii = sorted({k for r in runs for k in r.robustness.l2}, key=float)  # type: ignore[union-attr]
    pooled, _ = pool_settings(runs)  # a configuration found twice, seeds included, is one sample
    settings: dict[str, list[RunSummary]] = {}
    for members in sorted(pooled.values(), key=lambda m: (m[0].method, hyperparameter_text(m[0].config))):
        if members[0].setting in settings:
            raise SystemExit(f"results/robustness_claim2: two settings of {experiment} read "
                             f"'{members[0].setting}' ({members[0].name}, {settings[members[0].setting][0].name}); "
                             "they differ in a field the table does not name")  # fmt: skip
        settings[members[0].setting] = sorted(members, key=seed_of)

    def measure(run: RunSummary, key: str) -> float:
        rob = run.robustness
        assert rob is not None
        return 100 * (rob.clean if key == "clean" else rob.l2[key])

    images = sorted({r.robustness.n for r in runs})  # type: ignore[union-attr]
    lines = [f"| setting | seeds | clean | {' | '.join(f'l2 {k}' for k in radii)} | train loss, last epoch "
             "| its change over the last learning-rate stage (%) |",
             "|---|---|---|" + "---|" * len(radii) + "---|---|"]  # fmt: skip
    for name, members in settings.items():
        cells = [interval([measure(r, key) for r in members]) for key in ("clean", *radii)]
        loss = f"{sum(r.metrics[-1].train_loss for r in members) / len(members):.3f}"
        changes = last_stage_loss_changes(members)
        change = "-" if changes is None else interval(changes)
        lines.append(f"| {name} | {len(members)} | {' | '.join(cells)} | {loss} | {change} |")
    lines.append(f"\nAccuracies in % on the first {', '.join(map(str, images))} test images, mean over the seeds "
                 "[95% t-interval, n - 1 degrees of freedom]; robust: the evaluation recorded in each run's "
                 "robustness.json. Loss change: from the first evaluation of the last learning-rate stage to "
                 "the last ('-': not measured for a seed: one evaluation in the stage, a loss not finite "
                 "or 0).\n")  # fmt: skip
    rows: dict[str, list[float]] = {}
    for name, members in settings.items():
        method = members[0].method
        if not method.endswith("+project-sn"):
            continue
        reference = next((n for n, m in settings.items() if m[0].method == "pgd-l2"
                          and epsilon_of(m[0]) == epsilon_of(members[0])), None)  # fmt: skip
        if reference is None:
            continue
        for key in ("clean", *radii):
            label = f"{name} - {reference}, {'clean' if key == 'clean' else f'l2 {key}'}"
            rows[label] = paired_by_subset(members, settings[reference], lambda run, key=key: measure(run, key))
    if not rows:
        return "\n".join(lines)
    tested = family(rows)
    lines += paired_header("comparison", "accuracy difference")
    lines += [paired_row(label, "-", tested.get(label), len(d)) for label, d in rows.items()]
    return "\n".join(lines) + "\n" + verdict_note(len(tested))


def claim2_full(experiment: str) -> str:
    """The front-defining models of claim 2 evaluated on every test image (``scripts/claim2_front.py``: one
    ``robustness.json`` per model under ``results/robustness_claim2/full_test/<run folder>``), each beside its
    study record on the first images; the attack settings must be the record's but for the images."""
    records = sorted((CLAIM2 / "full_test").glob("*/robustness.json"))
    if not records:
        return ("No front-defining model of claim 2 has been evaluated on every test image yet "
                "(`python scripts/claim2_front.py | bash`, on a GPU).")  # fmt: skip
    study = {run.path.name: run for s in _studies(CLAIM2) if s.experiment == experiment for run in s.runs}
    rows = []
    for path in records:
        run = study.get(path.parent.name)
        if run is None or run.robustness is None:
            raise SystemExit(f"{path.relative_to(ROOT)}: no evaluated run of {experiment} has that folder name")
        full, first = read_robustness(path.parent), run.robustness
        assert full is not None
        if dataclasses.replace(full.settings, n_test=first.settings.n_test) != first.settings:
            raise SystemExit(f"{path.relative_to(ROOT)}: evaluated with other attack settings than its record")
        rows.append((run, full, first))
    radii = sorted({k for _, full, _ in rows for k in full.l2}, key=float)
    sizes = sorted({first.n for _, _, first in rows})

    def cells(record: Robustness) -> str:
        return " | ".join(f"{100 * v:.1f}" for v in (record.clean, *(record.l2.get(k, math.nan) for k in radii)))

    columns = " | ".join(["clean", *(f"l2 {k}" for k in radii)])
    lines = [f"| model (first training subset) | test images | {columns} | its record: test images | {columns} |",
             "|---|---|" + "---|" * (len(radii) + 2) + "---|" * (len(radii) + 1)]  # fmt: skip
    for run, full, first in sorted(rows, key=lambda row: row[0].setting):
        lines.append(f"| {run.setting} | {full.n} | {cells(full)} | {first.n} | {cells(first)} |")
    lines.append(f"\nAccuracies in %; the same attacks on all {rows[0][1].n} test images and, as recorded by the "
                 f"study, on the first {', '.join(map(str, sizes))}.")  # fmt: skip
    return "\n".join(lines)


def reattack(folders: str) -> str:
    """``PUBLISHED,AGAIN``: each run of the study folder PUBLISHED that AGAIN (``kernel-reg evaluate ...
    --out AGAIN``) attacked again: its published and new robust accuracies and their worst case on the
    images both evaluated (the first ones), and per radius the images that only one of the two broke, from
    their per-image records (the same weights and clean predictions are required)."""
    published, again = (_folder(folder) for folder in folders.split(",", 1))
    records = sorted(again.glob(f"*/{ROBUSTNESS}"))
    if not records:
        return f"No run of {published.relative_to(ROOT)} has been attacked again yet."
    rows, descriptions = [], set()
    for path in records:
        run = published / path.parent.name
        first, second = read_robustness(run), read_robustness(path.parent)
        if first is None or second is None:
            raise SystemExit(f"{path.relative_to(ROOT)}: {run.relative_to(ROOT)} has no published evaluation")
        n = min(first.n, second.n)
        clean = [unpack_bits(r.per_example["clean"], n) for r in (first, second)]
        if (first.weights, first.epoch) != (second.weights, second.epoch) or (clean[0] != clean[1]).any():
            raise SystemExit(f"{path.relative_to(ROOT)}: not the published evaluation's weights (its clean "
                             "predictions differ)")  # fmt: skip
        descriptions.add((first.described()["l2"], second.described()["l2"], n))
        rows.append((run.name, read_config(run), first, second, clean[0]))
    if len(descriptions) != 1:
        raise SystemExit(f"{again.relative_to(ROOT)}: its records were not all made under one pair of settings "
                         "on one number of images")  # fmt: skip
    (before, after, n), radii = descriptions.pop(), sorted(rows[0][3].l2, key=float)

    def unbroken(record: Robustness, key: str) -> np.ndarray:
        return unpack_bits(record.per_example[f"l2/{key}"], n)

    lines = ["| method | strength | clean | " + " | ".join(f"l2 {k}: published / again / worst" for k in radii)
             + " | broken only again | broken only in the published |",
             "|---|---|---|" + "---|" * len(radii) + "---|---|"]  # fmt: skip
    for _, config, first, second, clean in sorted(rows, key=lambda row: (method_label(row[1]), row[0])):
        flags = [(unbroken(first, k), unbroken(second, k)) for k in radii]  # per radius: unbroken (published, again)
        cells = [" / ".join(f"{100 * kept.mean():.1f}" for kept in (a, b, a & b)) for a, b in flags]
        # broken only again, then broken only in the published
        cells += [" / ".join(str(int(only.sum())) for only in (a & ~b for a, b in flags)),
                  " / ".join(str(int(only.sum())) for only in (b & ~a for a, b in flags))]  # fmt: skip
        lines.append(f"| {method_label(config)} | {hyperparameter_text(config) or '-'} | {100 * clean.mean():.1f} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    lines.append(f"\nAccuracy in % on the first {n} test images, the same weights. Published: {before}. "
                 f"Again: {after}. Worst: unbroken by both. Broken only ...: images (at l2 {' / '.join(radii)}) that "
                 "one evaluation broke and the other did not.")  # fmt: skip
    return "\n".join(lines)


def _folder(folder: str) -> Path:
    """``folder`` of the repository, which must exist."""
    if not (ROOT / folder).is_dir():
        raise SystemExit(f"{folder}: no such folder in the repository")
    return ROOT / folder


def selection(folder: str) -> str:
    """The report's selection table of the one study under ``folder`` (relative to the repository)."""
    found = _studies(_folder(folder))
    if len(found) != 1:
        raise SystemExit(f"{folder} holds {len(found)} studies; a selection table is one study's")
    return selection_table(found[0].runs)


def certified(files: str) -> str:
    """``certified_table.markdown`` of the rows of the comma-separated JSON files (relative to the repository)."""
    rows: dict[str, dict] = {}
    for name in files.split(","):
        for row in json.loads((ROOT / name).read_text()):
            rows.setdefault(row["run"], row)
    return certified_table.markdown(list(rows.values()))


def certifications(folder: str) -> str:
    """The ``kernel-reg certify`` records of the run folders under ``folder`` as one table."""
    records = [(run.name, read_certification(run)) for run in sorted(_folder(folder).iterdir()) if run.is_dir()]
    found = [(name, record) for name, record in records if record is not None]
    if not found:
        raise SystemExit(f"{folder}: no run folder holds a certified.json")
    keys = list(found[0][1].pairwise)
    lines = ["| run | test images | clean | L | " + " | ".join(f"certified {k}" for k in keys) + " | "
             + " | ".join(f"sqrt(2) L rule {k}" for k in keys) + " |",
             "|---" * (4 + 2 * len(keys)) + "|"]  # fmt: skip
    for name, record in found:
        cells = [f"{100 * record.pairwise[k]:.1f}" for k in keys] + [f"{100 * record.global_rule[k]:.1f}" for k in keys]
        lines.append(f"| {name} | {record.n} | {100 * record.clean:.1f} | {record.lipschitz_bound:.4g} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def finite_difference(experiment: str) -> str:
    """The finite-difference study of ``experiment`` as a table (see the module docstring)."""
    found = [s for s in _studies(_folder("results/finite_difference")) if s.experiment == experiment]
    if len(found) != 1:
        raise SystemExit(f"results/finite_difference holds {len(found)} studies of {experiment}; the table is one's")
    (study,) = found
    baseline = {r.config.shuf_seed: 100 * r.best.test_acc for r in small_data_studies(experiment)[0].runs
                if r.method == "none"}  # fmt: skip
    by_method: dict[str, dict[int, float]] = {}
    for run in study.runs:
        method = str(run.config.regs[0]["method"])
        by_method.setdefault(method, {})[run.config.shuf_seed] = 100 * run.best.test_acc
    exact, fd = by_method["exact"], by_method["finite-difference"]
    subsets = sorted(set(exact) & set(fd))
    lines = ["| subset | baseline | grad-l2 exact | grad-l2 finite difference | finite difference - exact |",
             "|---|---|---|---|---|"]  # fmt: skip
    for k in subsets:
        lines.append(f"| {k} | {baseline[k]:.1f} | {exact[k]:.2f} | {fd[k]:.2f} | {fd[k] - exact[k]:+.2f} |")
    gap = paired([fd[k] - exact[k] for k in subsets])
    means = [sum(v[k] for k in subsets) / len(subsets) for v in (baseline, exact, fd)]
    lines.append(f"| mean +- standard error | {means[0]:.1f} | {means[1]:.2f} | {means[2]:.2f} | "
                 f"**{gap.mean:+.2f} +- {gap.se:.2f}** |")  # fmt: skip
    lines.append(f"| 95% t-interval ({gap.n - 1} degrees of freedom), p | | | | "
                 f"[{gap.low:+.2f}, {gap.high:+.2f}], p = {gap.p:.2f} |")  # fmt: skip
    return "\n".join(lines)


def reproduction(files: str) -> str:
    """The committed ``kernel-reg reproduce`` outputs as a table (see the module docstring)."""
    lines = ["| run | threads | retrained on | evaluations bit-identical "
             "| largest difference (test / validation accuracy, points) | last test accuracy, recorded / retrained "
             "| exit |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in files.split(","):
        text = (ROOT / name).read_text()
        run = re.search(r"^\$ kernel-reg reproduce (\S+)", text, re.M)
        threads = re.search(r"--threads (\d+)", text)
        same = re.search(r"(\d+) of (\d+) evaluations bit-identical; last test accuracy recorded ([\d.]+)%, "
                         r"retrained ([\d.]+)%", text)  # fmt: skip
        status = re.search(r"^exit (\d+)$", text, re.M)
        machine = re.search(r"^not the record's machine: .*; this run on (.+?); its numbers", text, re.M)
        if run is None or threads is None or same is None or status is None:
            raise SystemExit(f"{name} is not the output of kernel-reg reproduce --threads N (with its exit status)")
        differences = text.partition("largest differences")[2]  # empty when every evaluation matched
        gaps = {k: float(v) for k, v in re.findall(r"(\w+_acc) ([\d.]+)", differences)}
        validated = re.search(r"^epoch \d+, .*val_acc", text, re.M)  # a run without a validation split: "-"
        val = f"{100 * gaps.get('val_acc', 0):.2f}" if validated else "-"
        largest = f"{100 * gaps.get('test_acc', 0):.2f} / {val}"
        folder = f"`{Path(run[1]).parent.name}/{Path(run[1]).name}`"
        where = "the record's machine"  # outputs before 0.2.3 do not say; those committed were made on it
        if machine is not None:  # "cpu: MODEL, N thread(s), INSTRUCTION SET": the threads have their column
            where = ", ".join(p for p in machine[1].removeprefix("cpu: ").split(", ") if not p.endswith("thread(s)"))
        lines.append(f"| {folder} | {threads[1]} | {where} | {same[1]} of {same[2]} | {largest} "
                     f"| {same[3]} / {same[4]} | {status[1]} |")  # fmt: skip
    return "\n".join(lines)


def robustness(folder: str) -> str:
    """``scripts/robustness_summary.py``'s table of a robustness study folder, relative to the repository."""
    return robustness_summary.table(_folder(folder))


GENERATORS: dict[str, Callable[[str], str]] = {
    "paired": paired_study, "augmentation": augmentation, "claim2": claim2, "claim2-full": claim2_full,
    "robustness": robustness, "reattack": reattack,
    "selection": selection,
    "certified": certified,
    "certifications": certifications,
    "finite-difference": finite_difference,
    "reproduction": reproduction,
}  # fmt: skip


def generate(kind: str, argument: str, where: str) -> str:
    """The text of the block ``kind argument`` (``where``: its file and line, for the errors)."""
    if kind not in GENERATORS:
        raise SystemExit(f"{where}: unknown generated block '{kind}' (known: {', '.join(GENERATORS)})")
    try:
        return GENERATORS[kind](argument).rstrip("\n") + "\n"
    except (OSError, ValueError, KeyError) as error:  # an argument naming no record, or a damaged record
        raise SystemExit(f"{where}: block '{kind} {argument}': {type(error).__name__}: {error}") from None


def regenerate(text: str, name: str = "RESULTS.md") -> tuple[str, list[str]]:
    """``text`` with every generated block rewritten, and the blocks that changed. Every line that looks
    like a marker must be one, and the markers must pair (start, end, start, end ...): a missing end would
    otherwise let a block run on over the text after it."""
    pieces: list[str] = []
    changed: list[str] = []
    done = 0  # text[:done] is in pieces
    opened: tuple[int, str, str, int] | None = None  # line, kind, argument, offset where its body starts
    for marker in MARKER.finditer(text):
        line, number = marker.group(0).strip(), text.count("\n", 0, marker.start()) + 1
        where = f"{name}:{number}"
        if marker.group(1) is None:
            start = START.fullmatch(line)
            if start is None:
                raise SystemExit(f"{where}: '{line}' is not a block start; write <!-- generated: KIND ARGUMENT --> "
                                 "(one word each, no space in the argument)")  # fmt: skip
            if opened is not None:
                raise SystemExit(f"{where}: a block starts inside the block '{opened[1]} {opened[2]}' of line "
                                 f"{opened[0]}; end that one with {END} first")  # fmt: skip
            opened = (number, start[1], start[2], marker.end() + 1)
            continue
        if line != END:
            raise SystemExit(f"{where}: '{line}' is not a block end; write {END}")
        if opened is None:
            raise SystemExit(f"{where}: {END} ends no block (no <!-- generated: KIND ARGUMENT --> before it)")
        first, kind, argument, body = opened
        fresh = generate(kind, argument, f"{name}:{first}")
        if fresh != text[body : marker.start()]:
            changed.append(f"{kind} {argument}")
        pieces += [text[done:body], fresh]
        done, opened = marker.start(), None
    if opened is not None:
        raise SystemExit(f"{name}:{opened[0]}: the block '{opened[1]} {opened[2]}' has no {END}; nothing was written")
    return "".join(pieces) + text[done:], changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs")
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    args = parser.parse_args()
    path = args.results.resolve()  # a link: its target is what gets rewritten
    try:
        text = path.read_text()
    except OSError as error:
        raise SystemExit(f"{args.results}: cannot read it ({error.strerror})") from None
    fresh, changed = regenerate(text, args.results.name)
    if args.check:
        if changed:
            print(f"{args.results.name}: regenerated from the records, these blocks differ: {'; '.join(changed)}. "
                  "Run python scripts/results_tables.py", file=sys.stderr)  # fmt: skip
            raise SystemExit(1)
        return
    if changed:
        mode = stat.S_IMODE(path.stat().st_mode)
        if not mode & 0o222:  # by its mode, not os.access: root may write anything
            raise SystemExit(f"{args.results}: it is read-only; make it writable to rewrite its blocks "
                             f"({'; '.join(changed)} differ from the records)")  # fmt: skip
        try:
            atomic_write_text(path, fresh)
            path.chmod(mode)
        except OSError as error:
            raise SystemExit(f"{args.results}: not rewritten ({error.strerror}); it is unchanged") from None
    say(f"{args.results.name}: {len(changed)} block(s) rewritten" + (f": {'; '.join(changed)}" if changed else ""))


if __name__ == "__main__":
    main()
