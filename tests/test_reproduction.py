"""Retraining a published run and comparing it with its record, evaluation by evaluation."""

import dataclasses
import json
import os
import platform

from kernel_reg.app.environment import Environment, cpu_model
from kernel_reg.app.reproduction import compare, machine_difference
from kernel_reg.app.rundir import METRICS, PROVENANCE, read_metrics, run_path
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
    assert "2 of 2 evaluations bit-identical" in done.stdout and "not the record's machine" not in done.stdout
    again = read_metrics(tmp_path / "again" / config.experiment / config.name)
    assert [r.test_acc for r in again] == [r.test_acc for r in read_metrics(run_dir)]
    rows = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]
    rows[-1]["test_acc"] += 1 / 64  # the record says one more test image was right
    (run_dir / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    provenance = json.loads((run_dir / PROVENANCE).read_text())
    provenance["trainings"][0]["cpu_capability"] = "AVX512_OTHER"  # and trained on another machine
    (run_dir / PROVENANCE).write_text(json.dumps(provenance))
    changed = kernel_reg("reproduce", str(run_dir), "--root", str(tmp_path / "third"), "--threads", "1")
    assert changed.returncode == 1 and "1 of 2 evaluations bit-identical" in changed.stdout
    assert "test_acc 0.0156" in changed.stderr and changed.stderr.count("\n") == 1
    assert "not the record's machine" in changed.stdout and "1 thread(s), AVX512_OTHER; this run on" in changed.stderr
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


def test_the_machine_difference_names_what_fixes_the_order_of_the_sums():
    here = Environment("0.2.3", None, None, "2.13.0+cpu", "3.11.7", "Linux x86_64", "cpu: AMD EPYC", 1, False,
                       False, False, cpu_capability="AVX2")  # fmt: skip
    assert machine_difference([here, dataclasses.replace(here, from_epoch=5, commit="abc")], here) is None
    other = dataclasses.replace(here, device="cpu: Intel Xeon", cpu_capability="AVX512")
    assert machine_difference([other], here) == (
        "the record trained on cpu: Intel Xeon, 1 thread(s), AVX512; this run on cpu: AMD EPYC, 1 thread(s), AVX2"
    )
    old = dataclasses.replace(here, device="cpu: x86_64", cpu_capability=None)  # a record made before 0.2.3
    assert "cpu: x86_64, 1 thread(s), instruction set not recorded" in machine_difference([old], here)
    two = machine_difference([here, dataclasses.replace(here, threads=2)], here)
    assert two is not None and "AVX2; then cpu: AMD EPYC, 2 thread(s)" in two
    assert machine_difference([], here) == "the record does not say what it trained on; this run on " + (
        "cpu: AMD EPYC, 1 thread(s), AVX2"
    )


def test_the_cpu_model_is_read_from_cpuinfo_else_from_platform(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n")
    assert cpu_model(info) == "AMD EPYC 7B13"
    fallback = platform.processor() or platform.machine()
    info.write_text("processor\t: 0\nmodel name\t:\n")  # e.g. some ARM machines: no model name
    assert cpu_model(info) == fallback
    assert cpu_model(tmp_path / "missing") == fallback
