"""The package as users install it: version, optional extras, portable locks, licence files, citation."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import filelock
import pytest

import kernel_reg
from kernel_reg.app import environment
from kernel_reg.app.cli import main
from kernel_reg.app.extras import MissingExtra, require
from kernel_reg.app.rundir import RunFolderError, locked

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_comes_from_the_package_metadata(capsys):
    assert kernel_reg.__version__ == PYPROJECT["project"]["version"] == environment.package_version()
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"kernel-reg {kernel_reg.__version__}\n"


def test_a_missing_extra_is_named_with_the_command_that_installs_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(MissingExtra, match=r"kernel-reg sweep needs the package 'submitit'.*kernel-reg\[sweep\]"):
        require("submitit", "sweep", "kernel-reg sweep")
    monkeypatch.setitem(sys.modules, "yaml", None)
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {reg: [none]}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--grid-file", str(grid), "--root", str(tmp_path), "--dry-run"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "a YAML grid file needs the package 'yaml'" in err and "pip install 'kernel-reg[sweep]'" in err
    # a JSON grid needs no YAML
    grid.with_suffix(".json").write_text('[{"reg": ["none"]}]')
    assert main(["sweep", "--grid-file", str(grid.with_suffix(".json")), "--root", str(tmp_path), "--dry-run"]) == 0


def test_every_extra_names_installable_requirements_and_the_core_stays_small():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"plots", "sweep", "stats", "all", "docs", "dev"} <= set(extras)
    core = {re.split(r"[<>=\[ ]", d)[0] for d in PYPROJECT["project"]["dependencies"]}
    assert core == {"torch", "numpy", "tqdm", "filelock"}, "matplotlib, submitit, pyyaml, scipy are extras"


def test_the_run_folder_lock_is_filelocks_and_contends_with_a_filelock_on_the_same_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with filelock.FileLock(run_dir / ".lock", timeout=0):
        with pytest.raises(RunFolderError, match=rf"{run_dir} is in use by another process"):
            with locked(run_dir, "a test"):
                pass
    with locked(run_dir, "a test") as held:  # free again
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(held / ".lock", timeout=0).acquire()


def test_the_package_imports_and_runs_without_fcntl(tmp_path):
    """Windows has no fcntl: the package must not need it (filelock picks the platform's primitive)."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import kernel_reg, kernel_reg.app.cli, kernel_reg.app.rundir, kernel_reg.app.training, kernel_reg.app.sweep\n"
        "print('imported')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr


def test_licence_notice_and_citation_are_declared_and_valid():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and set(project["license-files"]) == {"LICENSE", "NOTICE"}
    assert all((ROOT / name).is_file() for name in project["license-files"])
    data_notice = ROOT / "src/kernel_reg/data/fashion-mnist-subset/NOTICE"
    assert "Zalando SE" in data_notice.read_text() and "MIT" in data_notice.read_text()
    assert "data/fashion-mnist-subset/NOTICE" in PYPROJECT["tool"]["setuptools"]["package-data"]["kernel_reg"]
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["kernel_reg"]
    cffconvert = Path(sys.executable).with_name("cffconvert")
    done = subprocess.run([str(cffconvert), "--validate", "-i", str(ROOT / "CITATION.cff")], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    citation = (ROOT / "CITATION.cff").read_text()
    assert f"version: {project['version']}" in citation and "A Kernel Perspective for Regularizing" in citation


def test_the_changelog_starts_with_this_version_and_states_the_deprecation_policy():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.M)
    assert versions[0] == PYPROJECT["project"]["version"]
    assert "Deprecation policy" in changelog and "kernel_reg.lipschitz" in changelog


def test_the_claimed_python_floor_is_the_one_the_code_is_checked_against():
    """requires-python, ruff's target version and vermin agree: no syntax or API newer than the floor."""
    floor = re.fullmatch(r">=3\.(\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    assert PYPROJECT["tool"]["ruff"]["target-version"] == f"py3{floor}"
    vermin = Path(sys.executable).with_name("vermin")
    done = subprocess.run(
        [str(vermin), "--no-tips", "--violations", "--feature", "union-types", f"-t=3.{floor}-",
         str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "examples"), str(ROOT / "scripts")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_application_module_has_a_layer_and_every_library_module_is_forbidden_the_application():
    """import-linter checks only the modules its contracts name: a new module must be placed in them."""
    contracts = {c["type"]: c for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
    app = ROOT / "src" / "kernel_reg" / "app"
    layered = {m.strip() for layer in contracts["layers"]["layers"] for m in layer.split("|")}
    assert layered == {p.stem for p in app.glob("*.py") if p.stem != "__init__"}
    top = ROOT / "src" / "kernel_reg"
    shim = re.compile(r"^__getattr__ = moved_module\(", re.M)  # an old path forwarding to the new one
    modules = {p.stem for p in top.glob("*.py") if not shim.search(p.read_text())}
    packages = {p.parent.name for p in top.glob("*/__init__.py")}
    forbidden = {m.removeprefix("kernel_reg.") for m in contracts["forbidden"]["source_modules"]}
    assert (modules | packages) - {"app", "__init__", "__main__"} == forbidden


def test_the_version_is_that_of_the_source_tree_imported_not_of_another_installed_checkout(tmp_path):
    """An editable install of one checkout with PYTHONPATH at another (a study's worktree): the version
    recorded in provenance is the imported tree's; a tree whose pyproject is not kernel-reg's, or none,
    leaves the installed metadata's."""
    package = Path(kernel_reg.__file__).parent
    for name, version, expected in (("kernel-reg", "9.8.7", "9.8.7"), ("other", "9.8.7", kernel_reg.__version__)):
        tree = tmp_path / name
        shutil.copytree(package, tree / "src" / "kernel_reg", ignore=shutil.ignore_patterns("__pycache__"))
        (tree / "pyproject.toml").write_text(f'[build-system]\nrequires = []\n\n[project]\nname = "{name}"\n'
                                             f'version = "{version}"\n\n[tool.x]\nversion = "0"\n')  # fmt: skip
        probe = "import kernel_reg; print(kernel_reg.__file__, kernel_reg.__version__)"
        done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(tree / "src")},
                              capture_output=True, text=True, check=True)  # fmt: skip
        imported, found = done.stdout.split()
        assert Path(imported).is_relative_to(tree) and found == expected
