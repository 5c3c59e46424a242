"""Sweeps: grids, names, the local submitit executor end to end, resumption, the Slurm job scripts,
and the report's selection by validation accuracy."""

import json
import os
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from kernel_reg.app.cli import main
from kernel_reg.app.config import check_run_name, identity, preset_config, setting_key, short_hash
from kernel_reg.app.evaluation import evaluate_run
from kernel_reg.app.report import collect_runs, selection_table
from kernel_reg.app.rundir import read_metrics, read_robustness, run_path, write_metrics
from kernel_reg.app.suite import EvalSettings
from kernel_reg.app.sweep import (
    Cluster,
    expand,
    finished,
    load_grid_file,
    normalize_grid,
    parse_grid,
    parse_seeds,
    run_name,
    run_sweep,
)
from kernel_reg.app.training import train


def test_grids_expand_to_named_typed_runs(tmp_path, tiny):
    grid = parse_grid("reg=gradient-penalty+project-sn lmbda=0.01,0.1 tau=1.5")
    assert grid == {"regs": [("gradient-penalty", "project-sn")], "lmbda": [0.01, 0.1], "tau": [1.5]}
    configs = expand(tiny(tmp_path), [grid, parse_grid("reg=none")], seeds=2)
    flags = "h" + short_hash(json.dumps(identity_changes(configs[2]), sort_keys=True))  # the sweep's own flags
    assert [c.name for c in configs] == [
        f"gradient-penalty+project-sn_lmbda0.01_tau1.5_s0_{flags}",
        f"gradient-penalty+project-sn_lmbda0.1_tau1.5_s0_{flags}",
        f"none_s0_{flags}",
        f"gradient-penalty+project-sn_lmbda0.01_tau1.5_s1_{flags}",
        f"gradient-penalty+project-sn_lmbda0.1_tau1.5_s1_{flags}",
        f"none_s1_{flags}",
    ]
    assert [c.shuf_seed for c in configs] == [0, 0, 0, 1, 1, 1] and configs[1].reg("gradient-penalty")["lmbda"] == 0.1
    restricted = expand(tiny(tmp_path), [parse_grid("reg=adv-perturbation epsilon=0.3 delta_candidates=16")], 1)
    assert restricted[0].name.startswith("adv-perturbation_epsilon0.3_candidates16_s0")
    (tmp_path / "grid.yaml").write_text("- reg: [pgd-l2]\n  epsilon: [0.5, 1.0]\n- {reg: [none]}\n")
    assert load_grid_file(tmp_path / "grid.yaml") == [{"regs": [("pgd-l2",)], "epsilon": [0.5, 1.0]}, {"regs": [()]}]
    (tmp_path / "grid.json").write_text(json.dumps({"reg": "vat", "vat_alpha": [1, 2]}))
    assert load_grid_file(tmp_path / "grid.json") == [{"regs": [("vat",)], "vat_alpha": [1, 2]}]
    vat = expand(tiny(tmp_path), load_grid_file(tmp_path / "grid.json"), 1)
    assert [c.reg("vat")["lmbda"] for c in vat] == [1.0, 2.0]  # --vat_alpha is VAT's weight
    with pytest.raises(ValueError, match="unknown key 'lmbd'"):
        parse_grid("lmbd=0.1")
    with pytest.raises(ValueError, match="regularizer must be one of"):
        expand(tiny(tmp_path), [parse_grid("reg=dropout")], 1)
    with pytest.raises(ValueError, match="lmbda applies to gradient-penalty, loss-gradl1, loss-gradl2"):
        expand(tiny(tmp_path), [parse_grid("reg=none lmbda=0.1")], 1)


@pytest.mark.parametrize(
    ("grid", "count"),
    [
        ("reg=none lr=0.01,0.05,0.1", 3),
        ("width=8,16,64", 3),
        ("n_train=100,300", 2),
        ("reg=gradient-penalty lr=0.01,0.1 lmbda=0.1,1", 4),
        ("reg=pgd-l2 epsilon=0.5,1 steps=3,5 batch_size=32,64", 8),
        ("sched_step=10,20 num_epochs=30,60 aug=true,false", 8),
        ("data_dir=embedded,/somewhere/else", 2),
        ("reg=gradient-penalty+loss-gradl2 gradient-penalty.lmbda=0.1,1 loss-gradl2.lmbda=0.1,1", 4),
    ],
)
def test_every_grid_point_gets_its_own_run_folder(tmp_path, grid, count):
    configs = expand(preset_config("fmnist300_vgg5", root=str(tmp_path)), [parse_grid(grid)], seeds=2)
    assert len(configs) == 2 * count
    assert len({c.name for c in configs}) == 2 * count
    assert len({setting_key(c) for c in configs}) == count  # the seeds of one point share its setting
    for config in configs:
        assert check_run_name(config.name) == config.name and "/" not in config.name


def identity_changes(config):
    """The fields of a run that differ from its preset, but regularizers and seeds (what a name hashes)."""
    preset = identity(preset_config(config.experiment).replace(regs=config.regs))
    skip = ("regs", "seed", "shuf_seed", "wd")
    return {k: v for k, v in identity(config).items() if v != preset[k] and k not in skip and "." not in k}


def test_a_run_name_is_a_function_of_the_configuration_alone(tmp_path):
    plain = preset_config("fmnist300_vgg5")
    names = [c.name for c in expand(plain, [parse_grid("reg=none lr=0.01,0.05")], 1)]
    assert names == ["none_lr0.01_s0", "none_s0"]  # 0.05 is the preset's: the preset's own run
    again = expand(plain.replace(lr=0.01), [parse_grid("reg=none")], 1)  # the same run, from a flag
    assert again[0].name == "none_lr0.01_s0"
    wide = expand(preset_config("fmnist300_vgg5", width=16, num_epochs=60), [parse_grid("reg=vat epsilon=1")], 2)
    assert [c.name for c in wide] == [
        "vat_lmbda1_epsilon1_width16_num_epochs60_s0",
        "vat_lmbda1_epsilon1_width16_num_epochs60_s1",
    ]
    elsewhere = expand(plain, [parse_grid("reg=none data_dir=/data/fmnist")], 1)[0]
    assert elsewhere.name == "none_s0"  # where this machine keeps the data is not what the run computes
    many = "reg=none width=16 num_epochs=60 sched_step=10 probe_size=64 n_train=250 test_batch_size=256 lr=0.01"
    hashed = expand(plain, [parse_grid(many)], 1)[0]  # too long for a name: a hash
    assert hashed.name == "none_s0_h" + short_hash(json.dumps(identity_changes(hashed), sort_keys=True))
    for config in wide + [hashed]:
        assert config == config.replace(name=run_name(config))


def test_a_sweep_that_would_share_a_folder_is_refused(tmp_path, monkeypatch, tiny):
    from kernel_reg.app import sweep

    monkeypatch.setattr(sweep, "run_name", lambda config: "same")
    with pytest.raises(ValueError, match="two grid points map to the run folder same"):
        expand(tiny(tmp_path), [parse_grid("reg=none lr=0.01,0.1")], 1)


def test_sweep_flags_for_hyperparameters_apply_where_a_regularizer_takes_them(tmp_path, tiny):
    grids = [parse_grid("reg=pgd-l2 epsilon=0.5"), parse_grid("reg=none")]
    configs = expand(tiny(tmp_path), grids, 1, defaults={"steps": 3})
    assert configs[0].reg("pgd-l2")["steps"] == 3 and configs[1].regs == ()
    with pytest.raises(ValueError, match="tau: no regularizer of the grid takes it"):
        expand(tiny(tmp_path), grids, 1, defaults={"tau": 1.0})


def test_local_sweep_runs_skips_finished_runs_and_resumes_unfinished_ones(tmp_path, tiny):
    grids = [parse_grid("reg=gradient-penalty lmbda=0.01,1"), parse_grid("reg=none")]
    configs = expand(tiny(tmp_path), grids, seeds=2)
    lines = []
    results = run_sweep(configs, Cluster("local", jobs=2), log=lines.append)
    assert len(results) == 6 and lines[0] == "sweep: 6 runs, 0 finished, 6 to run"
    for config in configs:
        assert [m.epoch for m in read_metrics(run_path(config))] == [0, 1]
    lines.clear()
    assert run_sweep(configs, Cluster("local", jobs=2), log=lines.append) == []
    assert lines == ["sweep: 6 runs, 6 finished, 0 to run"]
    longer = expand(tiny(tmp_path), [parse_grid("reg=none num_epochs=3")], seeds=1)[0]
    train(longer.replace(num_epochs=1), log=lambda _: None)  # a run cut short
    lines.clear()
    run_sweep([longer], Cluster("local", jobs=1), log=lines.append)
    assert lines[0] == "sweep: 1 runs, 0 finished, 1 to run"
    assert [m.epoch for m in read_metrics(run_path(longer))] == [0, 1, 2]  # resumed, not restarted

    table = selection_table(collect_runs(tmp_path))
    runs = {r.config.name: r for r in collect_runs(tmp_path)}
    suffix = configs[0].name.rsplit("_s0", 1)[1]
    assert suffix.startswith("_h")
    gp = {lmbda: [runs[f"gradient-penalty_lmbda{lmbda}_s{s}{suffix}"] for s in (0, 1)] for lmbda in ("0.01", "1")}
    chosen = max(gp, key=lambda k: sum(r.best.val_acc for r in gp[k]))
    tests = [100 * r.best.test_acc for r in gp[chosen]]
    mean = sum(tests) / 2
    std = (sum((t - mean) ** 2 for t in tests)) ** 0.5  # sample std of two values
    edge = "EDGE: lmbda lowest" if chosen == "0.01" else "EDGE: lmbda highest"  # a grid of two has no interior
    assert f"| gradient-penalty | lmbda={float(chosen):g} | 2 | {edge} | 2 |" in table
    pooled = ", ".join(sorted(f"fmnist1000_vgg5/{r.config.name}" for r in gp[chosen]))
    assert f"{mean:.1f} +- {std:.1f} | {pooled} |" in table


def test_slurm_sweep_writes_the_job_array_it_would_submit(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = tmp_path / "submitted"
    scripts.mkdir()
    fakes = {
        "sbatch": f'#!/bin/sh\ncp "$1" "{scripts}/"\necho "Submitted batch job 4242"\n',
        "srun": "#!/bin/sh\nexit 0\n",
    }
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code = main([
        "sweep", "--data-dir", "embedded", "--root", str(tmp_path / "runs"), "--grid", "reg=vat vat_alpha=0.5,1",
        "--seeds", "2", "--cluster", "slurm", "--partition", "gpu", "--time", "30", "--gpus-per-node", "1",
        "--jobs", "3", "--cpus-per-task", "8",
    ])  # fmt: skip
    assert code == 0
    (script,) = scripts.iterdir()
    text = script.read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=30",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --array=0-3%3",
        "#SBATCH --job-name=kernel-reg",
    ):
        assert line in text, line
    assert "submitit.core._submit" in text
    pickles = list((tmp_path / "runs" / "fmnist1000_vgg5" / ".submitit").rglob("*_submitted.pkl"))
    assert len(pickles) == 4


def test_report_marks_unfinished_runs_and_leaves_them_out_of_the_selection(tmp_path, tiny):
    from kernel_reg.app.report import markdown_table
    from kernel_reg.app.training import train

    config = tiny(tmp_path, name="cut")
    train(config, log=lambda _: None)
    (run_path(config) / "config.json").write_text(config.replace(num_epochs=5).to_json())  # as if cut short
    runs = collect_runs(tmp_path)
    assert "| none (unfinished: epoch 1) |" in markdown_table(runs)
    assert selection_table(runs) == ""


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("experiment=fmnist300_vgg5,mnist300_vgg5", "experiment cannot be a grid key: a preset sets the defaults"),
        ("shuf_seed=3,4", "shuf_seed cannot be a grid key: --seeds N sets the training-subset seeds"),
        ("name=x,y", "name cannot be a grid key"),
        ("root=a,b", "root cannot be a grid key"),
        ("lr=0.1 lr=0.2", "lr is given twice in the grid"),
        ("lr=fast", "lr: cannot read 'fast' as float"),
    ],
)
def test_grids_that_cannot_mean_what_they_say_are_refused(grid, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(grid)


@pytest.mark.parametrize(
    ("grid", "message"),
    [({"lr": []}, "lr has no values"), ({"lr": [True]}, "lr must be a number, got True"),
     ({"reg": ["none"], "regs": ["vat"]}, "give the regularizers once")],
)  # fmt: skip
def test_grid_files_are_checked_like_grids(tmp_path, grid, message, tiny):
    with pytest.raises(ValueError, match=message):
        expand(tiny(tmp_path), [normalize_grid(grid)], 1)


def test_the_sweep_flags_cannot_contradict_its_seeds(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--grid", "reg=none", "--shuf-seed", "5", "--seeds", "2", "--dry-run"])
    assert exit_info.value.code == 2 and "a sweep sets shuf_seed from --seeds N" in capsys.readouterr().err


def test_a_sweep_evaluates_again_when_asked_for_other_settings_or_after_more_training(tmp_path, tiny):
    (config,) = expand(tiny(tmp_path), [parse_grid("reg=none")], 1)
    quick = EvalSettings(l2_eps=(0.5,), linf_eps=(), steps=2, n_test=32, checks=False)
    assert not finished(config, None) and not finished(config, quick)
    train(config, log=lambda _: None)
    assert finished(config, None) and not finished(config, quick)
    evaluate_run(run_path(config), quick, "cpu")
    assert finished(config, quick)
    assert not finished(config, replace(quick, l2_eps=(1.0,)))  # other radii: evaluate again
    longer = config.replace(num_epochs=3)
    train(longer, log=lambda _: None)  # trained on: the evaluation is of older weights
    assert not finished(longer, quick)
    assert read_robustness(run_path(config)).trained_to == 1


def test_a_diverged_run_is_recorded_reported_and_skipped_by_sweeps(tmp_path, tiny):
    from kernel_reg.app.report import markdown_table
    from kernel_reg.app.rundir import read_divergence
    from kernel_reg.app.training import TrainingDiverged, train

    # lr x 1e6 after the first epoch: the second one blows up (as in test_training)
    config = expand(tiny(tmp_path, sched_step=1, sched_gamma=1e6, num_epochs=4), [parse_grid("reg=none")], 1)[0]
    with pytest.raises(TrainingDiverged) as raised:
        train(config, log=lambda _: None)
    reason = read_divergence(run_path(config))
    assert reason == str(raised.value) and "at epoch" in reason
    lines = []
    assert run_sweep([config], Cluster("local", jobs=1), log=lines.append) == []
    assert lines == ["sweep: 1 runs, 0 finished, 1 diverged (skipped; delete their diverged.json to retry), 0 to run"]
    assert f"| none (diverged: {reason.split(';')[0]}) |" in markdown_table(collect_runs(tmp_path))
    (run_path(config) / "diverged.json").write_text("{not json")  # damaged: the sweep runs it, which rewrites it
    (outcome,) = run_sweep([config], Cluster("local", jobs=1), log=lambda _: None)
    assert "became" in outcome["error"] and read_divergence(run_path(config)) is not None
    with pytest.raises(TrainingDiverged):  # `kernel-reg train` retries: the record is cleared, then written again
        train(config, log=lambda _: None)
    assert read_divergence(run_path(config)) is not None


def _study_run(folder: Path, trained_to: int, num_epochs: int = 2) -> None:
    """A run folder of a sweep trained to epoch ``trained_to``: config and metrics written through the
    run-folder module (no training), and a checkpoint."""
    from kernel_reg.app.rundir import MetricsRow, write_config

    folder.mkdir(parents=True)
    write_config(folder, preset_config("fmnist300_vgg5", name=folder.name, num_epochs=num_epochs))
    row = MetricsRow(epoch=trained_to, lr=0.05, train_loss=1.0, train_acc=0.5, val_acc=0.5, test_acc=0.5,
                     rkhs_lower_grad=1.0, rkhs_lower_delta=1.0, rkhs_upper_spectral=10.0,
                     seconds_per_epoch=0.1)  # fmt: skip
    write_metrics(folder, [row])
    (folder / "checkpoint.pt").write_text("weights")


@pytest.mark.parametrize("relative", [True, False])
def test_sync_study_copies_records_only_where_it_is_told(tmp_path, relative):
    """scripts/sync_study.sh copies each finished run's records, never a checkpoint, a hidden folder or a run
    still training, into the destination as the caller names it (a relative one once landed inside the
    source folder)."""
    import sys

    source = tmp_path / "sweep" / "results"
    run = source / "fmnist300_vgg5" / "none_s0"
    hidden = source / ".before" / "old_s0"
    training = source / "fmnist300_vgg5" / "none_s1"
    for folder, epoch in ((run, 1), (hidden, 1), (training, 0)):
        _study_run(folder, epoch)
    caller = tmp_path / "repo"
    caller.mkdir()
    target = "results/study" if relative else str(tmp_path / "elsewhere")
    script = Path(__file__).parents[1] / "scripts" / "sync_study.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", script, source, target], cwd=caller, check=True, capture_output=True, env=env)
    copied = (caller / target if relative else Path(target)) / "fmnist300_vgg5" / "none_s0"
    assert sorted(p.name for p in copied.iterdir()) == ["config.json", "metrics.jsonl"]
    assert (copied / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()
    assert not (copied.parent / "none_s1").exists()  # still training: left for a later copy
    assert sorted(p.name for p in source.iterdir()) == [".before", "fmnist300_vgg5"]  # nothing written back
    assert not list(caller.rglob("old_s0"))
    usage = subprocess.run(["bash", script, source], cwd=caller, capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "usage" in usage.stderr
    set_aside = source / "fmnist300_vgg5" / "none_s0.old-20261207-101500"  # what --fresh keeps
    shutil.copytree(run, set_aside)
    target = tmp_path / "again"
    subprocess.run(["bash", script, source, target], cwd=caller, check=True, capture_output=True, env=env)
    assert sorted(p.name for p in (target / "fmnist300_vgg5").iterdir()) == ["none_s0"]
    for args, message in (((tmp_path / "nope", target), "no such folder"), ((source, source), "one folder")):
        refused = subprocess.run(["bash", script, *args], cwd=caller, capture_output=True, text=True, env=env)
        assert refused.returncode == 2 and message in refused.stderr
    assert not (tmp_path / "nope").exists()


def test_sync_study_copies_a_diverged_run_and_names_a_damaged_one(tmp_path):
    """A diverged run is finished (its record says why); a run whose records the package cannot read is
    named and not copied, the others are, and the exit status says something was left out."""
    import sys

    source = tmp_path / "sweep"
    _study_run(source / "exp" / "good_s0", 1)
    _study_run(source / "exp" / "diverged_s0", 0, num_epochs=5)
    (source / "exp" / "diverged_s0" / "diverged.json").write_text('{"reason": "loss became nan at epoch 0"}')
    _study_run(source / "exp" / "broken_s0", 1)
    (source / "exp" / "broken_s0" / "metrics.jsonl").write_text('{"epoch": 0, "lr"')
    script = Path(__file__).parents[1] / "scripts" / "sync_study.sh"
    done = subprocess.run(["bash", script, source, tmp_path / "to"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    assert done.returncode == 1 and "exp/broken_s0" in done.stderr and "damaged" in done.stderr
    assert sorted(p.name for p in (tmp_path / "to" / "exp").iterdir()) == ["diverged_s0", "good_s0"]
    assert (tmp_path / "to" / "exp" / "diverged_s0" / "diverged.json").is_file()


def test_sync_study_brings_the_journal_of_an_evaluation_under_way_and_drops_it_once_finished(tmp_path):
    """A trained run whose evaluation is under way: its journal is copied (a later session resumes it),
    the run named while its weights are not published; once its record is written, the copy's journal goes."""
    import sys

    source, target = tmp_path / "sweep", tmp_path / "to"
    run = source / "exp" / "pgd_s0"
    _study_run(run, 1)
    (run / "robustness.journal").mkdir()
    (run / "robustness.journal" / "key").write_text("abc")
    (run / "robustness.journal" / "000001.pt").write_bytes(b"batch")
    (run / "checkpoint.pt").unlink()  # nothing to export weights from (the next test has a checkpoint)
    script = Path(__file__).parents[1] / "scripts" / "sync_study.sh"
    env = {**os.environ, "PYTHON": sys.executable}

    def sync() -> str:
        return subprocess.run(["bash", script, source, target], check=True, capture_output=True, text=True,
                              env=env).stdout  # fmt: skip

    assert "without published weights" in sync() and "exp/pgd_s0" in sync()
    copied = target / "exp" / "pgd_s0"
    assert sorted(p.name for p in (copied / "robustness.journal").iterdir()) == ["000001.pt", "key"]
    assert not (copied / "checkpoint.pt").exists()
    (run / "weights.pt").write_bytes(b"published")  # kernel-reg export
    (run / "robustness.journal" / "000002.pt").write_bytes(b"batch")
    assert "without published weights" not in sync()
    assert len(list((copied / "robustness.journal").iterdir())) == 3 and (copied / "weights.pt").is_file()
    shutil.rmtree(run / "robustness.journal")  # the evaluation finished: its record written, its journal gone
    (run / "robustness.json").write_text("{}")
    sync()
    assert (copied / "robustness.json").is_file() and not (copied / "robustness.journal").exists()


def test_sync_study_exports_the_weights_of_an_evaluation_under_way_from_a_copy_of_its_checkpoint(tmp_path, tiny_flags):
    """A trained run whose evaluation holds its folder (export in place is refused): the copy gets the
    weights that `kernel-reg export` writes, nothing is written into the study's folder, and a damaged
    checkpoint is named (exit 1) while the run's records are still copied."""
    import sys

    from kernel_reg.app import cli
    from kernel_reg.app.rundir import export_weights, locked

    source, target = tmp_path / "sweep", tmp_path / "to"
    assert cli.main(["train", *tiny_flags, "--root", str(source), "--num-epochs", "1"]) == 0
    (run,) = [p.parent for p in source.rglob("checkpoint.pt")]
    (run / "robustness.journal").mkdir()
    (run / "robustness.journal" / "key").write_text("abc")
    before = sorted(p.name for p in run.iterdir())
    script = Path(__file__).parents[1] / "scripts" / "sync_study.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    with locked(run, "kernel-reg evaluate"):  # what the evaluation under way holds
        done = subprocess.run(["bash", script, source, target], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "exported from a copy" in done.stdout and "without published weights" not in done.stdout
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written into the study's folder
    copied = target / run.relative_to(source)
    reference = tmp_path / "reference"
    shutil.copytree(run, reference)
    # torch.save writes the same bytes for the same weights: the copy is what `kernel-reg export` writes
    assert (copied / "weights.pt").read_bytes() == export_weights(reference).read_bytes()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (copied / "weights.pt").unlink()
    done = subprocess.run(["bash", script, source, target], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "damaged" in done.stderr and "weights" in done.stderr
    assert (copied / "metrics.jsonl").is_file() and not (copied / "weights.pt").exists()


def test_seeds_parse_as_a_count_or_an_inclusive_range():
    assert list(parse_seeds("3")) == [0, 1, 2]
    assert list(parse_seeds("3-7")) == [3, 4, 5, 6, 7]
    assert list(parse_seeds("5-5")) == [5]
    for bad in ("0", "-1", "7-3", "a", "3-", "1.5"):
        with pytest.raises(ValueError, match="--seeds takes N >= 1"):
            parse_seeds(bad)


def test_init_seed_per_subset_gives_each_subset_its_own_initialisation():
    base = preset_config("fmnist1000_vgg5")
    grids = [parse_grid("reg=none"), parse_grid("reg=pgd-l2 epsilon=0.3")]
    shared = expand(base, grids, range(3, 5))
    own = expand(base, grids, range(0, 5), init_per_subset=True)
    assert {(c.shuf_seed, c.seed) for c in shared} == {(3, 42), (4, 42)}
    assert {(c.shuf_seed, c.seed) for c in own} == {(s, 42 + s) for s in range(5)}
    # the subset-0 run keeps the base seed, so its folder is the one a plain sweep writes
    assert {c.name for c in own if c.shuf_seed == 0} == {c.name for c in expand(base, grids, 1)}
    names = {c.name for c in own if c.shuf_seed == 3}
    assert names == {"none_s3_seed45", "pgd-l2_epsilon0.3_s3_seed45"}
    # the methods of one subset share it: a paired comparison pairs data and initialisation
    assert len({c.seed for c in own if c.shuf_seed == 4}) == 1


def test_run_names_show_an_augmentation_that_differs_from_the_presets():
    base = preset_config("fmnist1000_vgg5")  # no augmentation
    (crop,) = expand(base, [parse_grid("reg=none aug=true aug_transforms=crop+deform")], 1)
    (auto,) = expand(base, [parse_grid("reg=stability lmbdast=0.01 aug=true")], 1)
    (plain,) = expand(base, [parse_grid("reg=none aug=false")], 1)
    assert (crop.name, auto.name, plain.name) == ("none_aug-crop+deform_s0", "stability_lmbda0.01_aug_s0", "none_s0")
    with pytest.raises(ValueError, match="aug_transforms='crop' chooses the transforms of an augmentation that is off"):
        expand(base, [parse_grid("reg=none aug=false aug_transforms=crop")], 1)
    cifar = preset_config("cifar10small1000_vgg")  # augments by default
    (off,) = expand(cifar, [parse_grid("reg=none aug=false")], 1)
    (same,) = expand(cifar, [parse_grid("reg=none")], 1)
    assert (off.name, same.name) == ("none_noaug_s0", "none_s0")
