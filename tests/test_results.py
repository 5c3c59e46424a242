"""RESULTS.md's generated tables: each is what scripts/results_tables.py makes from the committed records."""

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


def test_check_fails_and_names_a_table_that_differs_from_the_records(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("<!-- generated: paired fmnist300_vgg5 -->\n| edited by hand |\n<!-- end generated -->\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--results", str(results)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 1 and "paired fmnist300_vgg5" in done.stderr
    assert results.read_text().count("edited by hand") == 1  # --check changes nothing
