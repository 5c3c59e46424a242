"""The run folder: typed records round-trip, first-format records are upgraded, damaged files are named,
writes are atomic, and a folder in use is locked against other processes."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kernel_reg.app.config import Config, check_run_name, preset_config
from kernel_reg.app.rundir import (
    MaskingCheck,
    MetricsRow,
    Robustness,
    RunFolderError,
    atomic_torch_save,
    locked,
    read_config,
    read_metrics,
    read_robustness,
    write_config,
    write_metrics,
    write_robustness,
)
from kernel_reg.app.suite import EvalSettings

# a config.json as the first format wrote it (one field per original flag), from a committed run
LEGACY = {
    "aug": False, "batch_size": 128, "data_dir": None, "dataset": "fashion-mnist", "deform_amplitude": 0.5,
    "delta_candidates": None, "device": "auto", "epsilon": 0.3, "eval_delta": 10, "experiment": "fmnist300_vgg5",
    "kappa": 2.0, "linf_step_size": 0.01, "lmbda": 0.1, "lmbdasn": 0.01, "lmbdast": 0.7, "lmbdatan": 0.1,
    "lr": 0.05, "model": "vgg5_stable", "momentum": 0.9, "n_test": None, "n_train": 300, "n_val": 10000,
    "name": "vat_vat_alpha1_epsilon0.3_s0", "nb_it": 2, "num_epochs": 60, "probe_epsilon": 1.0, "probe_size": 128,
    "regs": ["vat", "stability"], "root": "results/small_data", "sched_gamma": 0.5, "sched_step": 20, "seed": 42,
    "shuf_seed": 0, "stability_ex_per_batch": None, "stability_num_deformations": 8, "stability_tr_per_ex": 3,
    "steps": 5, "tau": 0.5, "test_batch_size": 512, "vat_alpha": 2.0, "vat_xi": 1e-06, "wd": 0.0, "width": 16,
}  # fmt: skip


def row(epoch, **changes):
    values = dict(
        epoch=epoch, lr=0.05, train_loss=1.0, train_acc=0.5, val_acc=None, test_acc=0.4, rkhs_lower_grad=1.0,
        rkhs_lower_delta=0.9, rkhs_upper_spectral=10.0, seconds_per_epoch=0.1, eval_seconds=0.2,
    )  # fmt: skip
    return MetricsRow(**{**values, **changes})


def test_records_round_trip(tmp_path):
    config = preset_config("fmnist300_vgg5", regs=("vat", "project-sn"), epsilon=0.3, tau=1.5, name="a/b")
    write_config(tmp_path, config)
    assert read_config(tmp_path) == config and json.loads((tmp_path / "config.json").read_text())["format"] == 2
    rows = [row(0), row(5, val_acc=0.7, tau=1.5)]
    write_metrics(tmp_path, rows)
    assert read_metrics(tmp_path) == rows
    check = MaskingCheck("l2 score-based attack beats the gradient attacks", True, "broke 3", "l2", 0.5, {"broken": 3})
    result = Robustness(
        clean=0.9, n=10, l2={"0.5": 0.6}, linf={}, lipschitz_bound=None, certified_l2=None, attacks={"l2": "PGD"},
        settings=EvalSettings(steps=3), masking_checks=(check,), certified_note="no rule", epoch=5, weights="last",
    )  # fmt: skip
    write_robustness(tmp_path, result)
    assert read_robustness(tmp_path) == result and result.suspicious == [check.check]
    assert json.loads((tmp_path / "robustness.json").read_text())["suspicious"] == [check.check]


def test_first_format_records_are_upgraded(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LEGACY))
    config = read_config(tmp_path)
    assert config.reg("vat").to_dict() == {"name": "vat", "lmbda": 2.0, "epsilon": 0.3, "xi": 1e-6}
    stability = config.reg("stability").to_dict()
    assert stability == {
        "name": "stability",
        "lmbda": 0.7,
        "deformations": 3,
        "examples_per_batch": None,
        "amplitude": 0.5,
    }
    assert (config.width, config.num_epochs, config.deform_amplitude) == (16, 60, 0.5)
    legacy = {"clean": 0.8, "n": 4, "l2": {}, "linf": {}, "lipschitz_bound": 3.0, "certified_l2": {}, "attacks": {},
              "settings": {}, "suspicious": [], "epoch": 9, "weights": "best",
              "masking_checks": [{"check": "zero input gradients", "fired": False, "detail": "0.0%"}]}  # fmt: skip
    (tmp_path / "robustness.json").write_text(json.dumps(legacy))
    earlier = read_robustness(tmp_path)
    assert earlier.weights == "best-validation"  # this run had a validation set
    # settings recorded before seeded attacks and the Lipschitz probe read as what evaluation then did
    assert (earlier.settings.seed, earlier.settings.lipschitz_probe) == (None, 0)
    assert earlier.settings.generator().initial_seed() == 0  # verify repeats it with a fixed seed
    (tmp_path / "config.json").write_text(json.dumps({**LEGACY, "n_val": 0}))
    assert read_robustness(tmp_path).weights == "last"  # the first format said 'best' for the last weights


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"config.json is not valid JSON"),
        ("[1, 2]", r"config.json does not hold a configuration"),
        ('{"format": 2, "lrr": 0.1}', r"config.json is not a valid configuration: unknown config keys \['lrr'\]"),
        ('{"format": 2, "lr": -1}', r"config.json is not a valid configuration: lr must be a finite number > 0"),
    ],
)
def test_a_damaged_config_is_named(tmp_path, content, message):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(RunFolderError, match=message):
        read_config(tmp_path)


def test_a_damaged_metrics_line_is_named(tmp_path):
    write_metrics(tmp_path, [row(0), row(1)])
    text = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(text[: len(text) - 40])  # the second line cut short
    with pytest.raises(RunFolderError, match=r"metrics.jsonl, line 2, is not a metrics row"):
        read_metrics(tmp_path)


@pytest.mark.parametrize(("field", "text"), [("val_acc", "NaN"), ("test_acc", "Infinity"), ("train_acc", "1.5"),
                                            ("test_acc", '"0.8"'), ("val_acc", "-0.1")])  # fmt: skip
def test_an_accuracy_that_is_no_share_is_named(tmp_path, field, text):
    """A NaN validation accuracy would make max() pick an arbitrary 'best' epoch: a wrong number."""
    write_metrics(tmp_path, [row(0), row(1)])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    values = json.loads(lines[1])
    lines[1] = json.dumps(values).replace(f'"{field}": {json.dumps(values[field])}', f'"{field}": {text}')
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFolderError, match=f"metrics.jsonl, line 2: {field} is .*not an accuracy in \\[0, 1\\]"):
        read_metrics(tmp_path)
    values[field], values["train_loss"] = 0.5, float("nan")  # a diverged loss is a fact, not damage
    lines[1] = json.dumps(values)
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert len(read_metrics(tmp_path)) == 2


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    atomic_torch_save({"a": torch.ones(2)}, tmp_path / "checkpoint.pt")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        atomic_torch_save({"a": lambda: None}, tmp_path / "checkpoint.pt")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


HOLDER = """
import sys, time
from kernel_reg.app.rundir import locked
with locked(sys.argv[1], "the holder", create=True):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_folder_locked_by_another_process_is_refused_until_it_dies(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunFolderError, match=rf"{run_dir} is in use by pid {holder.pid} on .* \(the holder\)"):
            with locked(run_dir, "a second process"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    while True:  # the kernel releases a dead process's lock
        try:
            with locked(run_dir, "after the holder died"):
                break
        except RunFolderError:
            assert time.time() < deadline
            time.sleep(0.05)


def test_locking_a_missing_folder_creates_it_only_when_asked(tmp_path):
    with pytest.raises(RunFolderError, match="is not a run folder: it does not exist"):
        with locked(tmp_path / "missing", "evaluate"):
            pass
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("name", ["run", "a/b", "gradient-penalty_lmbda0.1_s0", "x+y=1,2@3"])
def test_run_names_inside_the_root_are_accepted(name):
    assert check_run_name(name) == name and Config(name=name).name == name


@pytest.mark.parametrize("name", ["../x", "../../x", "a/../../b", "/abs", ".hidden", "a/.b", "", ".", "a b", "a\\b"])
def test_run_names_that_leave_the_root_are_refused(name):
    with pytest.raises(ValueError, match="name must be a relative folder name inside --root"):
        Config(name=name)


def test_the_umask_decides_the_permissions_of_records(tmp_path):
    old = os.umask(0o027)
    try:
        write_metrics(tmp_path, [row(0)])
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == 0o640


def test_published_weights_evaluate_without_the_checkpoint(tmp_path, tiny):
    from kernel_reg.app.builders import load_run
    from kernel_reg.app.rundir import export_weights
    from kernel_reg.app.training import train

    config = tiny(tmp_path, num_epochs=2)
    train(config, log=lambda _: None)
    run_dir = tmp_path / config.experiment / config.name
    before = {which: load_run(run_dir, "cpu", which=which) for which in ("best", "last")}
    path = export_weights(run_dir)
    assert path.stat().st_size < (run_dir / "checkpoint.pt").stat().st_size  # no optimizer state
    (run_dir / "checkpoint.pt").unlink()
    for which, run in before.items():
        again = load_run(run_dir, "cpu", which=which)
        assert (again.epoch, again.weights) == (run.epoch, run.weights)
        assert all(
            torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), run.model.state_dict().values())
        )
    published = path.read_bytes()
    path.write_bytes(published[: len(published) // 2])  # a truncated download: restore it, do not retrain
    with pytest.raises(RunFolderError, match=r"weights.pt is unreadable .* copy the published file again"):
        load_run(run_dir, "cpu")
    assert path.read_bytes() == published[: len(published) // 2]  # nothing was changed
    path.unlink()
    with pytest.raises(RunFolderError, match=r"has no checkpoint.pt \(nor the published weights, weights.pt\)"):
        load_run(run_dir, "cpu")


def test_the_checkpoint_is_a_typed_record_in_the_layout_it_always_had(tmp_path, tiny):
    from kernel_reg.app.rundir import Checkpoint, read_checkpoint, write_checkpoint
    from kernel_reg.app.training import train

    config = tiny(tmp_path, num_epochs=2)
    rows = train(config, log=lambda _: None)
    run_dir = tmp_path / config.experiment / config.name
    raw = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert set(raw) == {"model", "optimizer", "scheduler", "epoch", "metrics", "best", "rng", "penalties"}
    state = read_checkpoint(run_dir)
    assert state.epoch == raw["epoch"] == rows[-1].epoch and list(state.metrics) == rows
    assert state.best is not None and state.best.val_acc == max(r.val_acc for r in rows)
    assert state.weights("best")[1:] == (state.best.epoch, "best-validation")
    assert state.weights("last")[1:] == (state.epoch, "last")
    assert dataclasses.replace(state, best=None).weights("best")[2] == "last"  # no validation set: the last
    write_checkpoint(tmp_path, state)
    again = read_checkpoint(tmp_path)
    assert (again.epoch, again.metrics, again.rng["data"].tolist()) == (
        state.epoch,
        state.metrics,
        raw["rng"]["data"].tolist(),
    )
    assert all(torch.equal(again.model[k], v) for k, v in raw["model"].items())
    assert all(torch.equal(again.best.model[k], v) for k, v in raw["best"]["model"].items())
    with pytest.warns(DeprecationWarning, match="returns a Checkpoint"):  # the dict interface of 0.2.0
        assert state["epoch"] == state.epoch and state["best"]["val_acc"] == state.best.val_acc
    damaged = {**raw, "best": {"epoch": 0, "model": raw["model"]}}  # no val_acc
    with pytest.raises(RunFolderError, match=r"checkpoint.pt is not a kernel-reg checkpoint \(KeyError"):
        Checkpoint.from_dict(damaged, run_dir / "checkpoint.pt")


PUBLISHED = sorted(Path(__file__).resolve().parents[1].glob("results/**/weights.pt"))


@pytest.mark.skipif(not PUBLISHED, reason="no published weights")
def test_every_published_weights_file_reads_as_a_checkpoint_and_writes_back_the_same_record():
    from kernel_reg.app.rundir import Checkpoint

    for path in PUBLISHED:
        raw = torch.load(path, weights_only=True)
        state = Checkpoint.from_dict(raw, path)
        again = state.published(raw.get("unfinished"))
        assert set(raw) <= set(again) and again["epoch"] == raw["epoch"] and again["best"] == raw["best"], path
        assert all(torch.equal(again["model"][k], v) for k, v in raw["model"].items()), path


def test_masking_checks_have_stable_identifiers_also_when_read_from_records_written_before_them():
    from kernel_reg.app import checks
    from kernel_reg.app.rundir import CHECK_IDS, check_id

    made = [
        checks.rises_with_eps("l2", [0.5, 0.6], 100),
        checks.rises_with_budget("linf", 8 / 255, 0.4, 0.5, 100),
        checks.not_converged("l2", 0.5, 0.4, 0.3),
        checks.square_beats_gradients("l2", 0.5, 3, 40, 1000, 100),
        checks.zero_gradients(0.2),
        checks.certified_above_robust({"0.5": 0.6}, {"0.5": 0.5}),
    ]
    assert [c.id for c in made] == list(CHECK_IDS)  # one constructor per identifier, none shared
    for c in made:
        old_record = {k: v for k, v in dataclasses.asdict(c).items() if k != "id"}  # as written before ids
        assert MaskingCheck(**old_record).id == c.id
    robustness = Robustness(0.9, 100, {}, {}, None, None, {}, {}, masking_checks=tuple(made))
    assert robustness.check("square-beats-gradients", "l2") is made[3]
    assert robustness.check(made[3].check) is made[3]  # the sentence still finds it
    with pytest.raises(ValueError, match="not the sentence of a known masking check"):
        check_id("something else")
