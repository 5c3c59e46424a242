"""Training end to end on tiny budgets: every regularizer, checkpoints, resume, divergence."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kernel_reg import lipschitz, spectral
from kernel_reg.app.builders import load_run
from kernel_reg.app.regularizers import NAMES as REGULARIZERS
from kernel_reg.app.rundir import RunFolderError, locked, read_config, read_metrics, run_path
from kernel_reg.app.training import TrainingDiverged, build_regularizers, train


@pytest.mark.parametrize("reg", REGULARIZERS)
def test_every_regularizer_trains_and_logs(tmp_path, reg, tiny):
    config = tiny(tmp_path, regs=(reg,), name=reg, num_epochs=1)
    if reg == "project-sn":
        config = config.updated({"tau": 1.0})
    metrics = train(config, log=lambda _: None)
    assert read_metrics(run_path(config)) == metrics
    assert read_config(run_path(config)) == config
    row = metrics[-1]
    assert row.epoch == 0 and row.val_acc is not None and row.eval_seconds > 0
    assert 0 < row.rkhs_lower_grad <= row.rkhs_upper_spectral * 100  # finite, sensible scale
    assert (row.tau is not None) == (reg == "project-sn")
    if reg == "project-sn":
        model = load_run(run_path(config), "cpu", which="last").model
        sigmas = [float(s.detach()) for s in spectral.SpectralNormPenalty(method="svd").sigmas(model)]
        assert max(sigmas) <= spectral.tau_schedule(1.0, 2.0, 0) * (1 + 1e-4)


def test_regularizers_are_built_with_the_config_strengths(tmp_path, tiny):
    config = tiny(tmp_path, regs=("gradient-penalty", "pgd-linf", "project-sn"), lmbda=0.3, epsilon=0.02, tau=2.0)
    built = build_regularizers(config)
    assert built.penalties["gradient-penalty"].lmbda == 0.3
    assert built.attack.eps == 0.02 and built.attack.steps == 2
    assert built.projection.radius(epoch=1e9) == pytest.approx(2.0)
    delta = build_regularizers(tiny(tmp_path, regs=("adv-perturbation",), delta_candidates=4))
    assert delta.penalties["adv-perturbation"].candidates == 4
    both = tiny(
        tmp_path, regs=("gradient-penalty", "loss-gradl2"), **{"gradient-penalty.lmbda": 0.2, "loss-gradl2.lmbda": 3}
    )
    built = build_regularizers(both)
    assert (built.penalties["gradient-penalty"].lmbda, built.penalties["loss-gradl2"].lmbda) == (0.2, 3.0)


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(tmp_path):
    flags = [
        "--data-dir", "embedded", "--n-train", "96", "--n-val", "64", "--n-test", "64", "--width", "4",
        "--batch-size", "32", "--num-epochs", "8", "--eval-delta", "1", "--probe-size", "16",
        "--reg", "vat", "--reg", "penalize-sn-pi", "--aug", "--name", "r",
    ]  # fmt: skip
    command = [sys.executable, "-m", "kernel_reg", "train", *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(command + ["--root", str(tmp_path / "whole")], check=True, env=env, capture_output=True)
    victim = subprocess.Popen(command + ["--root", str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL)
    run_dir = tmp_path / "cut" / "fmnist1000_vgg5" / "r"
    deadline = time.time() + 120
    while len(read_metrics(run_dir)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    cut_at = len(read_metrics(run_dir))
    assert 3 <= cut_at < 8, "the kill must land mid-run"
    subprocess.run(command + ["--root", str(tmp_path / "cut")], check=True, env=env, capture_output=True)

    def comparable(root):
        rows = read_metrics(root / "fmnist1000_vgg5" / "r")
        return [
            {k: v for k, v in row.to_dict().items() if not k.endswith(("seconds", "seconds_per_epoch"))} for row in rows
        ]

    assert comparable(tmp_path / "cut") == comparable(tmp_path / "whole")
    whole = torch.load(tmp_path / "whole/fmnist1000_vgg5/r/checkpoint.pt", weights_only=False)
    cut = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])


def test_resume_refuses_another_configuration(tmp_path, tiny):
    train(tiny(tmp_path, num_epochs=1), log=lambda _: None)
    with pytest.raises(RunFolderError, match=r"another configuration \(lr: saved 0.05, now 0.1\)"):
        train(tiny(tmp_path, num_epochs=1, lr=0.1), log=lambda _: None)
    more = train(tiny(tmp_path, num_epochs=3), log=lambda _: None)  # more epochs is a resume
    assert [m.epoch for m in more] == [0, 1, 2]


def test_a_margin_that_overflows_the_logits_is_named(tmp_path, tiny):
    config = tiny(tmp_path, num_epochs=1, lipschitz_margin=1e38)
    with pytest.raises(
        TrainingDiverged, match=r"cross-entropy became (nan|inf) \(the Lipschitz margin adds .* at epoch 0"
    ):
        train(config, log=lambda _: None)


def test_divergence_names_the_term_and_keeps_the_last_good_checkpoint(tmp_path, tiny):
    # lr x 1e6 after the first epoch: the second one blows up
    config = tiny(tmp_path, sched_step=1, sched_gamma=1e6, num_epochs=4, regs=("gradient-penalty",))
    with pytest.raises(
        TrainingDiverged, match=r"(cross-entropy|gradient-penalty|parameters .*) became .* at epoch [12]"
    ):
        train(config, log=lambda _: None)
    state = torch.load(run_path(config) / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert read_metrics(run_path(config))[-1].epoch == state["epoch"]


def test_best_weights_are_those_of_best_validation_accuracy(tmp_path, tiny):
    config = tiny(tmp_path, num_epochs=4)
    metrics = train(config, log=lambda _: None)
    best = max(metrics, key=lambda m: (m.val_acc, -m.epoch))
    run = load_run(run_path(config), "cpu")
    model, splits = run.model, run.splits
    assert (run.epoch, run.weights, run.trained_to) == (best.epoch, "best-validation", 3)
    with torch.no_grad():
        val_acc = float((model(splits.val_x).argmax(1) == splits.val_y).float().mean())
    assert val_acc == pytest.approx(best.val_acc)


def test_each_epoch_is_on_disk_before_its_log_line(tmp_path, tiny):
    config = tiny(tmp_path, num_epochs=3)
    seen = []

    def log(line):
        if line.startswith("epoch"):
            state = torch.load(run_path(config) / "checkpoint.pt", weights_only=True)
            seen.append((line.split(",")[0], state["epoch"], read_metrics(run_path(config))[-1].epoch))

    train(config, log=log)
    assert seen == [("epoch 0", 0, 0), ("epoch 1", 1, 1), ("epoch 2", 2, 2)]


def test_a_locked_run_folder_is_refused_at_once(tmp_path, tiny):
    config = tiny(tmp_path, num_epochs=1)
    with locked(run_path(config), "a test", create=True):
        with pytest.raises(RunFolderError, match=rf"in use by pid {os.getpid()} on .* \(a test\)"):
            train(config, log=lambda _: None)
    assert not (run_path(config) / "config.json").exists()
    train(config, log=lambda _: None)  # released: the run goes ahead


def test_resume_changes_nothing_when_asked_for_fewer_or_the_same_epochs(tmp_path, tiny):
    train(tiny(tmp_path, num_epochs=3), log=lambda _: None)
    run_dir = run_path(tiny(tmp_path))
    files = {name: (run_dir / name).read_bytes() for name in ("config.json", "metrics.jsonl", "checkpoint.pt")}
    with pytest.raises(RunFolderError, match=r"num_epochs: saved 3, now 2 \(it may only grow\)"):
        train(tiny(tmp_path, num_epochs=2), log=lambda _: None)
    lines = []
    metrics = train(tiny(tmp_path, num_epochs=3), log=lines.append)
    assert [m.epoch for m in metrics] == [0, 1, 2] and "already trained to its last epoch (2)" in lines[0]
    assert {name: (run_dir / name).read_bytes() for name in files} == files


def test_a_config_without_checkpoint_is_not_overwritten_by_another(tmp_path, tiny):
    config = tiny(tmp_path, num_epochs=1, regs=("gradient-penalty",), lmbda=0.01)
    run_path(config).mkdir(parents=True)
    (run_path(config) / "config.json").write_text(config.to_json())
    with pytest.raises(RunFolderError, match=r"gradient-penalty.lmbda: saved 0.01, now 5.0"):
        train(config.updated({"lmbda": 5.0}), log=lambda _: None)
    assert read_config(run_path(config)) == config


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_checkpoint_is_refused_never_restarted(tmp_path, damage, tiny):
    config = tiny(tmp_path, num_epochs=3, eval_delta=1)
    train(config.replace(num_epochs=2), log=lambda _: None)
    path = run_path(config) / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"not a checkpoint"}[damage])
    before = {p.name: p.read_bytes() for p in run_path(config).iterdir() if p.is_file()}
    with pytest.raises(
        RunFolderError, match=r"checkpoint.pt is unreadable .* truncated or corrupt. Nothing was changed"
    ):
        train(config, log=lambda _: None)
    with pytest.raises(RunFolderError, match="checkpoint.pt is unreadable"):
        load_run(run_path(config), "cpu")
    assert {p.name: p.read_bytes() for p in run_path(config).iterdir() if p.is_file()} == before


def test_divergence_before_any_checkpoint_says_so(tmp_path, tiny):
    config = tiny(tmp_path, lr=1e30, num_epochs=2)
    with pytest.raises(TrainingDiverged, match="at epoch 0; no checkpoint had been written yet"):
        train(config, log=lambda _: None)
    assert not (run_path(config) / "checkpoint.pt").exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_run_files_honour_the_umask(tmp_path, umask, tiny):
    old = os.umask(umask)
    try:
        config = tiny(tmp_path, num_epochs=1)
        train(config, log=lambda _: None)
    finally:
        os.umask(old)
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        assert (run_path(config) / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_lost_checkpoint_is_refused_never_restarted(tmp_path, tiny):
    config = tiny(tmp_path, num_epochs=3)
    train(config.replace(num_epochs=2), log=lambda _: None)
    (run_path(config) / "checkpoint.pt").unlink()
    metrics = (run_path(config) / "metrics.jsonl").read_bytes()
    with pytest.raises(RunFolderError, match=r"holds metrics.jsonl but no checkpoint.pt: the checkpoint was lost"):
        train(config, log=lambda _: None)
    assert (run_path(config) / "metrics.jsonl").read_bytes() == metrics


def test_a_finished_run_repairs_its_metrics_from_the_checkpoint(tmp_path, tiny):
    config = tiny(tmp_path, num_epochs=2)
    rows = train(config, log=lambda _: None)
    (run_path(config) / "metrics.jsonl").write_text("")
    lines = []
    train(config, log=lines.append)
    assert read_metrics(run_path(config)) == rows and "rewritten from it" in lines[-1]


def test_run_folders_do_not_nest(tmp_path, tiny):
    outer = tiny(tmp_path, num_epochs=1, name="a")
    train(outer, log=lambda _: None)
    with pytest.raises(RunFolderError, match=r"would lie inside the run folder .*/a; choose a name outside it"):
        train(outer.replace(name="a/b"), log=lambda _: None)
    grouped = tiny(tmp_path, num_epochs=1, name="study/x")  # a folder of runs is fine
    train(grouped, log=lambda _: None)
    with pytest.raises(RunFolderError, match=r"/study holds another run folder, .*/study/x"):
        train(grouped.replace(name="study"), log=lambda _: None)


def test_a_checkpoint_of_another_model_is_named(tmp_path, tiny):
    config = tiny(tmp_path, num_epochs=2)
    train(config.replace(num_epochs=1), log=lambda _: None)
    other = tiny(tmp_path / "other", num_epochs=1, width=8)
    train(other, log=lambda _: None)
    (run_path(config) / "checkpoint.pt").write_bytes((run_path(other) / "checkpoint.pt").read_bytes())
    with pytest.raises(RunFolderError, match="holds weights of another model than its config.json describes"):
        train(config, log=lambda _: None)
    with pytest.raises(RunFolderError, match="holds weights of another model"):
        load_run(run_path(config), "cpu")


def test_an_exact_spectral_penalty_on_diverged_weights_is_a_divergence(tmp_path, tiny):
    config = tiny(tmp_path, regs=("penalize-sn-svd",), lmbdasn=1e30, num_epochs=2)
    with pytest.raises(TrainingDiverged, match=r"penalize-sn-svd (failed|became) .*at epoch \d"):
        train(config, log=lambda _: None)


def test_more_test_images_than_the_data_set_has_is_refused(tmp_path, tiny):
    with pytest.raises(ValueError, match="n_test=5000 exceeds the 2000 images of the test set"):
        train(tiny(tmp_path, n_test=5000), log=lambda _: None)


def test_a_pairwise_margin_run_trains_and_names_a_wrong_rule(tmp_path, tiny):
    config = tiny(tmp_path, model="lipnet", width=4, num_epochs=1, lipschitz_margin=0.3, margin_rule="pairwise",
                  normalization="orthogonal")  # fmt: skip
    margin = build_regularizers(config, input_shape=(1, 28, 28)).margin
    assert margin.pairwise and not margin.through_bound  # the normalization holds L
    (row,) = train(config, log=lambda _: None)
    assert math.isfinite(row.train_loss) and row.test_acc > 0.1
    with pytest.raises(ValueError, match="margin_rule.*'global', 'pairwise'"):
        config.replace(margin_rule="per-pair")


def test_a_certified_training_run_keeps_its_certificates_below_its_attacks(tmp_path, tiny):
    from kernel_reg.app.evaluation import evaluate_run
    from kernel_reg.app.suite import EvalSettings

    config = tiny(tmp_path, model="lipnet", width=4, num_epochs=3, lipschitz_margin=0.3, regs=("project-sn",),
                  tau=1.0, kappa=0.0, sn_norm="operator")  # fmt: skip
    assert config.reg("project-sn")["norm"] == "operator" and config.activation is None
    assert not build_regularizers(config, input_shape=(1, 28, 28)).margin.through_bound  # the projection holds L
    assert build_regularizers(config.replace(regs=()), input_shape=(1, 28, 28)).margin.through_bound
    metrics = train(config, log=lambda _: None)
    assert metrics[-1].tau == pytest.approx(1.0)
    run = load_run(run_path(config), "cpu", which="last")
    shapes = lipschitz.input_shapes(run.model, (1, 28, 28))
    for _, layer in spectral.spectral_layers(run.model):  # guaranteed at the end of every epoch
        assert lipschitz.layer_upper_bound(layer, shapes[layer]) <= 1.0 + 1e-6
    settings = EvalSettings(l2_eps=(0.1, 0.3), linf_eps=(), attacks=("strong",), steps=3, n_test=32, queries=20)
    result = evaluate_run(run_path(config), settings, "cpu", "last")
    assert result.lipschitz_bound <= 1.0 + 1e-6 and 0 < result.lipschitz_lower <= result.lipschitz_bound
    for key, certified in result.certified_l2.items():
        assert certified <= result.l2[key]
    assert "certified accuracy exceeds robust accuracy (a bug)" not in result.suspicious


def test_certifying_the_validation_split_measures_the_held_out_examples_and_leaves_the_test_record(tmp_path, tiny):
    import numpy as np

    from kernel_reg.app.data import load_dataset
    from kernel_reg.app.evaluation import certify_run
    from kernel_reg.app.rundir import read_certification

    config = tiny(tmp_path, model="lipnet", width=4, num_epochs=1, lipschitz_margin=0.3, normalization="orthogonal")
    train(config, log=lambda _: None)
    folder = run_path(config)
    on_test = certify_run(folder, [0.1, 0.5], device="cpu")
    on_val = certify_run(folder, [0.1, 0.5], device="cpu", split="val", n_test=40)
    assert (on_test.split, on_test.n, on_val.split, on_val.n) == ("test", 64, "val", 40)
    assert read_certification(folder) == on_test and read_certification(folder, "val") == on_val
    from kernel_reg.app.cli import main

    assert main(["certify", str(folder), "--split", "val", "--eps", "0.1", "0.5", "--device", "cpu"]) == 0
    whole = read_certification(folder, "val")  # the command line's record: all 64 validation examples
    assert whole.n == 64 and read_certification(folder) == on_test
    # independent truth: the validation examples are the last n_val of the pool as numpy's RandomState(42 +
    # shuf_seed) shuffles it, disjoint from the training examples (the first n_train)
    train_x, train_y, _, _ = load_dataset(config.dataset, config.data_dir).arrays
    order = np.arange(len(train_x))
    np.random.RandomState(42 + config.shuf_seed).shuffle(order)
    held_out = order[len(order) - config.n_val :][:40]
    assert not set(held_out) & set(order[: config.n_train])
    run = load_run(folder, "cpu")
    x = torch.from_numpy(train_x[held_out]).float().div(255.0)
    with torch.no_grad():
        predicted = run.model(x).argmax(1).numpy()
    assert on_val.clean == pytest.approx(float((predicted == train_y[held_out]).mean()))
    assert all(on_val.global_rule[k] <= on_val.pairwise[k] <= on_val.clean for k in on_val.pairwise)
    # scripts/certified_selection.py chooses on these records alone: the smallest shortfall from the goal
    script = Path(__file__).parents[1] / "scripts" / "certified_selection.py"
    candidates = tmp_path / "candidates"
    for name, clean, certified in (("a", 0.80, 0.70), ("b", 0.90, 0.60), ("c", 0.85, 0.74)):
        (candidates / name).mkdir(parents=True)
        record = dict(on_val.to_dict(), clean=clean, pairwise={"0.1": 0.9, "0.5": certified})
        (candidates / name / "certified_val.json").write_text(json.dumps(record))
    chosen = subprocess.run([sys.executable, str(script), "select", *map(str, sorted(candidates.iterdir())),
                             "--goal", "88", "75", "--json", str(tmp_path / "choice.json")],
                            capture_output=True, text=True, check=True)  # fmt: skip
    choice = json.loads((tmp_path / "choice.json").read_text())
    # shortfalls: a 8 + 5 = 13, b 0 + 15 = 15, c 3 + 1 = 4
    assert [(r["run"], round(r["shortfall"], 6)) for r in choice["candidates"]] == [("c", 4), ("a", 13), ("b", 15)]
    assert choice["chosen"] == "c" and "chosen: c" in chosen.stdout
    (candidates / "d").mkdir()
    missing = subprocess.run([sys.executable, str(script), "select", str(candidates / "d")], capture_output=True,
                             text=True)  # fmt: skip
    assert missing.returncode != 0 and "has no certified_val.json" in missing.stderr
    # a mislabelled record, a split that does not exist, a run without one, more examples than it has
    (folder / "certified_val.json").write_text((folder / "certified.json").read_text())
    with pytest.raises(RunFolderError, match="certification on the 'test' split, not 'val'"):
        read_certification(folder, "val")
    with pytest.raises(ValueError, match="split must be one of.*'test', 'val'"):
        certify_run(folder, [0.1], device="cpu", split="train")
    with pytest.raises(ValueError, match="exceeds the 64 validation examples"):
        certify_run(folder, [0.1], device="cpu", split="val", n_test=65)
    unsplit = config.replace(n_val=0, name="unsplit")
    train(unsplit, log=lambda _: None)
    with pytest.raises(ValueError, match="no validation set.*--n-val N"):
        certify_run(run_path(unsplit), [0.1], device="cpu", split="val")
    assert not (run_path(unsplit) / "certified_val.json").exists()


@pytest.mark.parametrize("normalization", ["operator", "orthogonal"])
def test_a_normalized_run_keeps_every_layer_at_norm_one_resumes_and_certifies_below_its_attacks(
    tmp_path, tiny, normalization
):
    from kernel_reg.app.evaluation import evaluate_run
    from kernel_reg.app.metrics import accuracy
    from kernel_reg.app.suite import EvalSettings
    from kernel_reg.lipschitz.orthogonal import CayleyConv2d

    config = tiny(tmp_path, model="lipnet", width=4, num_epochs=2, lipschitz_margin=0.3,
                  normalization=normalization, ce_scale=10.0)  # fmt: skip
    assert not build_regularizers(config, input_shape=(1, 28, 28)).margin.through_bound  # the normalization holds L
    with pytest.raises(ValueError, match="choose one of them"):
        config.replace(regs=("project-sn",))
    with pytest.raises(ValueError, match="normalization must be one of"):
        config.replace(normalization="reshaped")
    with pytest.raises(ValueError, match="use model='lipnet'"):  # zero-padded convolutions cannot be Cayley ones
        config.replace(model="vgg5_stable", normalization="orthogonal")
    first = train(config, log=lambda _: None)
    resumed = train(config.replace(num_epochs=3), log=lambda _: None)  # the vectors travel in the checkpoint
    assert [r.test_acc for r in resumed[:2]] == [r.test_acc for r in first]
    run = load_run(run_path(config), "cpu", which="last")
    assert run.epoch == 2
    shapes = lipschitz.input_shapes(run.model, (1, 28, 28))
    for _, layer in spectral.operator_layers(run.model):  # the vectors converge at the end of every epoch
        assert 1.0 - 1e-6 <= lipschitz.layer_upper_bound(layer, shapes[layer]) <= 1.0 + 1e-3
    cayley = [m for m in run.model.modules() if isinstance(m, CayleyConv2d)]
    assert len(cayley) == (5 if normalization == "orthogonal" else 0)
    settings = EvalSettings(l2_eps=(0.1, 0.3), linf_eps=(), attacks=("strong",), steps=3, n_test=32, queries=20)
    result = evaluate_run(run_path(config), settings, "cpu", "last")
    assert result.lipschitz_bound <= 1.0 + 6e-3 and 0 < result.lipschitz_lower <= result.lipschitz_bound
    for key, certified in result.certified_l2.items():
        assert certified <= result.l2[key]
    # the side-by-side table: certified on the whole test set, attacked from robustness.json
    table = tmp_path / "table.json"
    script = Path(__file__).parents[1] / "scripts" / "certified_table.py"
    figure = tmp_path / "curves.png"
    subprocess.run([sys.executable, script, run_path(config), "--eps", "0.1", "0.3", "--device", "cpu",
                    "--json", table, "--plot", figure], check=True, capture_output=True)  # fmt: skip
    (row,) = json.loads(table.read_text())
    assert figure.stat().st_size > 0 and row["curve"][10] == row["certified"]["0.1"]  # the curve at 0.1
    assert all(a >= b for a, b in zip(row["curve"], row["curve"][1:])) and row["curve"][0] <= row["clean"]
    x, y = run.splits.test_x, run.splits.test_y
    assert row["n"] == len(y) and row["lipschitz"] == pytest.approx(result.lipschitz_bound)
    assert row["certified"]["0.1"] == pytest.approx(lipschitz.certified_accuracy(run.model, x, y, 0.1))
    bound = lipschitz.lipschitz_upper_bound(run.model, x.shape[1:])
    assert row["certified_global"]["0.1"] == pytest.approx(lipschitz.certified_accuracy(run.model, x, y, 0.1, bound))
    assert row["certified_global"]["0.1"] <= row["certified"]["0.1"]
    assert row["clean"] == pytest.approx(accuracy(run.model, x, y)[1])
    assert row["attacked"] == result.l2 and row["attacked_n"] == 32
    # the same run name in two studies: two rows, two labels, and the trade-off figure
    twin = tmp_path / "study2" / run_path(config).name
    shutil.copytree(run_path(config), twin)
    tradeoff = tmp_path / "tradeoff.png"
    subprocess.run([sys.executable, script, run_path(config), twin, "--eps", "0.1", "--device", "cpu", "--json",
                    table, "--tradeoff", tradeoff, "--target", "88", "75"],
                   check=True, capture_output=True)  # fmt: skip
    rows = json.loads(table.read_text())
    assert [r["run"] for r in rows] == [f"{run_path(config).parent.name}/{twin.name}", f"study2/{twin.name}"]
    assert rows[0]["certified"] == rows[1]["certified"] and tradeoff.stat().st_size > 0


def test_rkhs_bounds_are_the_penalties_values_from_one_set_of_gradients():
    """The monitor's lower bounds are GradientPenalty and AdversarialPerturbationPenalty at lmbda = 1 (exact
    when the probe holds at most ``candidates`` examples, a lower value never above the full search
    otherwise), and the upper bound the product of the layers' largest singular values (numpy SVD)."""
    import numpy as np

    from kernel_reg import penalties
    from kernel_reg.app.training import rkhs_lower_bounds, spectral_upper_bound

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)
    ).double()
    model.train()
    x = torch.randn(24, 1, 8, 8, dtype=torch.float64)
    full = rkhs_lower_bounds(model, x, 0.5)
    assert model.training  # the caller's mode is restored
    grad = float(penalties.GradientPenalty(lmbda=1.0)(model, x).detach()) ** 0.5
    assert full["rkhs_lower_grad"] == pytest.approx(grad)
    delta = float(penalties.AdversarialPerturbationPenalty(lmbda=1.0, eps=0.5)(model, x).detach()) ** 0.5 / 0.5
    assert full["rkhs_lower_delta"] == pytest.approx(delta, rel=1e-9)
    assert rkhs_lower_bounds(model, x[:5], 0.5, candidates=5) == rkhs_lower_bounds(model, x[:5], 0.5)
    assert rkhs_lower_bounds(model, x, 0.5, candidates=2)["rkhs_lower_delta"] <= full["rkhs_lower_delta"] * (1 + 1e-12)
    sigmas = [
        np.linalg.svd(w.detach().reshape(w.shape[0], -1).numpy(), compute_uv=False)[0]
        for w in (model[0].weight, model[3].weight)
    ]
    assert spectral_upper_bound(model) == pytest.approx(float(np.prod(sigmas)))


@pytest.mark.parametrize("eval_delta, probe_delta, num_epochs", [(1, 3, 7), (2, 3, 8), (3, 2, 7), (2, 4, 9)])
def test_lower_bounds_come_at_the_first_evaluation_of_every_probe_delta_epochs(
    tmp_path, tiny, eval_delta, probe_delta, num_epochs
):
    config = tiny(tmp_path, num_epochs=num_epochs, eval_delta=eval_delta, probe_delta=probe_delta)
    metrics = train(config, log=lambda _: None)
    evaluated = [row.epoch for row in metrics]
    assert evaluated == sorted({*range(0, num_epochs, eval_delta), num_epochs - 1})
    expected = {min(e for e in evaluated if e >= start) for start in range(0, num_epochs, probe_delta)}
    expected.add(num_epochs - 1)
    with_bounds = {row.epoch for row in metrics if row.rkhs_lower_grad is not None}
    assert with_bounds == expected
    for row in metrics:
        assert (row.rkhs_lower_delta is not None) == (row.epoch in expected) == (row.bracket_seconds is not None)
        assert row.rkhs_upper_spectral > 0 and row.eval_seconds >= (row.bracket_seconds or 0)
    assert read_metrics(run_path(config)) == metrics


def test_adam_runs_resume_as_if_uninterrupted(tmp_path, tiny):
    whole = train(tiny(tmp_path / "whole", num_epochs=3, optimizer="adam", lr=1e-3), log=lambda _: None)
    train(tiny(tmp_path / "cut", num_epochs=1, optimizer="adam", lr=1e-3), log=lambda _: None)
    cut = train(tiny(tmp_path / "cut", num_epochs=3, optimizer="adam", lr=1e-3), log=lambda _: None)
    assert [row.train_loss for row in cut] == [row.train_loss for row in whole]
    state = torch.load(run_path(tiny(tmp_path / "cut")) / "checkpoint.pt", weights_only=False)
    assert "exp_avg_sq" in state["optimizer"]["state"][0]  # Adam's state, saved and restored


def test_the_cross_entropy_scale_is_ce_of_scaled_logits_over_the_scale(tiny, tmp_path):
    from kernel_reg.app.training import Regularizers, step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 4)).double()
    x, y = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (8,))
    logits = model(x).detach()
    expected = -(torch.log_softmax(7.0 * logits, 1).gather(1, y[:, None])).mean() / 7.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    terms = step(model, x, y, Regularizers(ce_scale=7.0), optimizer)
    assert float(terms["cross-entropy"].detach()) == pytest.approx(float(expected), rel=1e-12)
    assert build_regularizers(tiny(tmp_path, ce_scale=7.0)).ce_scale == 7.0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of 'sgd', 'adam', got 'rmsprop'"),
        ({"ce_scale": 0.0}, "ce_scale must be a finite number > 0"),
    ],
)
def test_bad_optimizer_settings_are_named(tmp_path, tiny, changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **changes)


@pytest.mark.parametrize("margin", [False, True], ids=["", "margin"])
@pytest.mark.parametrize("method", ["exact", "finite-difference"])
def test_a_step_that_shares_its_forward_pass_with_grad_l2_takes_the_step_of_the_sum(model, batch, method, margin):
    """The step gives grad-l2 its training logits (before the Lipschitz margin raises them); the update is
    that of CE(margin(model(x)), y) + penalty(model, x, y) computed apart, the penalty by its own forward pass."""
    import copy

    import torch.nn.functional as F

    from kernel_reg.app.training import Regularizers, step
    from kernel_reg.lipschitz import LipschitzMargin
    from kernel_reg.penalties import LossGradientPenalty

    x, y = batch
    penalty = LossGradientPenalty(lmbda=0.8, method=method, h=0.5)
    raise_logits = LipschitzMargin(eps=0.3, input_shape=x.shape[1:]) if margin else None
    regs = Regularizers(penalties={"loss-gradl2": penalty}, margin=copy.deepcopy(raise_logits))
    apart = copy.deepcopy(model)
    torch.manual_seed(5)  # the same first power-iteration vectors for both margins
    logits = apart(x) if raise_logits is None else raise_logits(apart, apart(x), y)
    (F.cross_entropy(logits, y) + penalty(apart, x, y)).backward()
    torch.optim.SGD(apart.parameters(), lr=0.3).step()
    torch.manual_seed(5)
    terms = step(model, x, y, regs, torch.optim.SGD(model.parameters(), lr=0.3))
    assert set(terms) == {"cross-entropy", "loss-gradl2"} and not x.requires_grad
    for got, want in zip(model.parameters(), apart.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("bad", ["crop+crop", "rotate", "crop+", "", "auto+crop"])
def test_aug_transforms_outside_the_choice_are_refused(bad):
    from kernel_reg.app.config import preset_config

    with pytest.raises(ValueError, match="aug_transforms must be 'auto' or a '\\+'-joined choice of crop, flip"):
        preset_config("fmnist1000_vgg5").replace(aug=True, aug_transforms=bad)


def test_crop_augmentation_of_grayscale_images_gives_crops_of_the_image_padded_by_an_eighth():
    from kernel_reg.app.config import preset_config
    from kernel_reg.app.training import build_augmentation

    config = preset_config("fmnist1000_vgg5").replace(aug=True, aug_transforms="crop")
    x = torch.rand(12, 1, 28, 28)
    out = build_augmentation(config, (1, 28, 28), torch.Generator().manual_seed(0))(x)
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    offsets = []
    for i in range(12):
        found = [
            (r, c) for r in range(7) for c in range(7) if torch.equal(out[i], padded[i, :, r : r + 28, c : c + 28])
        ]
        assert found, f"image {i} is not an unflipped crop of the image padded by 3"
        offsets.append(found[0])
    assert len(set(offsets)) > 1


def test_augmentations_compose_and_auto_keeps_each_data_sets_own():
    from kernel_reg.app.config import preset_config
    from kernel_reg.app.training import build_augmentation

    config = preset_config("fmnist1000_vgg5").replace(aug=True)
    x = torch.rand(8, 1, 28, 28)

    def run(transforms: str, shape=(1, 28, 28), images=x) -> torch.Tensor:
        torch.manual_seed(1)
        augment = build_augmentation(config.replace(aug_transforms=transforms), shape, torch.Generator().manual_seed(0))
        return augment(images)

    # grayscale 'auto' is the random deformation alone: the same draw as 'deform'
    assert torch.equal(run("auto"), run("deform"))
    # crop then deform: the deformation of the crop (same generator and global seed)
    from kernel_reg.deformations import RandomDeformation

    crops, combined = run("crop"), run("crop+deform")
    torch.manual_seed(1)
    assert torch.allclose(combined, RandomDeformation(amplitude=config.deform_amplitude)(crops))
    assert not torch.allclose(combined, crops)
    # colour 'auto' is crop and flip; each image is its crop or its mirrored crop
    colour = torch.rand(8, 3, 32, 32)
    assert torch.equal(run("auto", (3, 32, 32), colour), run("crop+flip", (3, 32, 32), colour))
    flipped = run("flip", (3, 32, 32), colour)
    assert all(torch.equal(f, c) or torch.equal(f, c.flip(-1)) for f, c in zip(flipped, colour))
    assert any(not torch.equal(f, c) for f, c in zip(flipped, colour))
    assert build_augmentation(config.replace(aug=False), (1, 28, 28), torch.Generator()) is None


def test_each_row_records_the_learning_rate_its_epoch_trained_at(tmp_path, tiny):
    """The StepLR definition: epoch e trains at lr * gamma ** (e // sched_step), the last epoch included
    (not the rate the scheduler has moved to after it); a resumed run records the same rates."""
    config = tiny(tmp_path, num_epochs=5, eval_delta=1, lr=0.2, sched_step=2, sched_gamma=0.5)
    metrics = train(config, log=lambda _: None)
    assert [row.lr for row in metrics] == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05])
    cut = tiny(tmp_path / "cut", num_epochs=3, eval_delta=1, lr=0.2, sched_step=2, sched_gamma=0.5)
    train(cut, log=lambda _: None)
    resumed = train(cut.updated({"num_epochs": 5}), log=lambda _: None)
    assert [row.lr for row in resumed] == [row.lr for row in metrics]
