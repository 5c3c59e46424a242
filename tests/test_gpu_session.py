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


BIG, LOOKALIKE = "results/big #[1]/weights.pt", "results/big #1/weights.pt"  # a glob would take both


def _repo(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A committed checkout of weights and records, an exported weights file not committed yet, and an exclude
    file without a final newline."""
    repo = tmp_path / "repo"
    sizes = {BIG: 6000, "results/mid/weights.pt": 3000, LOOKALIKE: 1000, "results/keep/weights.pt": 7000,
             "results/notes.json": 500, "src/code.py": 500}  # fmt: skip
    for name, size in sizes.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    subprocess.run(["git", "init", "-q", repo], check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run([*COMMIT, "records"], cwd=repo, check=True)
    (repo / "results/new/weights.pt").parent.mkdir()
    (repo / "results/new/weights.pt").write_bytes(b"n" * 2000)  # exported, not committed yet: it travels too
    (repo / ".git/info").mkdir(exist_ok=True)
    (repo / ".git/info/exclude").write_bytes(b"*.tmp")
    return repo, sizes


COMMIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m"]


def _state(repo: Path) -> tuple[bytes, bytes, list[str]]:
    status = subprocess.run(["git", "status", "--porcelain", "-z"], cwd=repo, capture_output=True).stdout
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, text=True).stdout.split("\0")
    return (repo / ".git/info/exclude").read_bytes(), status, tracked


def test_device_tree_takes_the_largest_weights_out_of_a_device_call_and_restores_them(tmp_path):
    """The tree a device call sends (tracked and untracked-not-ignored files) brought under a limit by taking
    the largest weights out of git's index, largest first, those under --keep staying, names taken literally
    (a space, '#', '['); files on disk and HEAD untouched, commits refused meanwhile; restore leaves the index,
    the status and the exclude file byte for byte as they were."""
    repo, sizes = _repo(tmp_path)
    before = _state(repo)
    limit = ["--limit", str(15000 / 2**20), "--room", "0"]  # 20,000 bytes sent: 5,000 must go
    over = _device_tree(repo, "size", *limit)
    assert over.returncode == 1 and "over" in over.stdout
    # what cannot fit is refused before anything changes
    refused = _device_tree(repo, "shrink", "--keep", "results", "--limit", str(15000 / 2**20))
    assert refused.returncode == 1 and "results/keep/weights.pt" in refused.stderr and _state(repo) == before
    done = _device_tree(repo, "shrink", "--keep", "results/keep", *limit)
    assert done.returncode == 0, done.stderr
    tracked = _state(repo)[2]
    assert BIG not in tracked and LOOKALIKE in tracked and "results/mid/weights.pt" in tracked  # 6,000 was enough
    assert _device_tree(repo, "size", *limit).returncode == 0
    assert all((repo / name).stat().st_size == size for name, size in sizes.items())
    commit = subprocess.run([*COMMIT, "x", "--allow-empty"], cwd=repo, capture_output=True, text=True)
    assert commit.returncode != 0 and "device_tree.py restore" in commit.stderr
    assert _device_tree(repo, "shrink", *limit).returncode == 1  # once
    # a tighter limit: the largest go first, then the untracked export, never the kept folder
    assert _device_tree(repo, "restore").returncode == 0 and _state(repo) == before
    tighter = _device_tree(repo, "shrink", "--keep", "results/keep", "--limit", str(9500 / 2**20), "--room", "0")
    assert tighter.returncode == 0 and "took 3 weights files" in tighter.stdout
    status = _state(repo)[1].split(b"\0")
    assert f"D  {BIG}".encode() in status and b"D  results/mid/weights.pt" in status
    assert not any(b"results/new" in line or b"results/keep" in line or b"big #1" in line for line in status)
    assert _device_tree(repo, "restore").returncode == 0
    assert _state(repo) == before and not (repo / ".git/hooks/pre-commit").exists()
    assert "nothing to restore" in _device_tree(repo, "restore").stdout
    # a weights file with staged changes is not taken out: restore could not give them back
    (repo / BIG).write_bytes(b"r" * 6000)
    subprocess.run(["git", "add", f":(literal){BIG}"], cwd=repo, check=True)
    staged = _device_tree(repo, "shrink", "--keep", "results/keep", *limit)
    assert staged.returncode == 1 and f"{BIG}: staged changes" in staged.stderr


def test_device_tree_shrinks_one_worktree_at_a_time_and_only_where_commits_can_be_refused(tmp_path):
    """The hook and the exclude file are shared by a repository's worktrees: a second worktree cannot shrink
    while one is; a pre-commit hook of the user's is never replaced (nothing changes, the reason is named)."""
    repo, _ = _repo(tmp_path)
    limit = ["--limit", str(15000 / 2**20), "--room", "0"]
    other = tmp_path / "other"
    subprocess.run(["git", "worktree", "add", "-q", other, "-b", "other"], cwd=repo, check=True)
    assert _device_tree(repo, "shrink", *limit).returncode == 0
    second = _device_tree(other, "shrink", *limit)
    assert second.returncode == 1 and "already shrunk" in second.stderr
    assert _device_tree(other, "restore").stdout.startswith("not shrunk")
    assert _device_tree(repo, "restore").returncode == 0
    before = _state(repo)
    hook = repo / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\nexit 0\n")
    mine = _device_tree(repo, "shrink", *limit)
    assert mine.returncode == 1 and "not this script's" in mine.stderr
    assert _state(repo) == before and hook.read_text() == "#!/bin/sh\nexit 0\n"


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


def _archive(*members: tuple[str, bytes | None, bytes]) -> bytes:
    """A gzipped tar of (name, content or None, type) members."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(content or b"")
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            tar.addfile(info, None if content is None else io.BytesIO(content))
    return buffer.getvalue()


def test_unpacking_is_all_or_nothing_and_only_below_the_stage_s_folder(tmp_path):
    """Every archive is checked before anything is written: a member outside its stage's folder (a path up, a
    look-alike folder, a source file, the folder's own name as a file, a link), an unknown stage, a missing
    piece, a damaged archive, or a write through a link already in the checkout: nothing extracted, the
    reason named."""
    import tarfile

    gpu = load_gpu_session()
    good = ("results/certified_study/gpu_select.log", b"ok", tarfile.REGTYPE)
    final_ok = _archive(("results/certified_study/certified_final/a.json", b"{}", tarfile.REGTYPE))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    cases = {
        "up": {"select.tgz.000": _archive(good, ("results/certified_study/../../src/evil.py", b"x", tarfile.REGTYPE)),
               "final.tgz.000": final_ok},
        "look-alike": {"select.tgz.000": _archive(good, ("results/certified_study_evil/x", b"x", tarfile.REGTYPE))},
        "source": {"select.tgz.000": _archive(good, ("src/kernel_reg/__init__.py", b"x", tarfile.REGTYPE))},
        "root as a file": {"select.tgz.000": _archive(("results/certified_study", b"x", tarfile.REGTYPE))},
        "link": {"select.tgz.000": _archive(good, ("results/certified_study/link", None, tarfile.SYMTYPE))},
        "front into the study": {"front.tgz.000": _archive(good)},
        "unknown stage": {"train.tgz.000": _archive(good)},
    }  # fmt: skip
    whole = _archive(good, ("results/certified_study/big.bin", os.urandom(3000), tarfile.REGTYPE))
    cases["missing piece"] = {"select.tgz.000": whole[:1000], "select.tgz.002": whole[2000:]}
    cases["cut short"] = {"select.tgz.000": whole[:2000]}
    for reason, pieces in cases.items():
        out = tmp_path / reason
        out.mkdir()
        for name, data in pieces.items():
            (out / name).write_bytes(data)
        with pytest.raises(SystemExit, match="nothing extracted"):
            gpu.unpack(out, checkout)
        assert not any(checkout.iterdir()), reason
    # a link already in the checkout is not written through
    (checkout / "results").mkdir()
    (checkout / "src").mkdir()
    (checkout / "results/certified_study").symlink_to(checkout / "src")
    out = tmp_path / "through"
    out.mkdir()
    (out / "select.tgz.000").write_bytes(_archive(good))
    with pytest.raises(SystemExit, match="through a link"):
        gpu.unpack(out, checkout)
    assert not any((checkout / "src").iterdir())


def test_a_stage_past_its_deadline_is_stopped_with_every_process_it_started(tmp_path, monkeypatch):
    """Past the deadline the whole process group is stopped, a child that ignores SIGTERM killed after the
    grace period; a script whose leader ends while its background work goes on is waited for, not packed
    under it; an exit status passes through."""
    gpu = load_gpu_session()
    monkeypatch.setattr(gpu, "GRACE", 1.0)
    stubborn = tmp_path / "stubborn.pid"
    started = time.monotonic()
    child = f"trap '' TERM; echo $$ > {stubborn}; sleep 60"
    status, stopped = gpu.run_until(["bash", "-c", f'bash -c "{child}" & exit 0'], 1.5, tmp_path / "log",
                                    dict(os.environ))  # fmt: skip
    assert stopped and status == 0 and time.monotonic() - started < 20
    time.sleep(0.2)
    pid = int(stubborn.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    done = tmp_path / "done"
    status, stopped = gpu.run_until(["bash", "-c", f"(sleep 1; touch {done}) & exit 0"], 20.0, tmp_path / "log",
                                    dict(os.environ))  # fmt: skip
    assert (status, stopped) == (0, False) and done.exists()  # waited for the background work
    assert gpu.run_until(["bash", "-c", "exit 3"], 10.0, tmp_path / "log", dict(os.environ)) == (3, False)


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
