"""Retraining a published run and comparing it with its record, evaluation by evaluation."""

import json
import os

from kernel_reg.app.reproduction import compare
from kernel_reg.app.rundir import METRICS, read_metrics, run_path
from kernel_reg.app.training import train
from test_cli import kernel_reg


def test_a_retrained_run_repeats_its_record_bit_for_bit_and_a_changed_record_is_named(tmp_path, tiny, tiny_flags):
    config = tiny(tmp_path / "published", num_epochs=2)
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as the published runs trained
    trained = kernel_reg(
        "train", *tiny_flags, "--root", str(tmp_path / "published"), "--num-epochs", "2", env=one_thread
    )
    assert trained.returncode == 0, trained.stderr
    run_dir = run_path(config)
    done = kernel_reg("reproduce", str(run_dir), "--root", str(tmp_path / "again"), "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "2 of 2 evaluations bit-identical" in done.stdout
    again = read_metrics(tmp_path / "again" / config.experiment / config.name)
    assert [r.test_acc for r in again] == [r.test_acc for r in read_metrics(run_dir)]
    rows = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]
    rows[-1]["test_acc"] += 1 / 64  # the record says one more test image was right
    (run_dir / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    changed = kernel_reg("reproduce", str(run_dir), "--root", str(tmp_path / "third"), "--threads", "1")
    assert changed.returncode == 1 and "1 of 2 evaluations bit-identical" in changed.stdout
    assert "test_acc 0.0156" in changed.stderr and changed.stderr.count("\n") == 1
    busy = kernel_reg("reproduce", str(run_dir), "--root", str(tmp_path / "third"))
    assert busy.returncode == 2 and "choose an empty --root" in busy.stderr


def test_compare_counts_identical_evaluations_and_the_largest_differences(tmp_path, tiny):
    config = tiny(tmp_path, num_epochs=2)
    rows = train(config, log=lambda _: None)
    moved = [rows[0], rows[1].__class__(**{**rows[1].to_dict(), "train_loss": rows[1].train_loss + 0.25})]
    result = compare(rows, moved)
    assert (result.evaluations, result.identical, result.exact) == (2, 1, False)
    assert result.largest["train_loss"] == abs((rows[1].train_loss + 0.25) - rows[1].train_loss)
    assert result.largest["test_acc"] == 0.0 and compare(rows, rows).exact
