"""Reports: runs are seeds of one setting only when their whole configurations differ in seed fields;
set-aside, hidden and damaged run folders never reach a table."""

import statistics

import pytest

from kernel_reg.config import preset_config
from kernel_reg.report import collect_runs, selection_table, studies, write_report
from kernel_reg.rundir import MetricsRow, run_path, write_config, write_metrics


def make_run(root, name, test_acc, val_acc=0.5, experiment="fmnist1000_vgg5", **changes):
    """A finished run folder with one evaluation, written through the run-folder module (no training)."""
    config = preset_config(experiment, **{"root": str(root), "name": name, "num_epochs": 1, **changes})
    row = MetricsRow(
        epoch=config.num_epochs - 1, lr=0.05, train_loss=1.0, train_acc=0.5, val_acc=val_acc, test_acc=test_acc,
        rkhs_lower_grad=1.0, rkhs_lower_delta=1.0, rkhs_upper_spectral=10.0, seconds_per_epoch=0.1, eval_seconds=0.1,
    )  # fmt: skip
    write_config(run_path(config), config)
    write_metrics(run_path(config), [row])
    return config


def test_the_issues_example_is_two_studies_not_two_seeds(tmp_path):
    make_run(tmp_path, "pgd", 0.90, regs=("pgd-l2",), epsilon=1.0)
    make_run(tmp_path, "pgd", 0.02, experiment="fmnist300_vgg5", regs=("pgd-l2",), epsilon=1.0)
    groups = studies(collect_runs(tmp_path))
    assert [g.experiment for g in groups] == ["fmnist1000_vgg5", "fmnist300_vgg5"]
    assert all(len(g.runs) == 1 for g in groups)
    table, _ = write_report(tmp_path)
    assert "| pgd-l2 | epsilon=1 | 1 | 1 | 50.0 | 90.0 +- 0.0 | fmnist1000_vgg5/pgd |" in table
    assert "| pgd-l2 | epsilon=1 | 1 | 1 | 50.0 | 2.0 +- 0.0 | fmnist300_vgg5/pgd |" in table
    assert "+- 43" not in table  # the issue's 45.0 +- 43.7 pooled the two


@pytest.mark.parametrize(
    "changes", [{"n_train": 300}, {"num_epochs": 2}, {"width": 16}, {"lr": 0.01}, {"sched_step": 10}, {"aug": True}]
)
def test_runs_differing_in_anything_but_seeds_are_never_pooled(tmp_path, changes):
    make_run(tmp_path, "a", 0.8, regs=("gradient-penalty",))
    make_run(tmp_path, "b", 0.6, regs=("gradient-penalty",), **changes)
    groups = studies(collect_runs(tmp_path))
    assert len(groups) == 2
    a, b = (g.differs for g in groups)
    assert {k for k in {*a, *b} if a.get(k) != b.get(k)} == set(changes)  # the study titles tell them apart
    for group in groups:
        assert "| 1 | 1 |" in selection_table(group.runs)  # one setting tried, one seed


def test_seeds_of_one_setting_are_pooled_and_named(tmp_path):
    tests = [0.8, 0.7, 0.75]
    for seed, acc in enumerate(tests):
        make_run(tmp_path, f"gp_s{seed}", acc, regs=("gradient-penalty",), lmbda=0.1, shuf_seed=seed, seed=seed)
    make_run(tmp_path, "gp_other", 0.1, val_acc=0.1, regs=("gradient-penalty",), lmbda=1.0)
    (group,) = studies(collect_runs(tmp_path))
    table = selection_table(group.runs)
    mean, std = 100 * statistics.mean(tests), 100 * statistics.stdev(tests)
    pooled = "fmnist1000_vgg5/gp_s0, fmnist1000_vgg5/gp_s1, fmnist1000_vgg5/gp_s2"
    assert f"| gradient-penalty | lmbda=0.1 | 2 | 3 | 50.0 | {mean:.1f} +- {std:.1f} | {pooled} |" in table


def test_set_aside_hidden_and_damaged_runs_are_left_out(tmp_path):
    kept = make_run(tmp_path, "kept", 0.8)
    aside = make_run(tmp_path, "kept.old-20261125-120000", 0.1)
    (run_path(kept).parent / ".hidden").mkdir()
    (run_path(kept).parent / ".hidden" / "config.json").write_text(kept.to_json())
    broken_config = make_run(tmp_path, "broken_config", 0.1)
    (run_path(broken_config) / "config.json").write_text("{truncated")
    broken_metrics = make_run(tmp_path, "broken_metrics", 0.1)
    (run_path(broken_metrics) / "metrics.jsonl").write_text('{"epoch": 0, "lr"')
    warnings = []
    runs = collect_runs(tmp_path, warn=warnings.append)
    assert [r.name for r in runs] == ["fmnist1000_vgg5/kept"]
    assert len(warnings) == 2 and all(w.startswith("kernel-reg report: skipping ") for w in warnings)
    assert "broken_config/config.json is not valid JSON" in warnings[0]
    assert "broken_metrics/metrics.jsonl, line 1, is not a metrics row" in warnings[1]
    assert run_path(aside).is_dir()
    table, files = write_report(tmp_path, tmp_path / "out", warn=warnings.append)
    assert "kept.old" not in table and "broken" not in table and files[0].read_text() == table
