"""scripts/certified_selection.py final: the certified recipe against deel-torchlip's layers over seeds, each
measure on the same test images."""

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

from kernel_reg.app.rundir import Certification, run_path, write_certification, write_robustness
from test_report import make_run, robustness

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "certified_selection.py"


def load_script():
    spec = importlib.util.spec_from_file_location("certified_selection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def certified_run(root, name, clean, certified, attacked, n=10000, attacked_n=10000):
    folder = run_path(make_run(root, name, clean, experiment="fmnist_vgg5"))
    write_certification(folder, Certification(n=n, clean=clean, lipschitz_bound=1.0, pairwise={"0.5": certified},
                                              global_rule={"0.5": certified}, weights="last", epoch=0))  # fmt: skip
    write_robustness(folder, dataclasses.replace(robustness(attacked_n, "-", clean=clean), l2={"0.5": attacked}))
    return folder


def test_the_chosen_recipe_is_compared_seed_by_seed_with_its_mean_and_interval(tmp_path):
    from scipy import stats

    script = load_script()
    recipe = [(0.866, 0.721, 0.80), (0.870, 0.718, 0.81), (0.862, 0.725, 0.79)]
    deel = [(0.857, 0.653, 0.76), (0.860, 0.650, 0.77), (0.850, 0.660, 0.75)]
    runs = [certified_run(tmp_path, f"w32_m1.0_s{s}", *v) for s, v in enumerate(recipe)]
    runs += [certified_run(tmp_path, f"torchlip_w32_m1.0_s{s}", *v) for s, v in enumerate(deel)]
    groups = script.final(runs, [0.5], "w32_m1.0")
    assert list(groups) == ["w32_m1.0", "torchlip_w32_m1.0"]  # the reference first
    table = script.final_table(groups)
    gains = [100 * (a[1] - b[1]) for a, b in zip(recipe, deel)]  # certified at 0.5, seed by seed
    mean = sum(gains) / 3
    half = stats.t.ppf(0.975, 2) * stats.tstd(gains) / 3**0.5
    row = next(line for line in table.splitlines() if line.startswith("| w32_m1.0 - torchlip_w32_m1.0 (paired)"))
    assert f"{mean:.1f} [{mean - half:.1f}, {mean + half:.1f}]" == row.split(" | ")[3]  # clean, then certified


def test_certified_and_attacked_columns_from_different_images_are_refused(tmp_path):
    run = certified_run(tmp_path, "w32_m1.0_s0", 0.86, 0.72, 0.80, attacked_n=500)
    done = subprocess.run([sys.executable, str(SCRIPT), "final", str(run), "--reference", "w32_m1.0"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "certified on 10000 test images but attacked on 500" in done.stderr
    unnamed = certified_run(tmp_path, "best_model", 0.86, 0.72, 0.80)
    done = subprocess.run([sys.executable, str(SCRIPT), "final", str(unnamed), "--reference", "best_model"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "named <recipe>_s<seed>" in done.stderr


def _script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_a_mistyped_candidate_a_missing_radius_and_a_single_seed_are_named_not_dropped(tmp_path):
    runs = [certified_run(tmp_path, f"w32_m1.0_s{s}", 0.86, 0.72, 0.80) for s in range(2)]
    (tmp_path / "fmnist_vgg5" / "report.md").write_text("a glob also matches this")
    done = _script("final", *runs, tmp_path / "fmnist_vgg5" / "w32_m1.0_s9", "--reference", "w32_m1.0")
    assert done.returncode != 0 and "no such run folder: " in done.stderr and "w32_m1.0_s9" in done.stderr
    assert "Traceback" not in done.stderr  # a typo used to drop the candidate unseen
    done = _script("final", *runs, tmp_path / "fmnist_vgg5" / "report.md", "--reference", "w32_m1.0", "--eps", "0.5")
    assert done.returncode == 0, done.stderr  # a file among the folders is not a candidate
    done = _script("final", *runs, "--reference", "w32_m1.0", "--eps", "0.3")
    assert done.returncode != 0 and "holds radii 0.5, not 0.3" in done.stderr and "Traceback" not in done.stderr
    done = _script("final", runs[0], "--reference", "w32_m1.0", "--eps", "0.5")
    assert done.returncode != 0 and "recipe w32_m1.0 has 1 seed" in done.stderr
    done = _script("select", tmp_path / "nothing_*")  # an unmatched glob reaches the script as written
    assert done.returncode != 0 and "no such run folder" in done.stderr and "Traceback" not in done.stderr
