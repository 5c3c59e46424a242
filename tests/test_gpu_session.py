"""The tools of a lent GPU session (scripts/device_tree.py, scripts/gpu_session.py): what a call of the device
tool sends and brings back stays within its limits, and the checkout is left as it was."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_gpu_session():
    spec = importlib.util.spec_from_file_location("gpu_session", SCRIPTS / "gpu_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _device_tree(repo: Path, *args: str) -> subprocess.CompletedProcess:
    script = Path(__file__).parents[1] / "scripts" / "device_tree.py"
    return subprocess.run([sys.executable, script, *args], cwd=repo, capture_output=True, text=True)


def test_device_tree_takes_the_largest_weights_out_of_a_device_call_and_restores_them(tmp_path):
    """The tree a device call sends (tracked and untracked-not-ignored files) brought under a limit by taking
    the largest weights out of git's index, largest first, those under --keep staying; files on disk and HEAD
    untouched, commits refused meanwhile; restore leaves the checkout exactly as it was."""
    repo = tmp_path / "repo"
    sizes = {"results/big/weights.pt": 6000, "results/mid/weights.pt": 3000, "results/small/weights.pt": 1000,
             "results/keep/weights.pt": 7000, "results/notes.json": 500, "src/code.py": 500}  # fmt: skip
    for name, size in sizes.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    committing = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m"]
    subprocess.run(["git", "init", "-q", repo], check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run([*committing, "records"], cwd=repo, check=True)
    (repo / "results/new/weights.pt").parent.mkdir()
    (repo / "results/new/weights.pt").write_bytes(b"n" * 2000)  # exported, not committed yet: it travels too
    exclude = repo / ".git/info/exclude"
    before = {"exclude": exclude.read_text(), "status": subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout}  # fmt: skip
    limit = ["--limit", str(15000 / 2**20), "--room", "0"]  # 20,000 bytes sent: 5,000 must go
    over = _device_tree(repo, "size", *limit)
    assert over.returncode == 1 and "over" in over.stdout
    # what cannot fit is refused before anything changes
    refused = _device_tree(repo, "shrink", "--keep", "results", "--limit", str(15000 / 2**20))
    assert refused.returncode == 1 and "results/keep/weights.pt" in refused.stderr
    done = _device_tree(repo, "shrink", "--keep", "results/keep", *limit)
    assert done.returncode == 0, done.stderr
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert "results/big/weights.pt" not in tracked and "results/mid/weights.pt" in tracked  # 6,000 was enough
    assert _device_tree(repo, "size", *limit).returncode == 0
    assert all((repo / name).stat().st_size == size for name, size in sizes.items())
    commit = subprocess.run([*committing, "x", "--allow-empty"], cwd=repo, capture_output=True, text=True)
    assert commit.returncode != 0 and "device_tree.py restore" in commit.stderr
    assert _device_tree(repo, "shrink", *limit).returncode == 1  # once
    # a tighter limit: the largest go first, then the untracked export, never the kept folder
    assert _device_tree(repo, "restore").returncode == 0
    tighter = _device_tree(repo, "shrink", "--keep", "results/keep", "--limit", str(9500 / 2**20), "--room", "0")
    assert tighter.returncode == 0 and "took 3 weights files" in tighter.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert "results/new/" not in status and "D  results/big/weights.pt" in status
    assert "D  results/mid/weights.pt" in status and "results/keep" not in status and "results/small" not in status
    assert _device_tree(repo, "restore").returncode == 0
    after = {"exclude": exclude.read_text(), "status": subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout}  # fmt: skip
    assert after == before and not (repo / ".git/hooks/pre-commit").exists()
    assert "nothing to restore" in _device_tree(repo, "restore").stdout
    # a weights file with staged changes is not taken out: restore could not give them back
    (repo / "results/big/weights.pt").write_bytes(b"retrained")
    subprocess.run(["git", "add", "results/big/weights.pt"], cwd=repo, check=True)
    staged = _device_tree(repo, "shrink", *limit)
    assert staged.returncode == 1 and "staged changes" in staged.stderr


def _study(root: Path) -> dict[str, bytes]:
    """A certified study's folder as the stages leave it: a finished run (published weights and its
    checkpoint), an unfinished one (its checkpoint only), a log."""
    files = {
        "results/certified_study/certified_final/fmnist_vgg5/done_s0/config.json": b"{}",
        "results/certified_study/certified_final/fmnist_vgg5/done_s0/weights.pt": os.urandom(3000),
        "results/certified_study/certified_final/fmnist_vgg5/done_s0/checkpoint.pt": os.urandom(5000),
        "results/certified_study/certified_final/fmnist_vgg5/half_s1/checkpoint.pt": os.urandom(4000),
        "results/certified_study/gpu_final.log": b"trained\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_a_stage_comes_back_in_pieces_the_tool_returns_and_unpacks_to_the_same_files(tmp_path, monkeypatch, capsys):
    """Packed in pieces of at most PIECE bytes, at most 8 of them, named in letters, digits and dots: the
    finished run without its checkpoint (its weights are what is published), the unfinished one with it (the
    next session resumes it); unpacked elsewhere, every file is the same. When checkpoints would exceed what
    comes back, they are left out and it is said."""
    gpu = load_gpu_session()
    here, there = tmp_path / "device", tmp_path / "checkout"
    files = _study(here)
    monkeypatch.chdir(here)
    monkeypatch.setattr(gpu, "PIECE", 2000)
    pieces = gpu.pack("final", gpu.STUDY, tmp_path / "out")
    assert 1 < len(pieces) <= gpu.MAX_PIECES and all(p.stat().st_size <= 2000 for p in pieces)
    assert all(p.name.replace(".", "").isalnum() for p in pieces)
    there.mkdir()
    written = gpu.unpack(tmp_path / "out", there)
    expected = {n: d for n, d in files.items() if not n.endswith("done_s0/checkpoint.pt")}
    assert sorted(written) == sorted(expected)
    assert all((there / n).read_bytes() == d for n, d in expected.items())
    monkeypatch.setattr(gpu, "MAX_TOTAL", 6000)  # the checkpoints do not fit: left out, said
    capsys.readouterr()
    gpu.pack("final", gpu.STUDY, tmp_path / "small")
    assert "packed without them" in capsys.readouterr().out
    assert not any(n.endswith("checkpoint.pt") for n in gpu.unpack(tmp_path / "small", tmp_path / "again"))
    monkeypatch.setattr(gpu, "MAX_TOTAL", 100)
    with pytest.raises(SystemExit, match="more than the"):
        gpu.pack("final", gpu.STUDY, tmp_path / "none")


def test_unpacking_refuses_anything_outside_the_stage_s_folder(tmp_path, monkeypatch):
    """An archive with a member outside the stage's folder (a path up, a source file, a link) extracts
    nothing."""
    import io
    import tarfile

    gpu = load_gpu_session()
    for name, kind in (("results/certified_study/../../src/evil.py", tarfile.REGTYPE),
                       ("src/kernel_reg/__init__.py", tarfile.REGTYPE),
                       ("results/certified_study/link", tarfile.SYMTYPE)):  # fmt: skip
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            good = tarfile.TarInfo("results/certified_study/gpu_select.log")
            good.size = 2
            tar.addfile(good, io.BytesIO(b"ok"))
            bad = tarfile.TarInfo(name)
            bad.type = kind
            bad.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(bad, io.BytesIO(b"") if kind == tarfile.SYMTYPE else None)
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        (out / "select.tgz.000").write_bytes(buffer.getvalue())
        with pytest.raises(SystemExit, match="nothing extracted"):
            gpu.unpack(out, tmp_path / "checkout")
        assert not (tmp_path / "checkout").exists()


def test_a_stage_past_its_deadline_is_stopped_with_every_process_it_started(tmp_path):
    gpu = load_gpu_session()
    marker = tmp_path / "child.pid"
    started = time.monotonic()
    status, stopped = gpu.run_until(["bash", "-c", f"sleep 60 & echo $! > {marker}; wait"], 1.0,
                                    tmp_path / "log", dict(os.environ))  # fmt: skip
    assert stopped and status != 0 and time.monotonic() - started < 30
    child = int(marker.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    status, stopped = gpu.run_until(["bash", "-c", "exit 3"], 10.0, tmp_path / "log", dict(os.environ))
    assert (status, stopped) == (3, False)


def test_the_final_stage_needs_the_committed_selection(tmp_path, monkeypatch):
    gpu = load_gpu_session()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="selection.json is missing"):
        gpu.stage_command("final")
    (tmp_path / gpu.STUDY).mkdir(parents=True)
    (tmp_path / gpu.STUDY / "selection.json").write_text('{"chosen": "w32_m1.0"}')
    assert gpu.stage_command("final")[-2:] == ["final", "w32_m1.0"]
    with pytest.raises(SystemExit, match="unknown stage"):
        gpu.stage_command("train")
