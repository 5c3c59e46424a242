"""APGD, Square and the worst case: exact answers on linear models, comparisons on a trained network,
and the gradient-masking checks."""

import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernel_reg import attacks, lipschitz
from kernel_reg.app.data import EMBEDDED, load_arrays, make_splits
from kernel_reg.app.evaluation import evaluate_model
from kernel_reg.app.metrics import robust_accuracy
from kernel_reg.app.suite import EvalSettings

N = 200


@pytest.fixture(scope="module")
def linear_problem():
    """f(x) = W x + b on 1x4x5 'images', some labels wrong, no input range."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 5)).double()
    x = 0.5 * torch.randn(N, 1, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    flip = torch.rand(N) < 0.1
    y[flip] = torch.randint(0, 5, (int(flip.sum()),))
    return model, x, y


def exact_robust_accuracy(model, x, y, eps, norm):
    """Robust iff correct and every margin (f_y - f_j)(x) / ||w_y - w_j||_q exceeds eps (q = 2, or 1 for linf)."""
    weight = model[1].weight.detach()
    with torch.no_grad():
        logits = model(x)
    robust = 0
    for i in range(len(y)):
        if logits[i].argmax() != y[i]:
            continue
        yi = int(y[i])
        distances = [
            float((logits[i, yi] - logits[i, j]) / (weight[yi] - weight[j]).norm(p=2 if norm == "l2" else 1))
            for j in range(weight.shape[0])
            if j != yi
        ]
        robust += min(distances) > eps
    return robust / len(y)


def accuracy_under(model, attack, x, y):
    x_copy = x.clone()
    x_adv = attack(model, x, y)
    assert torch.equal(x, x_copy)
    return float((model(x_adv).argmax(1) == y).double().mean())


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.3), ("l2", 0.8), ("linf", 0.05), ("linf", 0.15)])
def test_attacks_on_a_linear_model_against_the_closed_form(linear_problem, norm, eps):
    model, x, y = linear_problem
    exact = exact_robust_accuracy(model, x, y, eps, norm)
    assert 0.0 < exact < 0.9  # the radius matters
    pgd = (
        attacks.PGDL2(eps=eps, steps=50, clip=None)
        if norm == "l2"
        else attacks.PGDLinf(eps=eps, steps=50, step_size=eps / 10, clip=None)
    )
    members = {
        "pgd": pgd,
        "apgd-ce": attacks.APGD(norm=norm, eps=eps, loss="ce", steps=50, clip=None),
        "apgd-dlr": attacks.APGD(norm=norm, eps=eps, loss="dlr", steps=50, clip=None),
        "apgd-t": attacks.APGD(norm=norm, eps=eps, loss="dlr", targeted=True, steps=50, clip=None),
        "square": attacks.Square(norm=norm, eps=eps, queries=500, clip=None),
    }
    for name, attack in members.items():
        assert accuracy_under(model, attack, x, y) >= exact - 1e-12, name  # only real adversarial examples
    strong = accuracy_under(model, attacks.strong(norm=norm, eps=eps, steps=50, clip=None), x, y)
    assert exact <= strong <= exact + 1 / N
    if norm == "l2":
        bound = lipschitz.lipschitz_upper_bound(model, (1, 4, 5))
        assert lipschitz.certified_accuracy(model, x, y, eps, bound) < exact  # sqrt(2) ||W||: loose here
        # the pairwise certificate of a linear model is its exact robust accuracy
        assert lipschitz.certified_accuracy(model, x, y, eps) == pytest.approx(exact)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_apgd_and_square_stay_in_the_ball_and_the_range(norm):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x, y = torch.rand(16, 1, 6, 6), torch.randint(0, 5, (16,))
    eps = 0.5 if norm == "l2" else 0.1
    for attack in (attacks.APGD(norm=norm, eps=eps, steps=10), attacks.Square(norm=norm, eps=eps, queries=100)):
        delta = attack(model, x, y) - x
        size = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)
        assert torch.all(size <= eps * (1 + 1e-5))
        assert (x + delta).min() >= 0 and (x + delta).max() <= 1


def test_apgd_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (then > 1)
    from kernel_reg.attacks.apgd import _apgd_checkpoints

    assert _apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.fixture(scope="module")
def trained():
    """A small convolutional network trained for a few epochs on the embedded Fashion-MNIST subset."""
    torch.manual_seed(2)
    splits = make_splits(load_arrays("fashion-mnist", EMBEDDED), 1000, 0, 0, torch.device("cpu"), n_test=200)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for start in range(0, 1000, 100):
            xb, yb = splits.train_x[start : start + 100], splits.train_y[start : start + 100]
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    model.eval()
    return model, splits.test_x, splits.test_y


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(trained):
    model, x, y = trained
    for norm, eps in (("l2", 1.0), ("linf", 8 / 255)):
        pgd = (
            attacks.PGDL2(eps=eps, steps=20, step_size=eps / 4)
            if norm == "l2"
            else attacks.PGDLinf(eps=eps, steps=20, step_size=eps / 4)
        )
        torch.manual_seed(3)
        apgd = robust_accuracy(model, attacks.APGD(norm=norm, eps=eps, loss="ce", steps=20), x, y)
        assert apgd <= robust_accuracy(model, pgd, x, y)


def test_worst_case_is_below_each_member_and_accounts_for_each_break(trained):
    model, x, y = trained
    members = [
        attacks.PGDL2(eps=0.5, steps=10, step_size=0.05),
        attacks.PGDL2(eps=0.5, steps=10, step_size=0.3),
        attacks.PGDLinf(eps=0.5 / 28, steps=10, step_size=0.005),
    ]
    x_adv, breakdown = attacks.worst_case(model, members, x, y)
    with torch.no_grad():
        worst = int((model(x_adv).argmax(1) == y).sum()) / len(y)
        clean = int((model(x).argmax(1) == y).sum()) / len(y)
    for member in members:
        assert worst <= robust_accuracy(model, member, x, y)
    assert sum(breakdown.values()) == round((clean - worst) * len(y))
    assert worst == robust_accuracy(model, attacks.WorstCase(attacks=members), x, y)


class Quantize(nn.Module):
    """A hard quantization of the input: zero gradient almost everywhere, the classic masking defence."""

    def forward(self, x):
        return torch.round(x * 4) / 4


QUICK = EvalSettings(
    l2_eps=(0.5, 1.0, 2.0), linf_eps=(4 / 255, 8 / 255, 16 / 255), steps=10, l2_step_size=0.25, queries=300
)


def test_masking_checks_fire_on_a_masked_model_and_stay_quiet_on_an_ordinary_one(trained):
    model, x, y = trained
    torch.manual_seed(4)
    ordinary = evaluate_model(model, x, y, QUICK, (1, 28, 28))
    assert ordinary.suspicious == [], ordinary.masking_checks
    masked = nn.Sequential(Quantize(), model)
    result = evaluate_model(masked, x, y, QUICK, (1, 28, 28))
    assert "zero input gradients" in result.suspicious
    assert any("score-based attack beats the gradient attacks" in c for c in result.suspicious)
    assert result.certified_l2 is None and "Quantize" in result.certified_note
    square = result.check("l2 score-based attack beats the gradient attacks")
    assert square.fired and square.eps == 1.0 and square.values["broken"] > 1  # the numbers, not only a sentence
    assert f"broke {square.values['broken']} of the {square.values['survivors']} examples" in square.detail


def test_a_certificate_above_the_attack_is_flagged_as_a_bug(trained):
    model, x, y = trained
    settings = EvalSettings(l2_eps=(0.5,), linf_eps=(4 / 255,), steps=5, queries=20)
    result = evaluate_model(model, x, y, settings, (1, 28, 28))
    assert "certified accuracy exceeds robust accuracy (a bug)" not in result.suspicious
    from kernel_reg.app.evaluation import masking_checks

    accuracies = {"l2": result.l2, "linf": result.linf}
    checks, _ = masking_checks(model, x, y, settings, accuracies, {"0.5": 1.0}, {})
    assert any(c.fired and "(a bug)" in c.check for c in checks)


def test_convergence_is_checked_at_every_radius_when_asked(trained):
    model, x, y = trained
    settings = EvalSettings(l2_eps=(0.25, 0.5, 1.0), linf_eps=(), steps=5, l2_step_size=0.2, queries=20)
    middle_only = evaluate_model(model, x, y, settings, (1, 28, 28))
    assert list(middle_only.doubled["l2"]) == ["0.5"] and middle_only.linf == {}
    assert "linf" not in middle_only.attacks and middle_only.attacks["l2"].startswith("PGD-l2 (5 steps")
    every = evaluate_model(model, x, y, replace(settings, converge_every_radius=True), (1, 28, 28))
    assert sorted(every.doubled["l2"], key=float) == ["0.25", "0.5", "1"]
    convergence = [c for c in every.masking_checks if "not converged" in c.check]
    assert len(convergence) == 3
    for check, (key, doubled) in zip(convergence, every.doubled["l2"].items()):
        assert doubled <= every.clean and check.values["doubled"] == doubled
        assert check.fired == (doubled < every.l2[key] - 0.01)


def test_the_printed_summary_gives_the_doubled_budget_the_square_check_and_what_fired():
    from kernel_reg.app import checks
    from kernel_reg.app.evaluation import summary
    from kernel_reg.app.rundir import Robustness

    square = checks.square_beats_gradients("l2", 1.0, broken=3, survivors=120, queries=500, n=200)
    converged = checks.not_converged("l2", 0.5, accuracy=0.8, doubled=0.79)
    result = Robustness(
        clean=0.9, n=200, l2={"0.5": 0.8, "1": 0.6}, linf={}, lipschitz_bound=10.0, certified_l2={"0.5": 0.1, "1": 0.0},
        attacks={}, settings=QUICK, doubled={"l2": {"1": 0.55, "0.5": 0.79}}, masking_checks=(square, converged),
    )  # fmt: skip
    lines = summary(result)
    assert "  l2 with twice the steps and restarts (%) at eps 0.5: 79.0, 1: 55.0" in lines  # by radius
    assert f"  {square.detail}" in lines and "broke 3 of the 120" in square.detail
    assert f"  {converged.detail}" not in lines  # only the Square checks' details are printed
    fired = [c.check for c in (square, converged) if c.fired]
    assert f"  gradient-masking checks: 2 run, {len(fired)} fired:" in lines
    assert [line for line in lines if line.startswith("  WARNING")] == [f"  WARNING: {name}" for name in fired]


RESUMABLE = EvalSettings(
    l2_eps=(0.5, 1.0), linf_eps=(8 / 255,), attacks=("strong",), steps=3, n_target_classes=2, queries=20,
    batch_size=50, converge_every_radius=True, seed=3,
)  # fmt: skip


@pytest.mark.parametrize("share", [0.1, 0.5, 0.95])
def test_an_interrupted_evaluation_resumes_from_its_journal_to_the_record_of_an_uninterrupted_one(
    trained, tmp_path, monkeypatch, share
):
    """Interrupted at batch k (share of all batches: in the first attack, a middle radius, the last checks), run
    again: the first k - 1 batches come from the journal (the generator restored after each), the result is
    the uninterrupted evaluation's, every field, and the journal is gone only once the caller removes it."""
    from kernel_reg.app.journal import Journal

    model, x, y = trained
    whole = evaluate_model(model, x, y, RESUMABLE, (1, 28, 28))
    asked = []
    real = Journal.batch

    def counting(self, stage, index, compute):
        asked.append(f"{stage}#{index}")
        return real(self, stage, index, compute)

    monkeypatch.setattr(Journal, "batch", counting)
    assert evaluate_model(model, x, y, RESUMABLE, (1, 28, 28), journal=tmp_path / "all") == whole
    total, cut = len(asked), max(2, int(share * len(asked)))
    assert total > 20 and len(set(asked)) == total  # every stage's batches, each once

    def interrupted(self, stage, index, compute):
        if len(asked) + 1 == cut:
            raise KeyboardInterrupt
        return counting(self, stage, index, compute)

    asked.clear()
    monkeypatch.setattr(Journal, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(model, x, y, RESUMABLE, (1, 28, 28), journal=tmp_path / "journal")
    monkeypatch.setattr(Journal, "batch", real)
    lines = []
    resumed = evaluate_model(model, x, y, RESUMABLE, (1, 28, 28), journal=tmp_path / "journal", log=lines.append)
    assert lines == [f"journal: resuming, {cut - 1} batches already evaluated"]
    assert resumed == whole
    assert len(list((tmp_path / "journal").glob("*.pt"))) == total  # the caller removes it


def test_a_journal_resumed_on_another_machine_says_so_in_the_record(trained, tmp_path, monkeypatch):
    """Half the batches journaled on another kind of machine (or, before 0.2.4, on one not recorded), the rest
    here: the numbers are the uninterrupted evaluation's, the record and the summary name both machines in
    that order, and resuming says where the journal's batches were computed."""
    from kernel_reg.app import environment
    from kernel_reg.app.evaluation import summary
    from kernel_reg.app.journal import Journal

    model, x, y = trained
    settings = replace(RESUMABLE, l2_eps=(0.5,), linf_eps=(), converge_every_radius=False, checks=False)
    here = environment.machine(x.device)
    whole = evaluate_model(model, x, y, settings, (1, 28, 28))
    assert whole.machines == (here,)
    real = Journal.batch
    for other, named in (("cpu: Other CPU, AVX512, 1 thread", "cpu: Other CPU, AVX512, 1 thread"),
                         (None, "a machine not recorded")):  # fmt: skip
        journal = tmp_path / f"journal {named}"
        done = []

        def elsewhere(self, stage, index, compute):
            if len(done) == 3:
                raise KeyboardInterrupt
            done.append(stage)
            return real(self, stage, index, compute)

        monkeypatch.setattr(Journal, "batch", elsewhere)
        monkeypatch.setattr(environment, "machine", lambda device: other or "dropped below")
        with pytest.raises(KeyboardInterrupt):
            evaluate_model(model, x, y, settings, (1, 28, 28), journal=journal)
        monkeypatch.undo()
        if other is None:  # entries as 0.2.3 wrote them, without a machine
            for entry in journal.glob("*.pt"):
                saved = torch.load(entry, weights_only=True)
                del saved["machine"]
                torch.save(saved, entry)
        lines = []
        resumed = evaluate_model(model, x, y, settings, (1, 28, 28), journal=journal, log=lines.append)
        assert lines == [f"{journal.name}: resuming, 3 batches already evaluated (computed on {named}; "
                         f"this one is {here})"]  # fmt: skip
        recorded = other or "not recorded"
        assert resumed.machines == (recorded, here)
        assert replace(resumed, machines=whole.machines) == whole
        assert summary(resumed)[-1] == f"  computed on 2 machines, in this order: {recorded}; {here}"
    assert not any("computed on" in line for line in summary(whole))


def test_a_journal_of_another_evaluation_or_a_damaged_one_is_set_aside(trained, tmp_path):
    model, x, y = trained
    settings = replace(RESUMABLE, l2_eps=(0.5,), linf_eps=(), converge_every_radius=False, checks=False)
    journal = tmp_path / "robustness.journal"
    fresh = evaluate_model(model, x, y, settings, (1, 28, 28), journal=journal)
    for other in (replace(settings, seed=4), replace(settings, steps=4)):  # other draws, other attacks
        lines = []
        assert evaluate_model(model, x, y, other, (1, 28, 28), journal=journal, log=lines.append) == evaluate_model(
            model, x, y, other, (1, 28, 28)
        )
        assert len(lines) == 1 and "the journal of another evaluation" in lines[0]
    lines = []
    evaluate_model(model[:-1].append(nn.Linear(256, 10)), x, y, settings, (1, 28, 28), journal=journal,
                   log=lines.append)  # fmt: skip
    assert "another evaluation" in lines[0]  # other weights
    evaluate_model(model, x, y, settings, (1, 28, 28), journal=journal)
    entry = sorted(journal.glob("*.pt"))[1]

    def damages():
        yield entry.write_bytes(b"")  # an entry emptied
        yield entry.write_bytes(entry.read_bytes()[:100])  # an entry cut short
        yield (journal / "key").unlink()  # no key
        shutil.rmtree(journal)
        yield journal.write_bytes(b"a file where the folder was")

    for _ in damages():
        lines = []
        assert evaluate_model(model, x, y, settings, (1, 28, 28), journal=journal, log=lines.append) == fresh
        assert len(lines) == 1 and "unreadable" in lines[0] and "starting afresh" in lines[0], lines
        assert (journal / "key").is_file()


def test_a_batch_asked_twice_in_one_evaluation_is_a_bug_not_a_replay(tmp_path):
    from kernel_reg.app.journal import Journal

    book = Journal(tmp_path / "journal", "key", torch.Generator())
    book.batch("l2 eps 1", 0, lambda: torch.ones(3, dtype=torch.bool))
    with pytest.raises(AssertionError, match="asked for twice"):
        book.batch("l2 eps 1", 0, lambda: torch.ones(3, dtype=torch.bool))


def test_the_evaluation_neither_reads_nor_moves_the_global_rng(trained):
    """Every draw, the Lipschitz lower bound's starting directions included, comes from the settings' seed:
    two evaluations after different global seeds give one record, and the global state is left as it was."""
    model, x, y = trained
    settings = replace(RESUMABLE, l2_eps=(0.5,), linf_eps=(), lipschitz_probe=20)
    records = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        records.append(evaluate_model(model, x, y, settings, (1, 28, 28)))
        assert torch.equal(torch.get_rng_state(), state)
    assert records[0] == records[1] and records[0].lipschitz_lower > 0
