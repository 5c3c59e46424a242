"""RESULTS.md's generated tables: each is what scripts/results_tables.py makes from the committed records."""

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "results_tables.py"


def load_script():
    spec = importlib.util.spec_from_file_location("results_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_table_of_results_md_is_what_the_records_give():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "<!-- generated: paired fmnist300_vgg5 -->" in (ROOT / "RESULTS.md").read_text()


def test_a_block_is_rewritten_from_its_generator_and_nothing_else_changes(monkeypatch):
    tables = load_script()
    monkeypatch.setitem(tables.GENERATORS, "echo", lambda argument: f"| {argument} |")
    text = "before\n<!-- generated: echo x -->\n| stale |\n<!-- end generated -->\nafter\n"
    fresh, changed = tables.regenerate(text)
    assert fresh == "before\n<!-- generated: echo x -->\n| x |\n<!-- end generated -->\nafter\n"
    assert changed == ["echo x"] and tables.regenerate(fresh) == (fresh, [])


def test_an_unknown_block_kind_is_named():
    tables = load_script()
    with pytest.raises(SystemExit, match="unknown generated block 'guess'.*known: paired"):
        tables.regenerate("<!-- generated: guess x -->\n<!-- end generated -->")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- generated: echo a -->\n| a |\nprose\n<!-- generated: echo b -->\n| b |\n<!-- end generated -->\n",
         "RESULTS.md:4: a block starts inside the block 'echo a' of line 1"),  # a lost end would eat the prose
        ("<!-- generated: echo a -->\n| a |\n<!-- end generated -->\n<!-- end generated -->\n",
         "RESULTS.md:4: <!-- end generated --> ends no block"),
        ("prose\n<!-- generated: echo a -->\n| a |\n", "RESULTS.md:2: the block 'echo a' has no <!-- end"),
        ("<!-- generated: paired -->\n<!-- end generated -->\n", "RESULTS.md:1: '<!-- generated: paired -->' is not a"),
        ("<!-- generated: echo a b -->\n<!-- end generated -->\n", "no space in the argument"),
        ("<!-- generated: echo a -->\n<!-- end generated: echo a -->\n", "RESULTS.md:2: .* is not a block end"),
    ],
)  # fmt: skip
def test_markers_that_do_not_pair_are_refused_with_their_line(monkeypatch, text, message):
    tables = load_script()
    monkeypatch.setitem(tables.GENERATORS, "echo", lambda argument: f"| {argument} |")
    with pytest.raises(SystemExit, match=message):
        tables.regenerate(text)


def test_markers_may_carry_trailing_blanks_and_prose_may_quote_them(monkeypatch):
    tables = load_script()
    monkeypatch.setitem(tables.GENERATORS, "echo", lambda argument: f"| {argument} |")
    text = ("blocks sit between `<!-- generated: KIND ARGUMENT -->` markers\n"
            "<!-- generated: echo a -->  \n| old |\n<!-- end generated --> \n")  # fmt: skip
    fresh, changed = tables.regenerate(text)
    assert changed == ["echo a"] and fresh == text.replace("| old |", "| a |")


def _run_script(results, *flags):
    return subprocess.run([sys.executable, str(SCRIPT), "--results", str(results), *flags], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_the_rewrite_keeps_the_file_mode_follows_a_link_and_refuses_a_read_only_file(tmp_path):
    block = "<!-- generated: reproduction results/reproduction/none_s0_threads1.txt -->"
    stale = f"head\n{block}\n| stale |\n<!-- end generated -->\n"
    results = tmp_path / "RESULTS.md"
    results.write_text(stale)
    results.chmod(0o444)
    done = _run_script(results)
    assert done.returncode != 0 and "read-only" in done.stderr and "Traceback" not in done.stderr
    assert results.read_text() == stale  # refused, even for root (who may write anything)
    results.chmod(0o640)
    link = tmp_path / "link.md"
    link.symlink_to(results)
    done = _run_script(link)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and "| 1 | the record's machine | 16 of 16 |" in results.read_text()  # target rewritten
    assert results.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("RESULTS.md", "link.md")] == []  # no temporary left


def test_a_closed_pipe_after_the_rewrite_is_no_error(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(
        "<!-- generated: reproduction results/reproduction/none_s0_threads1.txt -->\n<!-- end generated -->\n"
    )
    command = f"{sys.executable} {SCRIPT} --results {results} | true; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert "| 1 | the record's machine | 16 of 16 |" in results.read_text()


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("reproduction results/nope.txt", "RESULTS.md:1: block 'reproduction results/nope.txt': FileNotFoundError"),
        ("robustness results/nope", "results/nope: no such folder in the repository"),
        ("augmentation fmnist300_vgg5@abc", "after '@' comes a number of epochs"),
        ("finite-difference fmnist300_vgg5", "holds 0 studies of fmnist300_vgg5"),
    ],
)  # fmt: skip
def test_a_block_whose_argument_names_no_record_is_named(block, message):
    tables = load_script()
    with pytest.raises(SystemExit, match=message):
        tables.regenerate(f"<!-- generated: {block} -->\n<!-- end generated -->\n")


def test_check_fails_and_names_a_table_that_differs_from_the_records(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("<!-- generated: paired fmnist300_vgg5 -->\n| edited by hand |\n<!-- end generated -->\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--results", str(results)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 1 and "paired fmnist300_vgg5" in done.stderr
    assert results.read_text().count("edited by hand") == 1  # --check changes nothing


def test_the_augmentation_control_pairs_each_run_with_its_reference_on_the_same_subset(tmp_path, monkeypatch):
    from test_report import make_run

    tables = load_script()
    monkeypatch.setattr(tables, "SMALL_DATA", tmp_path)
    both = {"aug": True, "aug_transforms": "crop+deform"}
    accuracies = {  # (regularizer, augmentation) -> test accuracy on training subsets 0, 1, 2
        ("none", None): (0.700, 0.720, 0.710), ("none", "crop+deform"): (0.740, 0.750, 0.745),
        ("vat", None): (0.750, 0.760, 0.770), ("vat", "crop+deform"): (0.780, 0.785, 0.790),
        ("none", "crop"): (0.730, 0.725, 0.720), ("none", "deform"): (0.735, 0.745, 0.730),
    }  # fmt: skip
    for (reg, aug), values in accuracies.items():
        changes = {"aug": True, "aug_transforms": aug} if aug else {"aug": False}
        for subset, acc in enumerate(values):
            regs = {"regs": ("vat",)} if reg == "vat" else {}
            make_run(tmp_path, f"{reg}_{aug}_{subset}", acc, experiment="fmnist300_vgg5", shuf_seed=subset,
                     **changes, **regs)  # fmt: skip
    make_run(tmp_path, "vat_cd_unpaired", 0.9, experiment="fmnist300_vgg5", shuf_seed=9, regs=("vat",), **both)
    longer = {("none", 0): 0.76, ("none", 1): 0.77, ("vat", 0): 0.80, ("vat", 1): 0.82}  # crop+deform, 2 epochs
    for (reg, subset), acc in longer.items():
        regs = {"regs": ("vat",)} if reg == "vat" else {}
        make_run(tmp_path, f"{reg}_long_{subset}", acc, experiment="fmnist300_vgg5", shuf_seed=subset, num_epochs=2,
                 **both, **regs)  # fmt: skip
    table = tables.augmentation("fmnist300_vgg5")
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}

    def mean_of(a, b):  # the paired mean difference in points, by hand
        return sum(100 * (x - y) for x, y in zip(accuracies[a], accuracies[b])) / 3

    expected = {
        "baseline + crop+deform - baseline": mean_of(("none", "crop+deform"), ("none", None)),
        "baseline + crop - baseline": mean_of(("none", "crop"), ("none", None)),
        "vat + crop+deform - baseline + crop+deform": mean_of(("vat", "crop+deform"), ("none", "crop+deform")),
        "vat + crop+deform - vat": mean_of(("vat", "crop+deform"), ("vat", None)),
        "vat - baseline + deform": mean_of(("vat", None), ("none", "deform")),  # the penalty or the deformations
        "baseline + deform - baseline": mean_of(("none", "deform"), ("none", None)),
    }
    for label, mean in expected.items():
        assert f" | 3 | {mean:+.2f} [" in rows[label], (label, rows[label])  # the unpaired subset 9 is left out
    assert f"over the {len(expected)} comparisons" in table  # the 2-epoch runs are another arm
    table = tables.augmentation("fmnist300_vgg5@2")  # the longer arm against the runs without augmentation
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    gain = (100 * (0.80 - 0.76) + 100 * (0.82 - 0.77)) / 2
    assert f" | 2 | {gain:+.2f} [" in rows["vat + crop+deform - baseline + crop+deform"]
    alone = (100 * (0.80 - accuracies[("vat", None)][0]) + 100 * (0.82 - accuracies[("vat", None)][1])) / 2
    assert f" | 2 | {alone:+.2f} [" in rows["vat + crop+deform - vat"]
    assert "over the 3 comparisons" in table and "| baseline + deform - baseline |" not in table
    assert "Trained 2 epochs with augmentation, 1 without." in table
    plain_long = {("none", 0): 0.74, ("none", 1): 0.73, ("vat", 0): 0.81, ("vat", 1): 0.79}  # 2 epochs, no aug
    for (reg, subset), acc in plain_long.items():
        regs = {"regs": ("vat",)} if reg == "vat" else {}
        make_run(tmp_path, f"{reg}_plain_long_{subset}", acc, experiment="fmnist300_vgg5", shuf_seed=subset,
                 num_epochs=2, aug=False, **regs)  # fmt: skip
    tables._studies.cache_clear()  # the script reads the records once per process
    table = tables.augmentation("fmnist300_vgg5@2")  # now each comparison is at one schedule
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    alone = (100 * (0.80 - 0.81) + 100 * (0.82 - 0.79)) / 2
    assert f" | 2 | {alone:+.2f} [" in rows["vat + crop+deform - vat"]
    baseline = (100 * (0.76 - 0.74) + 100 * (0.77 - 0.73)) / 2
    assert f" | 2 | {baseline:+.2f} [" in rows["baseline + crop+deform - baseline"]
    assert "Trained 2 epochs with augmentation, 2 without." in table
    table = tables.augmentation("fmnist300_vgg5")  # the main arm keeps the main study (fewest epochs)
    assert f" | 3 | {expected['vat + crop+deform - vat']:+.2f} [" in table
    make_run(tmp_path, "none_plain_long_again", 0.7, experiment="fmnist300_vgg5", shuf_seed=0, num_epochs=2,
             aug=False, lr=0.01)  # fmt: skip
    tables._studies.cache_clear()
    with pytest.raises(SystemExit, match="two studies of fmnist300_vgg5 without augmentation at 2 epochs"):
        tables.augmentation("fmnist300_vgg5@2")  # another study at that schedule: which one would be a guess


def test_claim_2_pairs_each_combination_with_pgd_at_its_epsilon_and_shows_the_loss_plateau(tmp_path, monkeypatch):
    import dataclasses

    from kernel_reg.app.rundir import MetricsRow, run_path, write_metrics, write_robustness
    from test_report import make_run, robustness

    tables = load_script()
    monkeypatch.setattr(tables, "CLAIM2", tmp_path)
    settings = {  # name -> (regularizer changes, clean, robust at l2 1, last training loss) on subsets 0, 1, 2
        "none": ({}, (0.90, 0.91, 0.89), (0.10, 0.12, 0.11), (0.20, 0.22, 0.21)),
        "pgd": ({"regs": ("pgd-l2",), "epsilon": 1.0}, (0.80, 0.82, 0.81), (0.50, 0.52, 0.49), (0.40, 0.41, 0.42)),
        "both": ({"regs": ("pgd-l2", "project-sn"), "epsilon": 1.0, "tau": 1.5}, (0.79, 0.80, 0.80),
                 (0.53, 0.56, 0.50), (0.45, 0.44, 0.46)),
    }  # fmt: skip
    for name, (changes, clean, robust, loss) in settings.items():
        for subset in range(3):
            config = make_run(tmp_path, f"{name}_{subset}", 0.5, experiment="fmnist_vgg5", n_train=10000,
                              num_epochs=60, sched_step=30, shuf_seed=subset, seed=42 + subset, **changes)  # fmt: skip
            first = MetricsRow(epoch=0, lr=0.05, train_loss=4 * loss[subset], train_acc=0.5, val_acc=0.5, test_acc=0.5,
                               rkhs_lower_grad=1.0, rkhs_lower_delta=1.0, rkhs_upper_spectral=10.0,
                               seconds_per_epoch=0.1, eval_seconds=0.1)  # fmt: skip
            # epochs 0-59, the rate decayed after epoch 29: the last stage runs from the evaluation at 30 to 59
            rows = [first, dataclasses.replace(first, epoch=30, train_loss=2 * loss[subset]),
                    dataclasses.replace(first, epoch=59, train_loss=loss[subset])]  # fmt: skip
            write_metrics(run_path(config), rows)
            record = robustness(2000, "-", trained_to=59, clean=clean[subset])
            write_robustness(run_path(config), dataclasses.replace(record, l2={"0.5": 0.7, "1": robust[subset]}))
    table = tables.claim2("fmnist_vgg5")
    lines = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    # the loss halved over the last stage (4L at 0 is before it): -50%, every seed; the pgd row's clean mean is 81.0
    assert lines["pgd-l2 (epsilon=1)"].startswith("| pgd-l2 (epsilon=1) | 3 | 81.0 [")
    assert lines["pgd-l2 (epsilon=1)"].endswith("| 0.410 | -50.0 [-50.0, -50.0] |")
    both = "pgd-l2+project-sn (epsilon=1, tau=1.5)"
    robust_gain = sum(100 * (a - b) for a, b in zip(settings["both"][2], settings["pgd"][2])) / 3  # by hand: +2.67
    clean_gain = sum(100 * (a - b) for a, b in zip(settings["both"][1], settings["pgd"][1])) / 3  # -1.33
    assert f" | 3 | {robust_gain:+.2f} [" in lines[f"{both} - pgd-l2 (epsilon=1), l2 1"]
    assert f" | 3 | {clean_gain:+.2f} [" in lines[f"{both} - pgd-l2 (epsilon=1), clean"]
    assert "first 2000 test images" in table and "over the 3 comparisons" in table  # clean, l2 0.5, l2 1
    assert not any(label.startswith("none -") for label in lines)  # the baseline is no combination
    import shutil

    shutil.copytree(run_path(config).parent / "pgd_0", run_path(config).parent / "pgd_0_again")  # one run, twice
    tables._studies.cache_clear()
    assert tables.claim2("fmnist_vgg5") == table  # counted once: 3 seeds, the same means and intervals


def test_the_reproduction_table_reads_each_output_and_refuses_another_file(tmp_path, monkeypatch):
    tables = load_script()
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    (tmp_path / "same.txt").write_text(
        "$ kernel-reg reproduce results/x/exp/run_a --threads 1\nepoch 0, val_acc 0.5000, test_acc 0.4000\n"
        "3 of 3 evaluations bit-identical; last test accuracy recorded 80.39%, retrained 80.39%\nexit 0\n"
    )
    (tmp_path / "apart.txt").write_text(
        "$ kernel-reg reproduce results/x/exp/run_b/ --threads 4\n"
        "retraining results/x/exp/run_b into runs/exp/run_b on 4 thread(s)\n"
        "epoch 0, val_acc 0.5000, test_acc 0.4000\n"
        "not the record's machine: the record trained on cpu: Intel Xeon, 4 thread(s), AVX512; this run on "
        "cpu: AMD EPYC 7B13, 4 thread(s), AVX2; its numbers may differ in the last bits, then drift\n"
        "1 of 3 evaluations bit-identical; last test accuracy recorded 80.39%, retrained 80.10%\n"
        "kernel-reg reproduce: the retrained run differs from the record (largest differences: train_loss 0.1, "
        "train_acc 0.02, val_acc 0.0031, test_acc 0.0125); the record trained on cpu: Intel Xeon, 4 thread(s), "
        "AVX512; this run on cpu: AMD EPYC 7B13, 4 thread(s), AVX2\nexit 1\n"
    )
    rows = tables.reproduction("same.txt,apart.txt").splitlines()[2:]
    assert rows[0] == "| `exp/run_a` | 1 | the record's machine | 3 of 3 | 0.00 / 0.00 | 80.39 / 80.39 | 0 |"
    assert rows[1] == "| `exp/run_b` | 4 | AMD EPYC 7B13, AVX2 | 1 of 3 | 1.25 / 0.31 | 80.39 / 80.10 | 1 |"
    (tmp_path / "plain.txt").write_text(  # a run without a validation split
        "$ kernel-reg reproduce results/x/exp/run_c --threads 1\nepoch 0, train_loss 1.0, test_acc 0.4000\n"
        "0 of 1 evaluations bit-identical; last test accuracy recorded 40.00%, retrained 41.00%\n"
        "kernel-reg reproduce: the retrained run differs from the record (largest differences: train_loss 0.1, "
        "train_acc 0.02, val_acc 0, test_acc 0.01)\nexit 1\n"
    )
    assert tables.reproduction("plain.txt").splitlines()[2] == (
        "| `exp/run_c` | 1 | the record's machine | 0 of 1 | 1.00 / - | 40.00 / 41.00 | 1 |"
    )
    (tmp_path / "log.txt").write_text("epoch 0, test_acc 0.4\n")
    with pytest.raises(SystemExit, match="log.txt is not the output of kernel-reg reproduce"):
        tables.reproduction("log.txt")


def test_an_interval_never_prints_minus_zero():
    tables = load_script()
    assert tables.interval([-0.01]) == "0.0"
    assert tables.interval([-0.04, 0.02, 0.0]).startswith("0.0 [")  # the mean, -0.0067, rounds to 0.0
    assert tables.interval([-2.0]) == "-2.0"


def load_front_script():
    spec = importlib.util.spec_from_file_location("claim2_front", ROOT / "scripts" / "claim2_front.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_front_is_every_point_no_other_matches_or_beats_in_both():
    """Against the definition, checked pair by pair on random points with ties."""
    import random

    front = load_front_script().front
    rng = random.Random(0)
    for _ in range(200):
        points = {f"p{i}": (rng.choice([0.7, 0.8, 0.9]), rng.choice([0.1, 0.2, 0.3])) for i in range(6)}
        kept = front(points)
        for name, (x, y) in points.items():
            beaten = any(a >= x and b >= y and (a, b) != (x, y) for a, b in points.values())
            assert (name in kept) == (not beaten)
    assert front({"a": (0.9, 0.1), "b": (0.9, 0.1)}) == ["a", "b"]  # equal points: neither dominates


def _claim2_study(root, settings):
    """Evaluated claim-2 runs: name -> (regularizer changes, [(clean, robust at l2 1) per subset])."""
    import dataclasses

    from kernel_reg.app.rundir import run_path, write_robustness
    from kernel_reg.app.suite import EvalSettings
    from test_report import make_run, robustness

    evaluated = EvalSettings(
        l2_eps=(0.5, 1.0), linf_eps=(), attacks=("strong",), n_test=2000, converge_every_radius=True
    )
    for name, (changes, points) in settings.items():
        for subset, (clean, robust) in enumerate(points):
            config = make_run(root, f"{name}_s{subset}", 0.5, experiment="fmnist_vgg5", n_train=10000,
                              shuf_seed=subset, seed=42 + subset, **changes)  # fmt: skip
            record = robustness(2000, "-", clean=clean, settings=evaluated)
            write_robustness(run_path(config), dataclasses.replace(record, l2={"0.5": robust + 0.1, "1": robust}))
            (run_path(config) / "weights.pt").write_bytes(b"")  # published weights (their presence is read)
    return evaluated


def test_the_front_script_evaluates_each_front_setting_on_every_image_as_its_record_was(tmp_path, capsys):
    import argparse
    import shlex

    from kernel_reg.app import suite

    script = load_front_script()
    evaluated = _claim2_study(tmp_path, {
        "none": ({}, [(0.90, 0.10), (0.92, 0.12)]),  # the cleanest
        "pgd1": ({"regs": ("pgd-l2",), "epsilon": 1.0}, [(0.80, 0.50), (0.82, 0.50)]),
        "pgd2": ({"regs": ("pgd-l2",), "epsilon": 2.0}, [(0.70, 0.60), (0.70, 0.62)]),  # the most robust
        "worse": ({"regs": ("pgd-l2",), "epsilon": 1.5}, [(0.75, 0.45), (0.75, 0.45)]),  # below pgd1 on both
    })  # fmt: skip
    assert script.main([str(tmp_path / "fmnist_vgg5"), "--out", "OUT", "--device", "cuda"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# front at l2 0.5: none; pgd-l2 (epsilon=1); pgd-l2 (epsilon=2)"
    commands = [shlex.split(line) for line in out if not line.startswith("#")]
    assert [Path(c[2]).name for c in commands] == ["none_s0", "pgd1_s0", "pgd2_s0"]  # first subsets, no 'worse'
    parser = argparse.ArgumentParser()
    suite.add_flags(parser)
    parser.add_argument("--out")
    parser.add_argument("--weights")
    parser.add_argument("--device")
    args = parser.parse_args(commands[0][3:])
    assert suite.from_args(args) == dataclasses.replace(evaluated, n_test=None)  # every image, the same attacks
    assert (args.out, args.weights, args.device) == ("OUT", "last", "cuda")
    (tmp_path / "OUT" / "pgd1_s0").mkdir(parents=True)  # one evaluation done (as `evaluate --out OUT` writes it)
    (tmp_path / "OUT" / "pgd1_s0" / "robustness.json").write_text("{}")
    assert script.main([str(tmp_path / "fmnist_vgg5"), "--out", str(tmp_path / "OUT"), "--missing"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [Path(shlex.split(c)[2]).name for c in out if not c.startswith("#")] == ["none_s0", "pgd2_s0"]
    assert f"# done: {tmp_path / 'OUT' / 'pgd1_s0' / 'robustness.json'}" in out
    # the first subset's weights lost (not published, its machine gone): the next subset's are evaluated
    (tmp_path / "fmnist_vgg5" / "pgd2_s0" / "weights.pt").unlink()
    assert script.main([str(tmp_path / "fmnist_vgg5"), "--out", "OUT"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [Path(shlex.split(c)[2]).name for c in out if not c.startswith("#")] == ["none_s0", "pgd1_s0", "pgd2_s1"]
    for subset in (0, 1):  # no weights of any subset: named, no command, exit status 1
        (tmp_path / "fmnist_vgg5" / f"none_s{subset}" / "weights.pt").unlink()
    assert script.main([str(tmp_path / "fmnist_vgg5"), "--out", "OUT"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [Path(shlex.split(c)[2]).name for c in out if not c.startswith("#")] == ["pgd1_s0", "pgd2_s1"]
    assert "# no weights of none here (no checkpoint.pt or weights.pt in none_s0, none_s1)" in "\n".join(out)


def test_the_full_test_table_sets_each_model_beside_its_record_and_refuses_other_attacks(tmp_path, monkeypatch):
    from kernel_reg.app.rundir import read_robustness, write_robustness

    tables = load_script()
    monkeypatch.setattr(tables, "CLAIM2", tmp_path)
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    tables._studies.cache_clear()
    evaluated = _claim2_study(tmp_path, {"pgd1": ({"regs": ("pgd-l2",), "epsilon": 1.0}, [(0.80, 0.50)])})
    assert "No front-defining model" in tables.claim2_full("fmnist_vgg5")
    record = read_robustness(tmp_path / "fmnist_vgg5" / "pgd1_s0")
    full = dataclasses.replace(record, n=10000, clean=0.815, l2={"0.5": 0.58, "1": 0.49},
                               settings=dataclasses.replace(evaluated, n_test=None))  # fmt: skip
    (tmp_path / "full_test" / "pgd1_s0").mkdir(parents=True)
    write_robustness(tmp_path / "full_test" / "pgd1_s0", full)
    table = tables.claim2_full("fmnist_vgg5")
    assert "| pgd-l2 (epsilon=1) | 10000 | 81.5 | 58.0 | 49.0 | 2000 | 80.0 | 60.0 | 50.0 |" in table
    write_robustness(
        tmp_path / "full_test" / "pgd1_s0",
        dataclasses.replace(full, settings=dataclasses.replace(evaluated, n_test=None, steps=10)),
    )
    with pytest.raises(SystemExit, match="other attack settings"):
        tables.claim2_full("fmnist_vgg5")
    write_robustness(tmp_path / "full_test" / "pgd1_s0", full)
    (tmp_path / "full_test" / "stray").mkdir()
    write_robustness(tmp_path / "full_test" / "stray", full)
    with pytest.raises(SystemExit, match="no evaluated run of fmnist_vgg5"):
        tables.claim2_full("fmnist_vgg5")


def test_a_reattack_is_compared_with_the_published_evaluation_image_by_image(tmp_path, monkeypatch):
    import dataclasses

    import numpy as np

    from kernel_reg.app.rundir import pack_bits, run_path, write_robustness
    from kernel_reg.app.suite import EvalSettings
    from test_report import make_run, robustness

    tables = load_script()
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    config = make_run(tmp_path / "study", "pgd", 0.8, regs=("pgd-l2",), epsilon=1.0)
    published = run_path(config)
    clean = np.array([1, 1, 1, 1, 1, 1, 0, 1], bool)
    kept = {"0.5": [1, 1, 1, 1, 0, 1, 0, 0], "2": [1, 0, 1, 1, 0, 0, 0, 0]}  # the published evaluation, 8 images

    def record(n, unbroken, targets):
        base = robustness(n, "-", settings=EvalSettings(attacks=("strong",), n_target_classes=targets))
        per_example = {"clean": pack_bits(clean[:n]), **{f"l2/{k}": pack_bits(np.array(v[:n], bool))
                                                         for k, v in unbroken.items()}}  # fmt: skip
        return dataclasses.replace(base, l2={k: float(np.mean(v[:n])) for k, v in unbroken.items()},
                                   per_example=per_example)  # fmt: skip

    write_robustness(published, record(8, kept, 3))
    again = tmp_path / "again" / published.name
    again.mkdir(parents=True)
    # on the first 4 images: at 2 it breaks image 2 as well, and spares image 1, which the published one broke
    write_robustness(again, record(4, {"0.5": [1, 1, 1, 1], "2": [1, 1, 0, 1]}, 9))
    table = tables.reattack(f"study/{published.parent.name},again")
    row = next(line for line in table.splitlines() if line.startswith("| pgd-l2 "))
    # first 4 images: clean 4/4; at 0.5 all kept by both; at 2 each keeps 3, both only images 0 and 3
    assert row == "| pgd-l2 | epsilon=1 | 100.0 | 100.0 / 100.0 / 100.0 | 75.0 / 75.0 / 50.0 | 0 / 1 | 0 / 1 |"
    assert "first 4 test images" in table and "3 target classes" in table and "9 target classes" in table
    other = dataclasses.replace(record(4, kept, 9), per_example={**record(4, kept, 9).per_example,
                                                                 "clean": pack_bits(~clean[:4])})  # fmt: skip
    write_robustness(again, other)  # other weights: their clean predictions differ
    with pytest.raises(SystemExit, match="not the published evaluation's weights"):
        tables.reattack(f"study/{published.parent.name},again")
