"""Training end to end on tiny budgets: every regularizer, checkpoints, resume, divergence."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kernel_reg import spectral
from kernel_reg.config import REGULARIZERS, preset_config
from kernel_reg.rundir import load_run, read_config, read_metrics, run_path
from kernel_reg.training import TrainingDiverged, build_regularizers, train


def tiny(tmp_path, **changes):
    values = dict(
        data_dir="embedded", n_train=64, n_val=64, n_test=64, width=4, batch_size=32, num_epochs=2,
        eval_delta=1, root=str(tmp_path), probe_size=16, steps=2, stability_tr_per_ex=2,
        stability_num_deformations=2,
    )  # fmt: skip
    values.update(changes)
    return preset_config("fmnist1000_vgg5", **values)


@pytest.mark.parametrize("reg", REGULARIZERS)
def test_every_regularizer_trains_and_logs(tmp_path, reg):
    config = tiny(tmp_path, regs=(reg,), name=reg, tau=1.0, num_epochs=1)
    metrics = train(config, log=lambda _: None)
    assert read_metrics(run_path(config)) == json.loads(json.dumps(metrics))
    assert read_config(run_path(config)) == config
    record = metrics[-1]
    for key in ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "rkhs_lower_grad", "rkhs_upper_spectral"):
        assert key in record
    assert record["rkhs_lower_grad"] <= record["rkhs_upper_spectral"] * 100  # finite, sensible scale
    if reg == "project-sn":
        _, model, _, _ = load_run(run_path(config), "cpu", which="last")
        sigmas = [float(s.detach()) for s in spectral.SpectralNormPenalty(method="svd").sigmas(model)]
        assert max(sigmas) <= spectral.tau_schedule(1.0, 2.0, 0) * (1 + 1e-4)


def test_regularizers_are_built_with_the_config_strengths(tmp_path):
    config = tiny(tmp_path, regs=("gradient-penalty", "pgd-linf", "project-sn"), lmbda=0.3, epsilon=0.02)
    built = build_regularizers(config)
    assert built.penalties["gradient-penalty"].lmbda == 0.3
    assert built.attack.eps == 0.02 and built.project
    delta = build_regularizers(tiny(tmp_path, regs=("adv-perturbation",), delta_candidates=4))
    assert delta.penalties["adv-perturbation"].candidates == 4


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
        return [{k: v for k, v in row.items() if k != "seconds_per_epoch"} for row in rows]

    assert comparable(tmp_path / "cut") == comparable(tmp_path / "whole")
    whole = torch.load(tmp_path / "whole/fmnist1000_vgg5/r/checkpoint.pt", weights_only=False)
    cut = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])


def test_resume_refuses_another_configuration(tmp_path):
    train(tiny(tmp_path, num_epochs=1), log=lambda _: None)
    with pytest.raises(ValueError, match=r"another configuration \(lr: saved 0.05, now 0.1\)"):
        train(tiny(tmp_path, num_epochs=1, lr=0.1), log=lambda _: None)
    more = train(tiny(tmp_path, num_epochs=3), log=lambda _: None)  # more epochs is a resume
    assert [m["epoch"] for m in more] == [0, 1, 2]


def test_divergence_names_the_term_and_keeps_the_last_good_checkpoint(tmp_path):
    # lr x 1e6 after the first epoch: the second one blows up
    config = tiny(tmp_path, sched_step=1, sched_gamma=1e6, num_epochs=4, regs=("gradient-penalty",))
    with pytest.raises(
        TrainingDiverged, match=r"(cross-entropy|gradient-penalty|parameters .*) became .* at epoch [12]"
    ):
        train(config, log=lambda _: None)
    state = torch.load(run_path(config) / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert read_metrics(run_path(config))[-1]["epoch"] == state["epoch"]


def test_best_weights_are_those_of_best_validation_accuracy(tmp_path):
    config = tiny(tmp_path, num_epochs=4)
    metrics = train(config, log=lambda _: None)
    best = max(metrics, key=lambda m: (m["val_acc"], -m["epoch"]))
    _, model, splits, epoch = load_run(run_path(config), "cpu")
    assert epoch == best["epoch"]
    with torch.no_grad():
        val_acc = float((model(splits.val_x).argmax(1) == splits.val_y).float().mean())
    assert val_acc == pytest.approx(best["val_acc"])
