"""Data provenance and the environment record: what a run read (source and content hashes) and what it ran
with; different data are refused on resume, evaluation and verification, never used silently."""

import json
import shutil

import numpy as np
import pytest
import torch

from kernel_reg.app import data, environment
from kernel_reg.app.builders import load_run
from kernel_reg.app.config import identity
from kernel_reg.app.data import DataMismatchError, DataNotFoundError
from kernel_reg.app.environment import Environment
from kernel_reg.app.evaluation import evaluate_run
from kernel_reg.app.rundir import (
    CONFIG,
    PROVENANCE,
    ROBUSTNESS,
    WEIGHTS,
    Robustness,
    export_weights,
    read_provenance,
    read_robustness,
    run_path,
    unpack_bits,
)
from kernel_reg.app.studies import collect_runs, studies
from kernel_reg.app.suite import EvalSettings
from kernel_reg.app.training import train
from test_cli import kernel_reg, one_error_line

QUICK = EvalSettings(l2_eps=(0.5,), linf_eps=(), attacks=("pgd",), steps=2, n_test=32, checks=False, lipschitz_probe=0)


def copy_embedded(folder, change_pixel=False, gzip=True):
    """The embedded subset's files in ``folder`` (uncompressed when not ``gzip``), one training pixel changed
    when asked: the same examples in another layout, or other examples."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = data.load_arrays("fashion-mnist", data.EMBEDDED)
    train_x = arrays[0].copy()
    if change_pixel:
        train_x[0, 0, 0, 0] ^= 1
    suffix = ".gz" if gzip else ""
    data.write_idx(folder / f"train-images-idx3-ubyte{suffix}", train_x[:, 0])
    data.write_idx(folder / f"train-labels-idx1-ubyte{suffix}", arrays[1].astype(np.uint8))
    data.write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", arrays[2][:, 0])
    data.write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", arrays[3].astype(np.uint8))
    return folder


def test_the_content_hash_is_of_the_examples_not_the_files(tmp_path):
    embedded = data.load_dataset("fashion-mnist", data.EMBEDDED).record
    plain = data.load_dataset("fashion-mnist", str(copy_embedded(tmp_path / "plain", gzip=False))).record
    changed = data.load_dataset("fashion-mnist", str(copy_embedded(tmp_path / "changed", change_pixel=True))).record
    assert (embedded.source, plain.source) == ("embedded", "folder")
    assert (plain.train_sha256, plain.test_sha256) == (embedded.train_sha256, embedded.test_sha256)
    assert changed.train_sha256 != embedded.train_sha256 and changed.test_sha256 == embedded.test_sha256
    # the definition, by hand: sha256 over dtype, shape and bytes of images then labels
    import hashlib

    arrays = data.load_arrays("fashion-mnist", data.EMBEDDED)
    digest = hashlib.sha256()
    for array in arrays[2:]:
        digest.update(f"{array.dtype.str}{array.shape}".encode() + array.tobytes())
    assert embedded.test_sha256 == digest.hexdigest()
    note = data.data_mismatch(embedded, changed)
    assert embedded.train_sha256 in note and changed.train_sha256 in note and "test" not in note.split("(", 2)[-1]
    assert data.data_mismatch(embedded, changed, ("test",)) is None


def test_a_missing_full_data_set_is_named_never_replaced_by_the_subset(tmp_path, monkeypatch, tiny):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="not installed.*dataset-fashion-mnist.*--data-dir embedded"):
        data.load_dataset("fashion-mnist", None)
    config = tiny(tmp_path, data_dir=None, n_train=10000, n_val=0)
    with pytest.raises(DataNotFoundError, match="not installed"):  # not 'exceeds the 4000 examples of the pool'
        train(config, log=lambda _: None)
    assert not run_path(config).exists()
    # a model trained on the full set, evaluated where it is missing: the same line, not the subset's numbers
    published = tiny(tmp_path, num_epochs=1, name="full")
    train(published, log=lambda _: None)
    config_path = run_path(published) / CONFIG
    config_path.write_text(config_path.read_text().replace('"data_dir": "embedded"', '"data_dir": null'))
    with pytest.raises(DataNotFoundError, match="not installed"):
        evaluate_run(run_path(published), QUICK, "cpu")
    assert not (run_path(published) / ROBUSTNESS).exists()


def test_a_run_records_its_data_and_environment_and_no_machine_path(tmp_path, tiny):
    folder = copy_embedded(tmp_path / "my data")
    config = tiny(tmp_path / "runs", data_dir=str(folder), num_epochs=1)
    train(config, log=lambda _: None)
    run_dir = run_path(config)
    saved = json.loads((run_dir / CONFIG).read_text())
    assert saved["data_dir"] is None and str(tmp_path) not in (run_dir / CONFIG).read_text()
    record = read_provenance(run_dir)
    expected = data.load_dataset("fashion-mnist", str(folder)).record
    assert record.data == expected and record.data.source == "folder"
    assert str(tmp_path) not in (run_dir / PROVENANCE).read_text()
    (session,) = record.trainings
    assert session.torch == torch.__version__ and session.threads == torch.get_num_threads()
    assert session.from_epoch == 0 and session.device.startswith("cpu") and session.data_override is None
    assert session.cpu_capability == torch.backends.cpu.get_cpu_capability()
    old = {k: v for k, v in session.to_dict().items() if k != "cpu_capability"}  # a record made before 0.2.3
    assert Environment.from_dict(old).cpu_capability is None
    # resumed for one more epoch: a second session, from epoch 1
    train(config.replace(num_epochs=2), log=lambda _: None)
    assert [s.from_epoch for s in read_provenance(run_dir).trainings] == [0, 1]


def test_resuming_on_other_data_is_refused_unless_allowed_and_then_recorded(tmp_path, tiny_flags):
    root = tmp_path / "runs"
    mine = copy_embedded(tmp_path / "mine")
    base = ["train", *tiny_flags, "--root", str(root), "--data-dir", str(mine), "--num-epochs", "1"]
    assert kernel_reg(*base).returncode == 0
    other = copy_embedded(tmp_path / "other", change_pixel=True)
    again = [*base[:-4], "--data-dir", str(other), "--num-epochs", "2"]
    embedded = data.load_dataset("fashion-mnist", str(mine)).record
    changed = data.load_dataset("fashion-mnist", str(other)).record
    refused = kernel_reg(*again)
    one_error_line(refused, "cannot resume", embedded.train_sha256, changed.train_sha256, "--allow-other-data")
    run_dir = root / "fmnist1000_vgg5" / "tmp"
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 0  # nothing trained
    allowed = kernel_reg(*again, "--allow-other-data")
    assert allowed.returncode == 0, allowed.stderr
    record = read_provenance(run_dir)
    assert record.data == embedded  # the run's data stay those it started with
    assert changed.train_sha256 in record.trainings[-1].data_override and record.trainings[-1].from_epoch == 1


def test_evaluation_checks_the_test_data_and_records_them(tmp_path, tiny):
    config = tiny(tmp_path / "runs", num_epochs=1)
    train(config, log=lambda _: None)
    run_dir = run_path(config)
    result = evaluate_run(run_dir, QUICK, "cpu")
    assert result.data == read_provenance(run_dir).data
    flags = unpack_bits(result.per_example["clean"], result.n)
    assert flags.sum() == round(result.clean * result.n)
    # the per-image flags are the model's own: clean correctness computed here by hand
    run = load_run(run_dir, "cpu", QUICK.n_test)
    with torch.no_grad():
        correct = (run.model(run.splits.test_x).argmax(1) == run.splits.test_y).numpy()
    assert (flags == correct).all()
    # what computed it: this machine, named with what fixes its rounding; the record keeps it
    here = environment.machine(torch.device("cpu"))
    threads = torch.get_num_threads()
    assert here == (f"cpu: {environment.cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {threads} thread"
                    + "s" * (threads > 1))  # fmt: skip
    assert result.machines == (here,) == read_robustness(run_dir).machines
    old = json.loads((run_dir / ROBUSTNESS).read_text())
    del old["machines"]  # a record made before 0.2.4
    assert Robustness.from_dict(old).machines == ()
    other = copy_embedded(tmp_path / "other", change_pixel=True)  # other training images, same test images
    assert evaluate_run(run_dir, QUICK, "cpu", data_dir=str(other)).data_override is None
    test_changed = tmp_path / "test changed"
    copy_embedded(test_changed)
    images = data.read_idx(test_changed / "t10k-images-idx3-ubyte.gz").copy()
    images[0, 0, 0] ^= 1
    data.write_idx(test_changed / "t10k-images-idx3-ubyte.gz", images)
    before = (run_dir / ROBUSTNESS).read_bytes()
    with pytest.raises(DataMismatchError, match="test sha256 recorded"):
        evaluate_run(run_dir, QUICK, "cpu", data_dir=str(test_changed))
    assert (run_dir / ROBUSTNESS).read_bytes() == before
    allowed = evaluate_run(run_dir, QUICK, "cpu", data_dir=str(test_changed), allow_other_data=True)
    assert "test sha256" in allowed.data_override and read_robustness(run_dir).data_override == allowed.data_override


def test_a_published_folder_is_not_overwritten_unless_asked(tmp_path, tiny_flags):
    root = tmp_path / "runs"
    assert kernel_reg("train", *tiny_flags, "--root", str(root), "--num-epochs", "1").returncode == 0
    run_dir = root / "fmnist1000_vgg5" / "tmp"
    export_weights(run_dir)
    (run_dir / "checkpoint.pt").unlink()  # as published: weights.pt alone
    assert (run_dir / WEIGHTS).is_file()
    quick = ["--eps-l2", "0.5", "--eps-linf", "--attack-steps", "2", "--eval-n-test", "16", "--no-checks",
             "--lipschitz-probe", "0", "--device", "cpu"]  # fmt: skip
    refused = kernel_reg("evaluate", str(run_dir), *quick)
    one_error_line(refused, str(run_dir), "published", "--out", "--in-place")
    assert not (run_dir / ROBUSTNESS).exists()
    out = tmp_path / "mine"
    written = kernel_reg("evaluate", str(run_dir), *quick, "--out", str(out))
    assert written.returncode == 0, written.stderr
    assert read_robustness(out / "tmp").n == 16 and not (run_dir / ROBUSTNESS).exists()
    assert kernel_reg("evaluate", str(run_dir), *quick, "--in-place").returncode == 0
    assert read_robustness(run_dir).n == 16


def test_runs_on_different_data_are_never_one_configuration(tmp_path, tiny):
    root = tmp_path / "runs"
    same = tiny(root, num_epochs=1, name="same", data_dir=str(copy_embedded(tmp_path / "same")))
    other = tiny(root, num_epochs=1, name="other", data_dir=str(copy_embedded(tmp_path / "d", change_pixel=True)))
    for config in (same, other):
        train(config, log=lambda _: None)
    assert identity(same) == identity(other)  # one configuration but for the files: only the hashes differ
    groups = studies(collect_runs(root))
    assert len(groups) == 2 and all(len(g.runs) == 1 for g in groups)
    assert all("data" in g.differs for g in groups) and groups[0].title != groups[1].title


def test_the_same_files_elsewhere_are_the_same_configuration(tmp_path, tiny):
    root = tmp_path / "runs"
    shutil.copytree(data.EMBEDDED_FASHION_MNIST, tmp_path / "copy")
    first = tiny(root, num_epochs=1, name="a", data_dir=str(tmp_path / "copy"))
    second = tiny(root, num_epochs=1, name="b", data_dir=str(copy_embedded(tmp_path / "plain", gzip=False)))
    for config in (first, second):
        train(config, log=lambda _: None)
    (group,) = studies(collect_runs(root))
    assert len(group.runs) == 2
