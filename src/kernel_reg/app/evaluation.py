"""The evaluation of a model and of a run folder: clean, robust (under the suite's attacks) and certified
accuracies, and the gradient-masking checks that say when a robust accuracy is not to be trusted, of a
model (``evaluate_model``, ``certify_model``) and of a run folder, into its records (``evaluate_run`` ->
``robustness.json``, ``certify_run`` -> ``certified.json``). The metrics are in ``metrics``, the suite's
settings and attacks in ``suite``."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import lipschitz
from ..arguments import check_choice, check_positive
from ..attacks import Square
from ..deprecation import moved_names, warn
from . import checks, environment, metrics, suite
from .builders import LoadedRun, load_run
from .checks import radius_text
from .journal import JOURNAL, Journal, discard_journal, evaluation_key
from .rundir import (
    CHECKPOINT,
    ROBUSTNESS,
    WEIGHTS,
    Certification,
    MaskingCheck,
    Robustness,
    certification_file,
    locked,
    pack_bits,
    read_config,
    write_certification,
    write_robustness,
)

# moved in 0.2.1 (importable from here, with a DeprecationWarning, until 0.3)
_moved = moved_names(
    __name__,
    {
        **dict.fromkeys(("accuracy", "robust_correct", "robust_accuracy", "unchanged", "certified_radii",
                         "zero_gradient_share"), "kernel_reg.app.metrics"),
        **dict.fromkeys(("EvalSettings", "build_attack", "build_eval_attack", "describe_attacks", "eps_key"),
                        "kernel_reg.app.suite"),
    },
    stacklevel=4,  # through this module's __getattr__
)  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "ATTACK_NAMES":
        warn(f"{__name__}.ATTACK_NAMES is the keys of kernel_reg.app.suite.EVAL_ATTACKS: read them there")
        return tuple(suite.EVAL_ATTACKS)
    return _moved(name)


def masking_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: suite.EvalSettings,
    accuracies: dict[str, dict[str, float]],
    certified: dict[str, float] | None,
    survivors: dict[str, dict[float, torch.Tensor]],
    generator: torch.Generator | None = None,
    journal: Journal | None = None,
) -> tuple[list[MaskingCheck], dict[str, dict[str, float]]]:
    """The measurements behind the checks of ``checks`` and their verdicts, and the accuracies under twice
    the budget at the checked radii (random draws from ``generator``).

    ``accuracies[norm][eps_key]``: the robust accuracies; ``survivors[norm]``: per radius to check (the
    middle one first), whether each example is unbroken by the evaluation attack there; ``journal``: see
    ``evaluate_model``.
    """
    n = x.shape[0]
    found = [checks.rises_with_eps(norm, [accuracies[norm][k] for k in sorted(accuracies[norm], key=float)], n)
             for norm in ("l2", "linf")]  # fmt: skip
    doubled: dict[str, dict[str, float]] = {norm: {} for norm in survivors}
    for norm, by_radius in survivors.items():
        for eps, alive in by_radius.items():
            base = int(alive.sum()) / n
            attack = suite.build_eval_attack(norm, eps, settings, 2, generator)
            where = f"{norm} eps {radius_text(norm, eps)}, 2x budget"
            stronger = int(metrics.robust_correct(model, attack, x, y, settings.batch_size, where, journal).sum()) / n
            doubled[norm][suite.eps_key(eps)] = stronger
            found += [checks.rises_with_budget(norm, eps, base, stronger, n),
                      checks.not_converged(norm, eps, base, stronger)]  # fmt: skip
        if "square" in settings.members():
            continue  # Square is one of the evaluation's attacks: what it breaks is already counted
        eps, alive = next(iter(by_radius.items()))
        todo = alive.nonzero().squeeze(1)
        broken = 0
        if todo.numel():
            square = Square(norm=norm, eps=eps, queries=settings.queries, generator=generator)
            where = f"{norm} eps {radius_text(norm, eps)}, Square"
            unbroken = metrics.robust_correct(model, square, x[todo], y[todo], settings.batch_size, where, journal)
            broken = int((~unbroken).sum())
        found.append(checks.square_beats_gradients(norm, eps, broken, int(todo.numel()), settings.queries, n))
    found.append(checks.zero_gradients(metrics.zero_gradient_share(model, x, y, settings.batch_size)))
    if certified is not None:
        found.append(checks.certified_above_robust(certified, accuracies["l2"]))
    return found, doubled


def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: suite.EvalSettings,
    input_shape: Sequence[int],
    journal: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Robustness:
    """Clean, robust (l2 and linf) and certified-l2 accuracies of ``model`` on (x, y), the attacks that
    produced them, and the gradient-masking checks (``epoch``, ``weights`` and ``trained_to`` left unset).

    Robust accuracy at each radius: under the per-example worst case of the settings' attacks. Certified
    l2 accuracy: f_y - f_j > K[y, j] eps for every j at each l2 radius, K = ``lipschitz.pairwise_lipschitz``
    (at most sqrt(2) L, L = ``lipschitz.lipschitz_upper_bound``; None, with ``certified_note``, for a model
    with a layer without a Lipschitz rule). The model is left as it was found; the global RNG is not used.

    Args:
        model: maps x to logits (n, k).
        x: the test inputs, (n, *shape).
        y: their class indices, (n,).
        settings: the attacks, radii and checks.
        input_shape: the shape of one input, without the batch dimension, for the Lipschitz bound.
        journal: a folder that keeps each attacked batch's result as it comes (``journal.Journal``): run again
            after an interruption, the evaluation resumes from it and returns what an uninterrupted one
            returns. Default: none. The caller removes it once the result is written.
        log: receives a line when a journal is resumed or set aside.

    Returns:
        A ``rundir.Robustness``; its accuracy dicts are keyed by ``suite.eps_key(eps)``.
    """
    generator = settings.generator()
    here = environment.machine(x.device)
    book = None
    if journal is not None:
        key = evaluation_key([*model.state_dict().items(), ("x", x), ("y", y)], settings.to_dict())
        book = Journal(journal, key, generator, log, here)
    clean_ok = metrics.robust_correct(model, metrics.unchanged, x, y, settings.batch_size, "clean accuracy", book)
    per_example = {"clean": pack_bits(clean_ok)}
    accuracies: dict[str, dict[str, float]] = {}
    survivors: dict[str, dict[float, torch.Tensor]] = {}
    for norm in ("l2", "linf"):
        radii = settings.l2_eps if norm == "l2" else settings.linf_eps
        accuracies[norm] = {}
        alive_at = {}
        for eps in radii:
            attack = suite.build_eval_attack(norm, eps, settings, 1, generator)
            where = f"{norm} eps {radius_text(norm, eps)}"
            alive_at[eps] = metrics.robust_correct(model, attack, x, y, settings.batch_size, where, book)
            accuracies[norm][suite.eps_key(eps)] = int(alive_at[eps].sum()) / len(y)
            per_example[f"{norm}/{suite.eps_key(eps)}"] = pack_bits(alive_at[eps])
        if radii:
            middle = sorted(radii)[len(radii) // 2]
            checked = radii if settings.converge_every_radius else (middle,)
            survivors[norm] = {middle: alive_at[middle], **{eps: alive_at[eps] for eps in checked}}
    certified: dict[str, float] | None = None
    note = None
    try:
        bound, pairwise = lipschitz.lipschitz_bounds(model, input_shape)
    except TypeError as error:  # a layer without a Lipschitz rule: no certificate
        bound, note = None, str(error)
    else:
        radius = metrics.certified_radii(model, x, y, pairwise, settings.batch_size)
        certified = {}
        for e in settings.l2_eps:
            certified[suite.eps_key(e)] = int((radius > e).sum()) / len(y)
            per_example[f"certified_l2/{suite.eps_key(e)}"] = pack_bits(radius > e)
    lower = None
    if settings.lipschitz_probe:  # its own draws: the attacks' stream stays what it was before it was seeded
        lower = lipschitz.lipschitz_lower_bound(model, x[: settings.lipschitz_probe], generator=settings.generator())
    attacks = {norm: suite.describe_attacks(norm, settings) for norm in ("l2", "linf") if accuracies[norm]}
    attacks["certified_l2"] = (
        "f_y - f_j > K[y, j] * eps for every j != y, K[y, j] = min(sqrt(2) L, ||w_y - w_j|| L_body): Gram-iteration"
        " Lipschitz upper bounds of the model (L) and of the layers before its last Linear one (L_body)"
    )
    found: list[MaskingCheck] | None = None
    doubled: dict[str, dict[str, float]] = {}
    if settings.checks:
        found, doubled = masking_checks(model, x, y, settings, accuracies, certified, survivors, generator, book)
    return Robustness(
        clean=int(clean_ok.sum()) / len(y), n=len(y), l2=accuracies["l2"], linf=accuracies["linf"],
        lipschitz_bound=bound, lipschitz_lower=lower,
        certified_l2=certified, attacks=attacks, settings=settings, doubled=doubled,
        masking_checks=None if found is None else tuple(found), certified_note=note, per_example=per_example,
        machines=tuple(dict.fromkeys([*(book.machines if book else ()), here])),
    )  # fmt: skip


def summary(result: Robustness) -> list[str]:
    """The lines ``kernel-reg evaluate`` prints: accuracies in %, linf radii in units of 1/255."""

    def cells(norm: str, values: dict[str, float]) -> str:  # by radius, whatever order they were measured in
        ordered = sorted(values.items(), key=lambda item: float(item[0]))
        return ", ".join(f"{radius_text(norm, float(k))}: {100 * v:.1f}" for k, v in ordered)

    weights = f"{result.weights} weights, epoch {result.epoch}"
    lines = [f"clean accuracy {100 * result.clean:.1f}% on {result.n} test images ({weights})"]
    for norm, values in (("l2", result.l2), ("linf", result.linf)):
        if values:
            lines.append(f"  {norm} robust accuracy (%) at eps {cells(norm, values)}")
    if result.certified_l2 is not None:
        lines.append(f"  certified l2 accuracy (%) at eps {cells('l2', result.certified_l2)} "
                     f"(per pair of classes; Lipschitz bound {result.lipschitz_bound:.4g})")  # fmt: skip
        if result.lipschitz_lower is not None and result.lipschitz_bound:
            ratio = result.lipschitz_bound / max(result.lipschitz_lower, 1e-30)
            lines.append(f"  Lipschitz constant between {result.lipschitz_lower:.4g} (largest Jacobian norm "
                         f"found) and {result.lipschitz_bound:.4g} (guaranteed): the bound is {ratio:.3g}x the lower "
                         "one")  # fmt: skip
    else:
        lines.append(f"  no certificate: {result.certified_note}")
    for norm, doubled in result.doubled.items():
        if doubled:
            lines.append(f"  {norm} with twice the steps and restarts (%) at eps {cells(norm, doubled)}")
    if result.masking_checks is not None:
        lines += [f"  {c.detail}" for c in result.masking_checks if c.id == "square-beats-gradients"]
        fired = len(result.suspicious)
        lines.append(f"  gradient-masking checks: {len(result.masking_checks)} run, "
                     + (f"{fired} fired:" if fired else "none fired"))  # fmt: skip
    lines += [f"  WARNING: {name}" for name in result.suspicious]
    if len(result.machines) > 1:  # resumed elsewhere: each batch is a valid attack, not bit for bit one machine's
        lines.append(f"  computed on {len(result.machines)} machines, in this order: {'; '.join(result.machines)}")
    return lines


def published(run_dir: Path) -> bool:
    """A published run folder: it holds ``weights.pt`` and no checkpoint (what ``kernel-reg export`` leaves
    to commit); its records are what others check, so evaluation does not overwrite them unasked."""
    return (run_dir / WEIGHTS).is_file() and not (run_dir / CHECKPOINT).is_file()


def output_folder(run_dir: Path, out: Path | None, in_place: bool, record: str) -> Path:
    """Where an evaluation of ``run_dir`` writes ``record``: ``out`` when given, else the run folder itself,
    which a published folder allows only with ``in_place``. ValueError naming the remedy otherwise."""
    if out is not None:
        return out
    if published(run_dir) and not in_place:
        raise ValueError(
            f"{run_dir} holds published weights ({WEIGHTS}, no {CHECKPOINT}): its {record} is a published record; "
            "write the new one elsewhere with --out DIR, or over the published one with --in-place"
        )
    return run_dir


@contextlib.contextmanager
def measuring(
    run_dir: Path, record: str, purpose: str, which: str, out: str | Path | None, in_place: bool, **loading: Any
) -> Iterator[tuple[LoadedRun, Path]]:
    """(the run loaded by ``load_run(run_dir, which=which, **loading)``, the folder to write ``record``
    into: see ``output_folder``), holding the lock of that folder: the run folder itself, or one elsewhere
    (created), the run folder then only read (it may be read-only)."""
    check_choice("weights", which, ("best", "last"))
    folder = output_folder(run_dir, None if out is None else Path(out), in_place, record)
    read_config(run_dir)  # a run folder at all, before taking any lock
    with locked(folder, purpose, create=folder != run_dir):
        yield load_run(run_dir, which=which, **loading), folder


def evaluate_run(
    run_dir: str | Path,
    settings: suite.EvalSettings,
    device: str = "auto",
    which: str = "best",
    log: Callable[[str], None] = lambda _: None,
    data_dir: str | None = None,
    out: str | Path | None = None,
    in_place: bool = False,
    allow_other_data: bool = False,
) -> Robustness:
    """Evaluate a run folder's weights of best validation accuracy (``which="last"``, or a run without a
    validation set: its last weights) on its test set; ``log`` gets the summary lines before
    ``robustness.json`` is written, holding the lock of the folder written. A folder that is locked or not
    writable fails at once, before any work. Each attacked batch's result is kept in ``robustness.journal/`` in
    that folder until the record is written: the same call after an interruption resumes from it.

    Args:
        run_dir: the run folder.
        settings: the evaluation settings (``settings.n_test``: the test images).
        device: where to evaluate: "auto" (default: CUDA when available, else the CPU) or a device name.
        which: "best" (default) or "last", the weights.
        log: receives each summary line (default: discards them).
        data_dir: where the data are on this machine (default: the run's own setting).
        out: the folder to write ``robustness.json`` into (default: the run folder, which a published one,
            see ``published``, allows only with ``in_place``).
        in_place: overwrite a published run folder's record.
        allow_other_data: go on when the test data differ from the run's record (the difference is
            recorded in the result).

    Returns:
        The ``rundir.Robustness`` written, with ``epoch``, ``weights``, ``trained_to`` and ``data`` set.

    Raises:
        ValueError: for another ``which``, a device this machine does not have, a published folder without
            ``out`` or ``in_place``; DataMismatchError for other data.
        RunFolderError: for a folder that is not a run folder, is locked by another process or is not
            writable.
    """
    loading = dict(device=device, n_test=settings.n_test, data_dir=data_dir, allow_other_data=allow_other_data)
    with measuring(Path(run_dir), ROBUSTNESS, "kernel-reg evaluate", which, out, in_place, **loading) as (run, folder):
        run.model.requires_grad_(False)  # attacks differentiate inputs only (orthogonal layers then cache Q)
        journal = folder / JOURNAL
        test_x, test_y = run.splits.test_x, run.splits.test_y
        result = evaluate_model(run.model, test_x, test_y, settings, run.splits.input_shape, journal, log)
        result = dataclasses.replace(
            result, epoch=run.epoch, weights=run.weights, trained_to=run.trained_to, data=run.data,
            data_override=run.data_override,
        )  # fmt: skip
        for line in summary(result):
            log(line)
        write_robustness(folder, result)
        discard_journal(journal)
    return result


def certify_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], input_shape: Sequence[int],
    batch_size: int = 500,
) -> Certification:  # fmt: skip
    """Clean and certified l2 accuracy of ``model`` on (x, y) at each radius, by the per-pair rule
    (f_y - f_j > K[y, j] eps for every j, K = ``lipschitz.pairwise_lipschitz``) and by the global one
    (f_y - max_j f_j > sqrt(2) L eps, L = ``lipschitz.lipschitz_upper_bound``), with per-example flags
    (``epoch`` and ``weights`` left unset). TypeError for a model with a layer without a Lipschitz rule."""
    for eps in radii:
        check_positive("eps", eps)
    bound, pairwise = lipschitz.lipschitz_bounds(model, input_shape)
    clean_ok = metrics.robust_correct(model, metrics.unchanged, x, y, batch_size, "clean accuracy")
    n = len(y)
    per_example = {"clean": pack_bits(clean_ok)}
    rules: dict[str, dict[str, float]] = {}
    for rule, constant in (("pairwise", pairwise), ("global", bound)):
        radius = metrics.certified_radii(model, x, y, constant, batch_size)
        rules[rule] = {suite.eps_key(e): int((radius > e).sum()) / n for e in radii}
        per_example.update({f"{rule}/{suite.eps_key(e)}": pack_bits(radius > e) for e in radii})
    return Certification(
        n=n, clean=int(clean_ok.sum()) / n, lipschitz_bound=bound, pairwise=rules["pairwise"],
        global_rule=rules["global"], weights="", epoch=-1, per_example=per_example,
    )  # fmt: skip


def certify_run(
    run_dir: str | Path,
    radii: Sequence[float],
    n_test: int | None = None,
    device: str = "auto",
    which: str = "best",
    log: Callable[[str], None] = lambda _: None,
    data_dir: str | None = None,
    out: str | Path | None = None,
    in_place: bool = False,
    allow_other_data: bool = False,
    split: str = "test",
) -> Certification:
    """``certify_model`` of a run folder's weights (``which``: "best", the default, as ``evaluate_run``, or
    "last") on the first ``n_test`` images (None: all) of ``split``: "test" -> ``certified.json``, or "val",
    the run's validation examples (carved from the training pool, to choose a recipe without the test set)
    -> ``certified_val.json``; written as ``evaluate_run`` writes its record (same ``out``, ``in_place``,
    ``data_dir`` and ``allow_other_data``). ValueError for "val" on a run without a validation set."""
    record = certification_file(split)
    parts = ("test",) if split == "test" else ("train",)
    loading = dict(device=device, n_test=n_test if split == "test" else None, data_dir=data_dir,
                   allow_other_data=allow_other_data, parts=parts)  # fmt: skip
    with measuring(Path(run_dir), record, "kernel-reg certify", which, out, in_place, **loading) as (run, folder):
        x, y = (run.splits.test_x, run.splits.test_y) if split == "test" else (run.splits.val_x, run.splits.val_y)
        if split == "val":
            if len(y) == 0:
                raise ValueError(f"{run_dir} has no validation set (n_val=0): certify its test split, or train "
                                 "with --n-val N to carve N validation examples from the training pool")  # fmt: skip
            if n_test is not None and n_test > len(y):
                raise ValueError(f"n_test={n_test} exceeds the {len(y)} validation examples of {run_dir}; "
                                 f"choose n_test <= {len(y)}")  # fmt: skip
            x, y = x[:n_test], y[:n_test]
        result = certify_model(run.model, x, y, radii, run.splits.input_shape)
        result = dataclasses.replace(
            result, epoch=run.epoch, weights=run.weights, data=run.data, data_override=run.data_override, split=split
        )
        images = "test images" if split == "test" else "validation examples"
        log(f"clean accuracy {100 * result.clean:.2f}% on {result.n} {images} ({run.weights} weights, "
            f"epoch {run.epoch}); Lipschitz bound {result.lipschitz_bound:.6g}")  # fmt: skip
        for rule, values in (("per pair", result.pairwise), ("global", result.global_rule)):
            cells = ", ".join(f"{k}: {100 * v:.2f}" for k, v in values.items())
            log(f"  certified l2 accuracy (%), {rule} rule, at eps {cells}")
        write_certification(folder, result)
    return result
