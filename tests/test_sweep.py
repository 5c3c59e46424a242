"""Sweeps: grids, names, the local submitit executor end to end, resumption, the Slurm job scripts,
and the report's selection by validation accuracy."""

import json
import os
import stat

import pytest

from kernel_reg.cli import main
from kernel_reg.config import preset_config
from kernel_reg.report import collect_runs, selection_table
from kernel_reg.rundir import read_metrics, run_path
from kernel_reg.sweep import Cluster, expand, load_grid_file, parse_grid, run_sweep


def base(root, **changes):
    values = dict(
        data_dir="embedded", n_train=64, n_val=64, n_test=64, width=4, batch_size=32, num_epochs=2,
        eval_delta=1, root=str(root), probe_size=16,
    )  # fmt: skip
    return preset_config("fmnist1000_vgg5", **{**values, **changes})


def test_grids_expand_to_named_typed_runs(tmp_path):
    grid = parse_grid("reg=gradient-penalty+project-sn lmbda=0.01,0.1 tau=1.5")
    assert grid == {"regs": [("gradient-penalty", "project-sn")], "lmbda": [0.01, 0.1], "tau": [1.5]}
    configs = expand(base(tmp_path), [grid, parse_grid("reg=none")], seeds=2)
    names = [c.name for c in configs]
    assert names == [
        "gradient-penalty+project-sn_lmbda0.01_tau1.5_s0",
        "gradient-penalty+project-sn_lmbda0.1_tau1.5_s0",
        "none_s0",
        "gradient-penalty+project-sn_lmbda0.01_tau1.5_s1",
        "gradient-penalty+project-sn_lmbda0.1_tau1.5_s1",
        "none_s1",
    ]
    assert [c.shuf_seed for c in configs] == [0, 0, 0, 1, 1, 1] and configs[1].lmbda == 0.1
    restricted = expand(base(tmp_path), [parse_grid("reg=adv-perturbation epsilon=0.3 delta_candidates=16")], 1)
    assert [c.name for c in restricted] == ["adv-perturbation_epsilon0.3_delta_candidates16_s0"]
    (tmp_path / "grid.yaml").write_text("- reg: [pgd-l2]\n  epsilon: [0.5, 1.0]\n- {reg: [none]}\n")
    assert load_grid_file(tmp_path / "grid.yaml") == [{"regs": [("pgd-l2",)], "epsilon": [0.5, 1.0]}, {"regs": [()]}]
    (tmp_path / "grid.json").write_text(json.dumps({"reg": "vat", "vat_alpha": [1, 2]}))
    assert load_grid_file(tmp_path / "grid.json") == [{"regs": [("vat",)], "vat_alpha": [1.0, 2.0]}]
    with pytest.raises(ValueError, match="unknown grid key 'lmbd'"):
        parse_grid("lmbd=0.1")
    with pytest.raises(ValueError, match="regularizer must be one of"):
        expand(base(tmp_path), [parse_grid("reg=dropout")], 1)


def test_local_sweep_runs_skips_finished_runs_and_resumes_unfinished_ones(tmp_path):
    grids = [parse_grid("reg=gradient-penalty lmbda=0.01,1"), parse_grid("reg=none")]
    configs = expand(base(tmp_path), grids, seeds=2)
    lines = []
    results = run_sweep(configs, Cluster("local", jobs=2), log=lines.append)
    assert len(results) == 6 and lines[0] == "sweep: 6 runs, 0 finished, 6 to run"
    for config in configs:
        assert [m["epoch"] for m in read_metrics(run_path(config))] == [0, 1]
    lines.clear()
    assert run_sweep(configs, Cluster("local", jobs=2), log=lines.append) == []
    assert lines == ["sweep: 6 runs, 6 finished, 0 to run"]
    longer = expand(base(tmp_path, num_epochs=3), grids[1:], seeds=1)
    run_sweep(longer, Cluster("local", jobs=1), log=lines.append)
    assert [m["epoch"] for m in read_metrics(run_path(longer[0]))] == [0, 1, 2]  # resumed, not restarted

    table = selection_table(collect_runs(tmp_path))
    runs = {r.config.name: r for r in collect_runs(tmp_path)}
    gp = {lmbda: [runs[f"gradient-penalty_lmbda{lmbda}_s{s}"].best for s in (0, 1)] for lmbda in ("0.01", "1")}
    chosen = max(gp, key=lambda k: sum(b["val_acc"] for b in gp[k]))
    tests = [100 * b["test_acc"] for b in gp[chosen]]
    mean = sum(tests) / 2
    std = (sum((t - mean) ** 2 for t in tests)) ** 0.5  # sample std of two values
    assert f"| gradient-penalty | lmbda={float(chosen):g} | 2 | 2 |" in table
    assert f"{mean:.1f} +- {std:.1f} |" in table


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


def test_report_marks_unfinished_runs_and_leaves_them_out_of_the_selection(tmp_path):
    from kernel_reg.report import markdown_table
    from kernel_reg.training import train

    config = base(tmp_path, name="cut")
    train(config, log=lambda _: None)
    (run_path(config) / "config.json").write_text(config.replace(num_epochs=5).to_json())  # as if cut short
    runs = collect_runs(tmp_path)
    assert "| none (unfinished: epoch 1) |" in markdown_table(runs)
    assert selection_table(runs) == ""
