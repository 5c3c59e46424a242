"""The command line: the original's flags, bad input, and train -> evaluate -> report end to end."""

import json
import subprocess
import sys

import pytest

from kernel_reg.cli import build_parser, config_from_args, main

TINY = [
    "--data-dir", "embedded", "--n-train", "64", "--n-val", "64", "--n-test", "64", "--width", "4",
    "--batch-size", "32", "--num-epochs", "2", "--eval-delta", "1", "--probe-size", "16",
]  # fmt: skip


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_the_original_commands_are_accepted():
    config = parse("--reg_loss_gradl2", "--lmbda", "0.1", "--reg_project_sn", "--tau", "1.5")
    assert config.reg_names == ("loss-gradl2", "project-sn")
    assert config.reg("loss-gradl2")["lmbda"] == 0.1 and config.reg("project-sn")["tau"] == 1.5
    config = parse("--experiment", "cifar10small1000_vgg", "--reg_adv_perturbation_penalty", "--epsilon", "1.0")
    assert (config.dataset, config.model, config.n_train, config.lr) == ("cifar10", "vgg11", 1000, 0.05)
    assert config.reg_names == ("adv-perturbation",) and config.reg("adv-perturbation")["epsilon"] == 1.0
    config = parse("--experiment", "cifar10small5000_resnet", "--wd", "5e-4", "--num_epochs", "3", "--data_dir", "d")
    assert (config.model, config.lr, config.wd, config.num_epochs, config.data_dir) == ("resnet18", 0.1, 5e-4, 3, "d")
    config = parse("--experiment", "cifar10_vgg", "--reg_pgdlinf", "--linf_step_size", "0.002", "--shuf_seed", "2")
    assert (config.sched_step, config.n_val, config.reg_names) == (30, 0, ("pgd-linf",))
    assert config.reg("pgd-linf")["step_size"] == 0.002
    assert parse("--reg", "gradient-penalty").reg("gradient-penalty")["lmbda"] == 0.1  # the registry's default
    assert parse("--no-aug").aug is False


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["train", "--experiment", "cifar11"], "cifar10_vgg"),
        (["train", "--reg", "dropout"], "gradient-penalty"),
        (["train", "--reg", "pgd-l2", "--epsilon", "-1"], "pgd-l2.epsilon must be a finite number > 0"),
        (["train", "--epsilon", "0.5"], "epsilon applies to adv-perturbation, pgd-l2, pgd-linf, vat; none of them"),
        (
            ["train", "--reg", "vat", "--tau", "1"],
            "tau applies to project-sn; none of them is selected (selected: vat)",
        ),
        (["train", "--reg", "vat", "--pgd-l2.epsilon", "1"], "pgd-l2.epsilon applies to pgd-l2; none of them"),
        (["train", "--name", "../../x"], "name must be a relative folder name inside --root"),
        (["train", "--name", "/abs/x"], "without '..', got '/abs/x'"),
        (["train", "--device", "bogus"], "device must be auto, cpu, cuda or cuda:N, got 'bogus'"),
        (["train", "--reg", "pgd-l2", "--reg", "pgd-linf"], "at most one adversarial training"),
        (
            ["train", "--reg", "adv-perturbation", "--delta-candidates", "0"],
            "adv-perturbation.candidates must be an integer >= 1 or none",
        ),
        (["train", "--data-dir", "/nonexistent"], "/nonexistent"),
        (["train", "--data-dir", "embedded", "--n-val", "3500"], "exceeds the 4000 examples"),
        (["train", "--steps", "zero"], "argument --steps: steps must be an integer, got 'zero'"),
        (["train", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["evaluate", "--attacks", "fgsm"], "attack must be one of"),
        (["evaluate", "/nonexistent/run"], "is not a run folder"),
        (["report", "/nonexistent"], "no run with logged evaluations"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert names in err and err.count("\n") == 1


def test_train_evaluate_report_end_to_end(tmp_path):
    root = tmp_path / "runs"
    for name, regs in (("base", []), ("gp", ["--reg_gradient_penalty"]), ("adv", ["--reg", "pgd-l2", "--steps", "2"])):
        argv = ["train", *TINY, "--root", str(root), "--name", name, *regs]
        completed = subprocess.run([sys.executable, "-m", "kernel_reg", *argv], capture_output=True, text=True)
        assert completed.returncode == 0, completed.stderr
        assert "epoch 1, train_loss" in completed.stdout
    run = root / "fmnist1000_vgg5" / "gp"
    flags = ["--eps-l2", "0.5", "--eps-linf", "2", "--attack-steps", "3", "--queries", "20"]
    evaluated = subprocess.run([sys.executable, "-m", "kernel_reg", "evaluate", str(run), *flags],
                               capture_output=True, text=True)  # fmt: skip
    assert evaluated.returncode == 0 and evaluated.stderr == "", evaluated.stderr  # no progress bars off a terminal
    result = json.loads((run / "robustness.json").read_text())
    assert result["weights"] == "best-validation" and result["format"] == 2
    assert "linf robust accuracy (%) at eps 2/255:" in evaluated.stdout  # in the unit its flag takes
    assert f"l2 robust accuracy (%) at eps 0.5: {100 * result['l2']['0.5']:.1f}" in evaluated.stdout
    assert set(result["l2"]) == {"0.5"} and set(result["certified_l2"]) == {"0.5"}
    assert result["attacks"]["l2"].startswith("PGD-l2 (3 steps") and isinstance(result["suspicious"], list)
    assert list(result["linf"]) == ["0.00784314"]
    assert result["certified_l2"]["0.5"] <= result["l2"]["0.5"] <= result["clean"]
    for name in ("base", "adv"):
        flags = ["--eps-l2", "0.5", "--attack-steps", "2", "--attacks", "strong,square", "--queries", "20"]
        assert main(["evaluate", "--root", str(root), "--name", name, *flags, "--no-checks"]) == 0
    strong = json.loads((root / "fmnist1000_vgg5" / "adv" / "robustness.json").read_text())
    assert strong["attacks"]["l2"].startswith("worst case of APGD-CE-l2") and "Square-l2" in strong["attacks"]["l2"]
    assert main(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "report.md").read_text()
    assert (
        "| fmnist1000_vgg5/gp | gradient-penalty | lmbda=0.1 | 64 |" in table
        and "| pgd-l2 | epsilon=0.1, steps=2 |" in table
    )
    assert "PGD-l2 0.5" in table and "certified l2 0.5" in table
    gp_row = [line for line in table.splitlines() if line.startswith("| fmnist1000_vgg5/gp |")][-1]
    drops = [100 * (result[norm][k] - acc) for norm, by_key in result["doubled"].items() for k, acc in by_key.items()]
    assert len(drops) == 2 and f"| {max(drops):.1f} (2 radii) |" in gp_row  # the middle l2 and linf radii
    for png in ("learning_curves.png", "rkhs_bracket.png", "tradeoff_l2.png", "tradeoff_linf.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"
