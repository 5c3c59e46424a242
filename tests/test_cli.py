"""The command line: the original's flags, bad input, and train -> evaluate -> report end to end."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import time

import pytest
import torch

from kernel_reg.app.cli import build_parser, config_from_args, main
from kernel_reg.app.rundir import read_config, read_metrics


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
    certified = parse("--model", "lipnet", "--width", "32", "--activation", "maxmin", "--lipschitz-margin", "0.7",
                      "--reg_project_sn", "--tau", "1", "--sn-norm", "operator")  # fmt: skip
    assert (certified.model, certified.width, certified.activation, certified.lipschitz_margin) == (
        "lipnet",
        32,
        "maxmin",
        0.7,
    )
    assert certified.reg("project-sn")["norm"] == "operator"
    assert parse("--model", "lipnet", "--normalization", "operator").normalization == "operator"
    assert parse("--model", "lipnet", "--normalization", "none").normalization is None
    assert parse("--model", "lipnet", "--normalization", "orthogonal").normalization == "orthogonal"
    assert parse("--no-aug").aug is False


def test_every_configuration_flag_says_what_it_sets():
    import dataclasses

    from kernel_reg.app.config import FIELD_HELP, Config

    assert set(FIELD_HELP) == {f.name for f in dataclasses.fields(Config)} - {"regs", "experiment"}
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a for a in train._actions if a.dest in FIELD_HELP}
    assert set(flags) == set(FIELD_HELP) and all(a.help == FIELD_HELP[d] and a.help for d, a in flags.items())


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
        (["train", "--name", "/abs/x"], "without '..' or '.old-', got '/abs/x'"),
        (["train", "--name", "keep.old-me"], "without '..' or '.old-', got 'keep.old-me'"),
        (["train", "--device", "bogus"], "device must be auto, cpu, cuda, cuda:N or mps, got 'bogus'"),
        (["train", "--device", "xla"], "device must be auto, cpu, cuda, cuda:N or mps, got 'xla'"),
        (["train", "--reg", "project-sn", "--sn-norm", "frobenius"], "project-sn.norm must be one of 'reshaped'"),
        (["train", "--activation", "gelu"], "activation must be one of 'relu', 'maxmin', 'elu'"),
        (["train", "--experiment", "cifar10_vgg", "--activation", "maxmin"], "apply to vgg5_stable and lipnet only"),
        (["train", "--reg", "pgd-l2", "--reg", "pgd-linf"], "at most one adversarial training"),
        (
            ["train", "--reg", "adv-perturbation", "--delta-candidates", "0"],
            "adv-perturbation.candidates must be an integer >= 1 or none",
        ),
        (["train", "--data-dir", "/nonexistent"], "/nonexistent"),
        (["train", "--data-dir", "embedded", "--n-val", "3500"], "exceeds the 4000 examples"),
        (["train", "--steps", "zero"], "argument --steps: steps must be an integer, got 'zero'"),
        (["train", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        (["evaluate", "--attacks", "fgsm"], "--attacks must be one of"),
        (["evaluate", "/nonexistent/run"], "/nonexistent/run does not exist"),
        (["sweep", "--grid", "lr=0.1", "--dry-run", "--evaluate", "--attacks", "fgsm"], "--attacks must be one of"),
        (["sweep", "--grid", "lr=0.1", "--dry-run", "--attack-seed", "-1"], "--attack-seed must be an integer >= 0"),
        (["sweep", "--grid", "lr=0.1", "--attacks", "strong"], "--attacks set the evaluation, which runs only with"),
        (["report", "/nonexistent"], "no run with logged evaluations"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert names in err and err.count("\n") == 1


def test_train_evaluate_report_end_to_end(tmp_path, tiny_flags):
    root = tmp_path / "runs"
    for name, regs in (("base", []), ("gp", ["--reg_gradient_penalty"]), ("adv", ["--reg", "pgd-l2", "--steps", "2"])):
        argv = ["train", *tiny_flags, "--root", str(root), "--name", name, *regs]
        completed = subprocess.run([sys.executable, "-m", "kernel_reg", *argv], capture_output=True, text=True)
        assert completed.returncode == 0, completed.stderr
        assert "epoch 1, train_loss" in completed.stdout
    run = root / "fmnist1000_vgg5" / "gp"
    flags = ["--eps-l2", "0.5", "--eps-linf", "2", "--attack-steps", "3", "--queries", "20", "--eval-n-test", "200"]
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
        flags += ["--eval-n-test", "200"]
        assert main(["evaluate", "--root", str(root), "--name", name, *flags, "--no-checks"]) == 0
    strong = json.loads((root / "fmnist1000_vgg5" / "adv" / "robustness.json").read_text())
    assert strong["attacks"]["l2"].startswith("worst case of APGD-CE-l2") and "Square-l2" in strong["attacks"]["l2"]
    assert main(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "report.md").read_text()
    assert (
        "| fmnist1000_vgg5/gp | gradient-penalty | lmbda=0.1 | 64 |" in table
        and "| pgd-l2 | epsilon=0.1, steps=2 |" in table
    )
    assert "robust-l2 0.5" in table and "certified l2 0.5" in table  # PGD for one run, strong + Square for two
    gp_row = [line for line in table.splitlines() if line.startswith("| fmnist1000_vgg5/gp |")][-1]
    drops = [100 * (result[norm][k] - acc) for norm, by_key in result["doubled"].items() for k, acc in by_key.items()]
    assert len(drops) == 2 and f"| {max(drops):.1f} (2 radii) |" in gp_row  # the middle l2 and linf radii
    for png in ("learning_curves.png", "rkhs_bracket.png", "tradeoff_l2.png", "tradeoff_linf.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"


def kernel_reg(*argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "kernel_reg", *argv], capture_output=True, text=True, **kwargs)


def one_error_line(completed, *fragments):
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr, completed.stderr
    for fragment in fragments:
        assert fragment in completed.stderr, completed.stderr


def test_a_closed_stdout_never_stops_a_run(tmp_path, tiny_flags):
    """`kernel-reg train ... | head -1`: training goes on to its last epoch, quietly, and exits 0."""
    command = [sys.executable, "-m", "kernel_reg", "train", *tiny_flags, "--root", str(tmp_path), "--num-epochs", "4"]
    piped = subprocess.run(["bash", "-c", "set -o pipefail; " + " ".join(command) + " | head -1"],
                           capture_output=True, text=True)  # fmt: skip
    assert piped.returncode == 0 and piped.stdout.startswith("epoch 0") and piped.stderr == "", piped.stderr
    assert [m.epoch for m in read_metrics(tmp_path / "fmnist1000_vgg5" / "tmp")] == [0, 1, 2, 3]
    report = [sys.executable, "-m", "kernel_reg", "report", str(tmp_path)]
    piped = subprocess.run(["bash", "-c", "set -o pipefail; " + " ".join(report) + " | head -1"],
                           capture_output=True, text=True)  # fmt: skip
    assert piped.returncode == 0 and piped.stdout.startswith("## fmnist1000_vgg5") and piped.stderr == ""
    assert (tmp_path / "report.md").is_file()


def test_a_run_folder_in_use_is_refused_naming_its_holder(tmp_path, tiny_flags):
    first = subprocess.Popen(
        [sys.executable, "-m", "kernel_reg", "train", *tiny_flags, "--root", str(tmp_path), "--num-epochs", "100000",
         "--reg", "gradient-penalty", "--lmbda", "0.01"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    run_dir = tmp_path / "fmnist1000_vgg5" / "tmp"
    try:
        deadline = time.time() + 60
        while not read_metrics(run_dir):  # trained one epoch: certainly holding the lock
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        second = kernel_reg("train", *tiny_flags, "--root", str(tmp_path), "--reg", "gradient-penalty", "--lmbda", "5")
        one_error_line(second, f"{run_dir} is in use by pid {first.pid}", "(kernel-reg train)")
        evaluated = kernel_reg("evaluate", str(run_dir), "--eps-l2", "0.5", "--eps-linf")
        one_error_line(evaluated, f"in use by pid {first.pid}")
        assert read_config(run_dir).reg("gradient-penalty")["lmbda"] == 0.01
    finally:
        first.kill()
        first.wait()
    refused = kernel_reg("train", *tiny_flags, "--root", str(tmp_path), "--reg", "gradient-penalty", "--lmbda", "5")
    one_error_line(refused, "holds a run with another configuration (gradient-penalty.lmbda: saved 0.01, now 5.0")


def _read_only(folder):
    """A command prefix that runs a command with ``folder`` mounted read-only (for root too), or None."""
    if os.geteuid() != 0:
        return None
    mount = f"mount --bind -o ro {folder} {folder}"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"{mount} && ! touch {folder}/x"], capture_output=True)
    return None if probe.returncode else ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$@"', "-"]


def test_read_only_folders_fail_at_once_in_one_line(tmp_path, tiny_flags):
    root = tmp_path / "runs"
    assert kernel_reg("train", *tiny_flags, "--root", str(root), "--num-epochs", "1").returncode == 0
    run_dir = root / "fmnist1000_vgg5" / "tmp"
    if os.geteuid() != 0:
        os.chmod(run_dir, 0o555)
        os.chmod(root, 0o555)
        prefix = []
    else:
        prefix = _read_only(tmp_path)
        if prefix is None:
            pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    python = [*prefix, sys.executable, "-m", "kernel_reg"]
    # a budget that would run for hours if the folder were checked after the work
    huge = ["--eps-l2", "0.5", "--eps-linf", "--attack-steps", "1000000", "--eval-n-test", "64"]
    evaluated = subprocess.run([*python, "evaluate", str(run_dir), *huge], capture_output=True, text=True, timeout=120)
    one_error_line(evaluated, f"{run_dir} is not writable")
    trained = subprocess.run([*python, "train", *tiny_flags, "--root", str(root), "--name", "new"], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    one_error_line(trained, "is not writable")
    reported = subprocess.run([*python, "report", str(root)], capture_output=True, text=True, timeout=120)
    one_error_line(reported, f"{root} is not writable", "choose another --out")
    elsewhere = subprocess.run([*python, "report", str(root), "--out", "/tmp"], capture_output=True, text=True)
    assert elsewhere.returncode == 0 and not (run_dir / "robustness.json").exists()


def test_failed_sweep_jobs_are_reported_and_fail_the_sweep(tmp_path):
    swept = kernel_reg("sweep", "--data-dir", "/nonexistent", "--grid", "reg=none", "--jobs", "1", "--num-epochs",
                       "1", "--root", str(tmp_path), timeout=300)  # fmt: skip
    assert swept.returncode == 1, swept.stdout + swept.stderr
    assert "1 of 1 runs failed:" in swept.stdout
    assert "DataNotFoundError: fashion-mnist: looked in /nonexistent" in swept.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [("- reg: [none\n", "is not valid YAML"), ("- 3\n", "must hold a mapping of key: [values]"),
     ("- {reg: [none], lr: [fast]}\n", "lr: cannot read 'fast' as float")],
)  # fmt: skip
def test_a_bad_grid_file_is_one_line(tmp_path, capsys, text, message):
    (tmp_path / "grid.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--grid-file", str(tmp_path / "grid.yaml"), "--dry-run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path, tiny_flags):
    trained = kernel_reg("train", *tiny_flags, "--root", str(tmp_path), "--device", "cuda")
    one_error_line(trained, "device 'cuda': CUDA is not available on this machine; use --device cpu")
    assert not (tmp_path / "fmnist1000_vgg5" / "tmp").exists()
    missing = kernel_reg("train", *tiny_flags[2:], "--root", str(tmp_path), "--data-dir", str(tmp_path / "nowhere"))
    one_error_line(missing, f"fashion-mnist: looked in {tmp_path / 'nowhere'}")
    assert not (tmp_path / "fmnist1000_vgg5" / "tmp").exists()  # a run that failed before writing leaves nothing


def test_damaged_run_files_are_named_in_one_line(tmp_path, tiny_flags):
    assert kernel_reg("train", *tiny_flags, "--root", str(tmp_path), "--num-epochs", "1").returncode == 0
    run_dir = tmp_path / "fmnist1000_vgg5" / "tmp"
    flags = ["--eps-l2", "0.5", "--eps-linf", "--attack-steps", "2", "--no-checks", "--eval-n-test", "64"]
    checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(checkpoint[:100])
    one_error_line(kernel_reg("evaluate", str(run_dir), *flags), "checkpoint.pt is unreadable")
    one_error_line(
        kernel_reg("train", *tiny_flags, "--root", str(tmp_path), "--num-epochs", "2"), "checkpoint.pt is unreadable"
    )
    assert (run_dir / "checkpoint.pt").read_bytes() == checkpoint[:100]  # never started over
    (run_dir / "config.json").write_text("{")
    one_error_line(kernel_reg("evaluate", str(run_dir), *flags), f"{run_dir}/config.json is not valid JSON")


def test_evaluation_names_the_weights_it_used_and_shows_progress_only_on_a_terminal(tmp_path, tiny_flags):
    trained = kernel_reg("train", *tiny_flags, "--root", str(tmp_path), "--num-epochs", "2", "--n-val", "0")
    assert trained.returncode == 0
    run_dir = tmp_path / "fmnist1000_vgg5" / "tmp"
    flags = ["--eps-l2", "0.5", "--eps-linf", "8", "--attack-steps", "2", "--no-checks", "--eval-batch-size", "16"]
    flags += ["--eval-n-test", "64"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal of 100 columns
    process = subprocess.Popen([sys.executable, "-m", "kernel_reg", "evaluate", str(run_dir), *flags],
                               stdout=subprocess.PIPE, stderr=slave, text=True)  # fmt: skip
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        shown += chunk
    out = process.communicate()[0]
    os.close(master)
    assert process.returncode == 0
    assert b"l2 eps 0.5" in shown and b"linf eps 8/255" in shown and b"clean accuracy" in shown
    assert "clean accuracy" in out and "(last weights, epoch 1)" in out and "eps 8/255:" in out
    assert json.loads((run_dir / "robustness.json").read_text())["weights"] == "last"
