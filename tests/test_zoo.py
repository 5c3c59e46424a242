"""The model index: generated from the run folders, loaded with checked weights, verified against the
records; and the committed index, whose every entry is checked against its files."""

import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from kernel_reg.app import data, zoo
from kernel_reg.app.builders import load_run
from kernel_reg.app.cli import build_parser, config_from_args, train_command
from kernel_reg.app.config import identity
from kernel_reg.app.evaluation import certify_run, evaluate_run
from kernel_reg.app.rundir import (
    CHECKPOINT,
    CONFIG,
    ROBUSTNESS,
    WEIGHTS,
    export_weights,
    pack_bits,
    read_config,
    run_path,
    unpack_bits,
)
from kernel_reg.app.suite import EvalSettings
from kernel_reg.app.training import train
from test_cli import kernel_reg, one_error_line
from test_provenance import copy_embedded

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "results"
HEADLINE = "certified/fmnist_vgg5_h100/orth_m1.0_b512_e36"
SETTINGS = EvalSettings(l2_eps=(0.25, 0.5), linf_eps=(), attacks=("pgd",), steps=3, n_test=40, checks=False,
                        lipschitz_probe=0)  # fmt: skip


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A results folder with one published tiny model: trained, evaluated, certified, exported, its
    checkpoint removed; and its index."""
    from conftest import CHEAP, TINY_FIELDS
    from kernel_reg.app.config import preset_config

    results = tmp_path_factory.mktemp("results")
    config = preset_config(
        "fmnist1000_vgg5", **{**TINY_FIELDS, "root": str(results), "num_epochs": 2, "name": "tiny_gp"}
    ).updated(  # fmt: skip
        {"regs": ("gradient-penalty",), **CHEAP}, strict=False
    )
    train(config, log=lambda _: None)
    run_dir = run_path(config)
    evaluate_run(run_dir, SETTINGS, "cpu")
    certify_run(run_dir, (0.1, 0.5), n_test=48, device="cpu")
    export_weights(run_dir)
    (run_dir / CHECKPOINT).unlink()
    zoo.write_index(results, train_command)
    return results


def test_the_index_holds_each_published_model_with_its_files_and_numbers(published):
    (entry,) = zoo.read_index(published / zoo.INDEX)
    run_dir = published / entry.folder
    assert entry.name == "fmnist1000_vgg5/tiny_gp"  # named by hand, not by a sweep: its folder name
    assert entry.weights_sha256 == hashlib.sha256((run_dir / WEIGHTS).read_bytes()).hexdigest()
    assert entry.data == data.load_dataset("fashion-mnist", data.EMBEDDED).record
    robustness = json.loads((run_dir / ROBUSTNESS).read_text())
    numbers = entry.numbers()
    assert numbers["robustness.json clean"] == robustness["clean"]
    assert numbers["robustness.json attacked l2 0.5"] == robustness["l2"]["0.5"]
    assert numbers["robustness.json certified pairwise l2 0.5"] == robustness["certified_l2"]["0.5"]
    certified = json.loads((run_dir / "certified.json").read_text())
    assert numbers["certified.json certified global l2 0.1"] == certified["global_rule"]["0.1"]
    assert entry.trained_with["torch"] == torch.__version__
    assert str(published) not in (published / zoo.INDEX).read_text()  # no machine path


def test_load_gives_the_network_in_eval_mode_without_any_data(published, monkeypatch):
    (entry,) = zoo.read_index(published / zoo.INDEX)
    run = load_run(published / entry.folder, "cpu", 16)
    x = run.splits.test_x
    monkeypatch.setattr(data, "load_dataset", lambda *a: pytest.fail("load read a data set"))
    state = torch.get_rng_state()
    model = zoo.load(entry.name, published / zoo.INDEX)
    assert torch.equal(torch.get_rng_state(), state) and not model.training
    with torch.no_grad():
        assert torch.equal(model(x), run.model(x))
    assert zoo.load(entry.folder, published / zoo.INDEX) is not None  # by its folder too


def test_verify_agrees_on_all_and_on_the_first_images(published):
    (entry,) = zoo.read_index(published / zoo.INDEX)
    comparisons = zoo.verify(entry.name, None, published / zoo.INDEX)
    assert comparisons and all(c.agrees for c in comparisons)
    assert {c.n for c in comparisons} == {40, 48}
    measured = {c.what.split(" (")[0] for c in comparisons}
    assert {"clean accuracy", "attacked l2 accuracy at 0.5", "certified pairwise l2 accuracy at 0.5",
            "certified global l2 accuracy at 0.1", "Lipschitz bound L"} <= measured  # fmt: skip
    small = zoo.verify(entry.name, 7, published / zoo.INDEX)
    assert {c.n for c in small} == {7} and all(c.agrees for c in small)


def copied_record(published, tmp_path):
    """(a copy of the published results folder, its model's entry, the path and values of its robustness.json)."""
    copy = tmp_path / "results"
    shutil.copytree(published, copy)
    (entry,) = zoo.read_index(copy / zoo.INDEX)
    path = copy / entry.folder / ROBUSTNESS
    return copy, entry, path, json.loads(path.read_text())


def test_verify_names_each_number_that_differs_and_exits_1(published, tmp_path):
    copy, entry, path, record = copied_record(published, tmp_path)
    n = record["n"]
    flags = unpack_bits(record["per_example"]["clean"], n)
    flags[0] = not flags[0]  # the record now says another image was (not) classified correctly
    record["per_example"]["clean"] = pack_bits(flags)
    path.write_text(json.dumps(record))
    done = kernel_reg("verify", entry.name, "--index", str(copy / zoo.INDEX))
    assert done.returncode == 1, done.stderr
    assert "clean accuracy (robustness.json)" in done.stderr and "1 of" in done.stderr
    assert "DIFFERS  clean accuracy (robustness.json)" in done.stdout


def test_bad_models_weights_and_data_are_one_line_exit_2(published, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(published, copy)
    index = copy / zoo.INDEX
    (entry,) = zoo.read_index(index)
    one_error_line(kernel_reg("verify", "no-such-model", "--index", str(index)), "no-such-model")
    unknown = kernel_reg("verify", "no-such-model", "--index", str(index))
    assert entry.name in unknown.stderr or entry.name in unknown.stdout  # the known names are listed
    weights = copy / entry.folder / WEIGHTS
    raw = bytearray(weights.read_bytes())
    raw[-100] ^= 0xFF
    weights.write_bytes(bytes(raw))
    found = hashlib.sha256(bytes(raw)).hexdigest()
    one_error_line(kernel_reg("verify", entry.name, "--index", str(index)), str(weights), found, entry.weights_sha256)
    with pytest.raises(zoo.ZooError, match=found):
        zoo.load(entry.name, index)
    weights.unlink()
    one_error_line(kernel_reg("verify", entry.name, "--index", str(index)), "has no weights.pt")
    shutil.rmtree(copy / entry.folder)
    one_error_line(kernel_reg("verify", entry.name, "--index", str(index)), "gone")
    for text in ("{not json", "[1, 2]", '{"format": 1, "models": [{"name": "x"}]}', '{"format": 99, "models": []}'):
        index.write_text(text)
        one_error_line(kernel_reg("models", "--index", str(index)), str(index), "not a valid model index")
    one_error_line(kernel_reg("verify", entry.name, "--n-test", "-5"), "--n-test must be an integer >= 1")


def test_verify_refuses_other_test_data_naming_both_hashes(published, tmp_path):
    (entry,) = zoo.read_index(published / zoo.INDEX)
    other = copy_embedded(tmp_path / "other")
    images = data.read_idx(other / "t10k-images-idx3-ubyte.gz").copy()
    images[0, 0, 0] ^= 1
    data.write_idx(other / "t10k-images-idx3-ubyte.gz", images)
    found = data.load_dataset("fashion-mnist", str(other)).record.test_sha256
    done = kernel_reg("verify", entry.name, "--index", str(published / zoo.INDEX), "--data-dir", str(other))
    one_error_line(done, entry.data.test_sha256, found)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (wrong / name).write_bytes(b"not an IDX file")
    done = kernel_reg("verify", entry.name, "--index", str(published / zoo.INDEX), "--data-dir", str(wrong))
    one_error_line(done, str(wrong), "bad magic number")
    missing = kernel_reg("verify", entry.name, "--index", str(published / zoo.INDEX), "--data-dir", str(tmp_path))
    one_error_line(missing, "looked in", "train-images-idx3-ubyte")


def test_models_lists_the_index(published):
    done = kernel_reg("models", "--index", str(published / zoo.INDEX))
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert (
        header.split()[:2] == ["name", "clean"]
        and "g: sqrt(2) L rule" in header
        and row.startswith(zoo.read_index(published / zoo.INDEX)[0].name)
    )


# ---- the committed index and the published run folders


def test_the_committed_index_is_the_one_the_run_folders_give():
    """Regenerated from the run folders (weights hashed again, numbers read again), it is the committed file:
    every entry matches its files."""
    committed = (RESULTS / zoo.INDEX).read_text()
    assert zoo.index_text(zoo.build_index(RESULTS, train_command)) == committed, "run `kernel-reg models --update`"


def test_models_lists_every_published_model():
    done = kernel_reg("models", "--index", str(RESULTS / zoo.INDEX))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    entries = zoo.read_index(RESULTS / zoo.INDEX)
    assert len(lines) == 1 + len(entries) and [line.split()[0] for line in lines[1:]] == [e.name for e in entries]
    headline = next(line for line in lines if line.startswith(HEADLINE + " "))
    assert "86.6 (n=10000)" in headline and "0.5:72.1 (n=10000)" in headline
    older = next(line for line in lines if line.startswith("certified/fmnist_vgg5/lipnet_m0.7 "))
    assert "0.5:56.7 (n=10000)" in older  # the full-test-set record, per pair: certified.json


def test_every_published_model_is_in_the_index():
    entries = zoo.read_index(RESULTS / zoo.INDEX)
    assert {e.folder for e in entries} == {p.parent.relative_to(RESULTS).as_posix() for p in RESULTS.rglob(WEIGHTS)}
    assert any(e.name == HEADLINE for e in entries)
    assert all(e.data is not None for e in entries)


def test_no_published_record_holds_a_machine_path():
    for path in RESULTS.rglob("*.json"):
        text = path.read_text()
        assert not re.search(r'"(/(home|root|work|tmp|usr|Users)/|[A-Za-z]:\\\\)', text), path
    for path in RESULTS.rglob(CONFIG):
        assert json.loads(path.read_text())["data_dir"] in (None, data.EMBEDDED), path


def test_each_train_command_gives_the_configuration_back():
    parser = build_parser()
    for entry in zoo.read_index(RESULTS / zoo.INDEX):
        config = read_config(RESULTS / entry.folder)
        words = shlex.split(entry.train_command)
        assert words[:2] == ["kernel-reg", "train"]
        again = config_from_args(parser.parse_args(words[1:]))
        assert identity(again) == identity(config), entry.name
        assert again.name == config.name


def quoted_numbers(line: str) -> list[str]:
    """The accuracies a line quotes: one-decimal numbers followed by %, and in a table row the cells that
    hold one such number alone (bold or not)."""
    found = re.findall(r"(\d+\.\d)%", line)
    if line.startswith("|"):
        found += [m.group(1) for cell in line.split("|") if (m := re.fullmatch(r"\s*\**(\d+\.\d)\**\s*", cell))]
    return found


def blocks(text: str) -> list[str]:
    """A document's paragraphs, list items and table rows, each joined into one string."""
    found: list[list[str]] = []
    for line in text.splitlines():
        starts = line.startswith(("|", "- ", "* ")) or not found or not found[-1] or found[-1][0].startswith("|")
        if not line.strip():
            found.append([])
        elif starts:
            found.append([line])
        else:
            found[-1].append(line)
    return [" ".join(lines) for lines in found if lines]


def test_every_model_number_quoted_in_readme_and_results_is_in_the_index():
    """A paragraph, list item or table row of README or RESULTS that names a published model by its index
    name quotes only numbers of that model's entry (accuracies in %, one decimal)."""
    entries = zoo.read_index(RESULTS / zoo.INDEX)
    checked = 0
    for document in ("README.md", "RESULTS.md"):
        for block in blocks((REPOSITORY / document).read_text()):
            named = [e for e in entries if f"`{e.name}`" in block]
            if len(named) != 1:
                continue
            recorded = {f"{100 * v:.1f}" for v in named[0].numbers().values()}
            for number in quoted_numbers(block):
                assert number in recorded, f"{document}: {number}% is not a number of {named[0].name}: {block}"
                checked += 1
    # the headline's clean, certified and attacked numbers quoted in prose, in README and RESULTS; the tables
    # that quote records are generated from them and checked by tests/test_results.py
    assert checked >= 9


def test_blocks_split_paragraphs_items_and_rows():
    text = "a\nb\n\n- c\n  d\n- e\n| 1 |\n| 2 |\nf"
    assert blocks(text) == ["a b", "- c   d", "- e", "| 1 |", "| 2 |", "f"]


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_headline_verifies_on_its_first_images():
    comparisons = zoo.verify(HEADLINE, 100, RESULTS / zoo.INDEX)
    assert comparisons and all(c.agrees for c in comparisons), [c.line() for c in comparisons if not c.agrees]


def test_a_sweep_named_run_is_named_by_method_hyperparameters_and_seed(tmp_path):
    from kernel_reg.app.config import preset_config
    from kernel_reg.app.rundir import write_config
    from kernel_reg.app.sweep import expand, parse_grid

    base = preset_config("fmnist_vgg5", n_train=10000, width=16)
    (config,) = expand(base, [parse_grid("reg=pgd-l2 epsilon=1")], 1)
    assert config.name == "pgd-l2_epsilon1_n_train10000_width16_s0"
    write_config(tmp_path / "study" / config.name, config)
    assert zoo.model_name(tmp_path, tmp_path / "study" / config.name) == "study/pgd-l2_epsilon1_s0"
    mine = config.replace(name="my_run")
    write_config(tmp_path / "study" / "my_run", mine)
    assert zoo.model_name(tmp_path, tmp_path / "study" / "my_run") == "study/my_run"


def test_a_number_without_per_image_flags_compares_only_on_all_its_images(published, tmp_path):
    copy, entry, path, record = copied_record(published, tmp_path)
    del record["per_example"]["l2/0.5"]  # as a record written before per-image flags
    path.write_text(json.dumps(record))
    lines: list[str] = []
    some = zoo.verify(entry.name, 10, copy / zoo.INDEX, log=lines.append)
    assert not any("attacked l2 accuracy at 0.5" in c.what for c in some)
    assert any(line.startswith("skipped  attacked l2 accuracy at 0.5") for line in lines)
    every = zoo.verify(entry.name, None, copy / zoo.INDEX)
    (attacked,) = [c for c in every if c.what.startswith("attacked l2 accuracy at 0.5")]
    assert attacked.n == record["n"] and attacked.recorded == record["l2"]["0.5"] and attacked.agrees


def test_verify_says_when_a_record_was_computed_on_another_machine(published, tmp_path):
    """A record computed elsewhere (another CPU's kernels can turn an attack on a borderline image) is named
    with both machines before the comparisons; one computed on this machine, or before records said, is not."""
    from kernel_reg.app.environment import machine

    copy, entry, path, record = copied_record(published, tmp_path)
    here, other = machine(torch.device("cpu")), "cpu: Other CPU, AVX512, 1 thread"
    for machines, noted in (([], False), ([here], False), ([other], True)):
        record["machines"] = machines
        path.write_text(json.dumps(record))
        lines: list[str] = []
        assert all(c.agrees for c in zoo.verify(entry.name, 7, copy / zoo.INDEX, log=lines.append))
        notes = [line for line in lines if line.startswith("note")]
        assert notes == ([f"note     robustness.json was computed on {other}; this machine is {here}"] if noted else [])
