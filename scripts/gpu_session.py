"""One stage of issue 29's GPU work per lent session, within the device tool's limits: 15 minutes of device
time (one call of at most 10), a tree of at most 64 MiB sent (data and wheels carried included), at most 8
files of 16 MiB each back.

    python scripts/gpu_session.py prepare          # here: data and missing wheels into .device/, tree shrunk
    # the device tool: run(command="python3 scripts/gpu_session.py stage select", carry=[".device"], timeout_s=600)
    python scripts/gpu_session.py unpack FILES_AT  # here: the records into the checkout, the tree restored

The stages, one per lent session and in this order (each resumable; records go under results/ to commit):
``select`` (item 5: 5 candidates on 55,000 training images, certified on the 5,000 held out), ``final``
(the candidate that ``certified_selection.py select --json results/certified_study/selection.json`` chose,
and deel-torchlip's layers, 3 seeds each), ``evaluate`` (attacked and certified on all 10,000 test images),
``front`` (item 4: claim 2's front-defining models on all 10,000 test images). A stage that reaches the
deadline is stopped (SIGTERM to its process group: trainings keep their last checkpoint, evaluations their
journal) and what it wrote comes back all the same.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE = Path(".device")  # ignored by git; carried to the device
DATA, WHEELS = DEVICE / "fashion-mnist", DEVICE / "wheels"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
# what the device's image lacks (its python3 holds torch, numpy, scipy, matplotlib, tqdm, pyyaml), and filelock
# at this checkout's version (the image's may be older than the 3.30 pyproject.toml asks for)
PINS = ("deel-torchlip==1.0.5", "submitit==1.5.4", "filelock==4.0.8")
STUDY = Path("results/certified_study")  # certified_study.sh's ROOT here
FRONT = Path("results/robustness_claim2/full_test")
OUTPUTS = {"select": STUDY, "final": STUDY, "evaluate": STUDY, "front": FRONT}
DEADLINE, GRACE = 480.0, 30.0  # seconds of work, then of SIGTERM: the rest of the call's 600 s exports and packs
PIECE, MAX_PIECES, MAX_TOTAL = 15 * 2**20, 8, 60 * 2**20  # what the tool brings back: 8 files of 16 MiB, 64 MiB


def stage_command(stage: str) -> list[str]:
    """The command of ``stage`` (run from the checkout's root)."""
    if stage in ("select", "evaluate"):
        return ["bash", "scripts/certified_study.sh", stage]
    if stage == "final":
        import json

        selection = STUDY / "selection.json"
        if not selection.is_file():
            raise SystemExit(f"final: {selection} is missing: unpack select's records, then run "
                             f"python scripts/certified_selection.py select {STUDY}/certified_select/fmnist_vgg5/* "
                             f"--json {selection}, and commit it")  # fmt: skip
        return ["bash", "scripts/certified_study.sh", "final", json.loads(selection.read_text())["chosen"]]
    if stage == "front":
        device = os.environ.get("GPU_DEVICE", "cuda")
        return ["bash", "-c", f"{sys.executable} scripts/claim2_front.py results/robustness_claim2/fmnist_vgg5 "
                f"--out {FRONT} --device {device} --missing | bash"]  # fmt: skip
    raise SystemExit(f"unknown stage {stage!r}: one of {', '.join(OUTPUTS)}")


def run_until(command: list[str], deadline: float, log: Path, env: dict[str, str]) -> tuple[int, bool]:
    """Run ``command`` in its own process group, its output to ``log``, until it and every process of its group
    have ended or ``deadline`` seconds have passed; then the group gets SIGTERM, and SIGKILL after GRACE
    seconds. Returns (the command's exit status, whether it was stopped)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    end = time.monotonic() + deadline
    with log.open("a") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while (status := process.poll()) is None or group_alive(process.pid):
            if time.monotonic() > end:
                break
            time.sleep(0.2)
        else:
            return status, False
        for signum in (signal.SIGTERM, signal.SIGKILL):  # the whole group: a script's background trainings too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
            stop = time.monotonic() + GRACE
            while (process.poll() is None or group_alive(process.pid)) and time.monotonic() < stop:
                time.sleep(0.2)
        return process.wait(), True


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def archive(folder: Path, skip_checkpoints: bool) -> bytes:
    """``folder`` as a gzipped tar (paths relative to the checkout), without the checkpoint of a run that has
    published weights, or without every checkpoint when ``skip_checkpoints``."""

    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        path = Path(member.name)
        if path.name == "checkpoint.pt" and (skip_checkpoints or (path.parent / "weights.pt").exists()):
            return None
        return member

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(folder), filter=keep)
    return buffer.getvalue()


def pack(stage: str, folder: Path, out: Path) -> list[Path]:
    """Write ``folder`` into ``out`` as ``<stage>.tgz.000``, ``.001``, ... (pieces of PIECE bytes), leaving out
    checkpoints when the whole would exceed MAX_TOTAL; SystemExit when even that does not fit."""
    data = archive(folder, skip_checkpoints=False)
    if len(data) > MAX_TOTAL:
        print(f"{folder}: {len(data) / 2**20:.1f} MiB with its checkpoints: packed without them (their runs "
              "cannot resume from this archive)")  # fmt: skip
        data = archive(folder, skip_checkpoints=True)
    pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)]
    if len(data) > MAX_TOTAL or len(pieces) > MAX_PIECES:
        raise SystemExit(f"{folder}: {len(data) / 2**20:.1f} MiB, more than the {MAX_TOTAL / 2**20:.0f} MiB the "
                         "device tool brings back")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, piece in enumerate(pieces):
        written.append(out / f"{stage}.tgz.{index:03d}")
        written[-1].write_bytes(piece)
    return written


def unpack(files_at: Path, root: Path) -> list[str]:
    """Extract the archives of ``files_at`` (``<stage>.tgz.NNN`` pieces) into ``root``; returns the files
    written. Every archive is read and checked before anything is written: SystemExit for an unknown stage, a
    piece missing, a damaged archive, or a member that is not a folder or a file below the stage's folder
    (a link, a device, a path up or outside), or that would be written through a link of the checkout."""
    found = sorted(files_at.glob("*.tgz.[0-9][0-9][0-9]"))
    if not found:
        raise SystemExit(f"{files_at}: no <stage>.tgz.NNN pieces")
    archives = []
    for stage in sorted({p.name.split(".tgz.")[0] for p in found}):
        allowed = OUTPUTS.get(stage)
        if allowed is None:
            raise SystemExit(f"{stage}.tgz: not a stage (one of {', '.join(OUTPUTS)}); nothing extracted")
        pieces = sorted(files_at.glob(f"{stage}.tgz.[0-9][0-9][0-9]"))
        numbers = [int(p.name.rsplit(".", 1)[1]) for p in pieces]
        if numbers != list(range(len(pieces))):
            missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
            raise SystemExit(f"{stage}.tgz: piece {missing[0]:03d} is missing; nothing extracted")
        data = b"".join(p.read_bytes() for p in pieces)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise SystemExit(f"{stage}.tgz: damaged or cut short ({error}); nothing extracted") from None
        for member, _ in members:
            path = Path(member.name)
            inside = allowed in path.parents or (member.isdir() and path == allowed)
            if not (member.isfile() or member.isdir()) or path.is_absolute() or ".." in path.parts or not inside:
                raise SystemExit(f"{stage}: {member.name} is not a file or folder below {allowed}; nothing extracted")
            through = [root / Path(*path.parts[:i]) for i in range(1, len(path.parts) + 1)]
            if any(p.is_symlink() for p in through):
                raise SystemExit(f"{stage}: {member.name} would be written through a link; nothing extracted")
        archives.append(members)
    written = []
    for members in archives:
        for member, content in members:
            target = root / member.name
            if content is None:
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                written.append(member.name)
    return written


def prepare(root: Path) -> None:
    """Data and wheels into .device/, then the tree shrunk (``device_tree.py``) to leave room for them."""
    data = root / DATA
    data.mkdir(parents=True, exist_ok=True)
    found = sorted(DEBIAN.glob("*-ubyte.gz"))
    if len(found) != 4:
        raise SystemExit(f"{DEBIAN}: the four Fashion-MNIST IDX files are not there: apt-get install "
                         "dataset-fashion-mnist")  # fmt: skip
    for source in found:
        if not (data / source.name).is_file() or (data / source.name).stat().st_size != source.stat().st_size:
            shutil.copyfile(source, data / source.name)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--dest", str(root / WHEELS), *PINS], check=True)  # fmt: skip
    carried = sum(p.stat().st_size for p in (root / DEVICE).rglob("*") if p.is_file())
    room = carried / 2**20 + 2
    keep = ["results/robustness_claim2", str(STUDY)]
    subprocess.run([sys.executable, str(root / "scripts" / "device_tree.py"), "shrink", "--keep", *keep, "--room",
                    f"{room:.1f}"], cwd=root, check=True)  # fmt: skip
    print(f'then: run(command="python3 scripts/gpu_session.py stage STAGE", carry=["{DEVICE}"], timeout_s=600)')


def stage(name: str, root: Path, out: Path, deadline: float) -> int:
    """Run stage ``name`` on this (device) machine until ``deadline`` seconds, then pack its records to ``out``."""
    started = time.monotonic()
    command = stage_command(name)
    wheels = sorted(str(p) for p in (root / WHEELS).glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *wheels],
                       check=True)  # fmt: skip
    if (root / DATA).is_dir() and not DEBIAN.is_dir():  # the device's image: the data where Debian puts them
        shutil.copytree(root / DATA, DEBIAN)
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "KR": f"{sys.executable} -m kernel_reg", "PY": sys.executable, "ROOT": str(STUDY)}  # fmt: skip
    log = root / OUTPUTS[name] / f"gpu_{name}.log"
    remaining = deadline - (time.monotonic() - started)
    status, stopped = run_until(command, remaining, log, env)
    print(f"{name}: exit status {status}{', stopped at the deadline' if stopped else ''} after "
          f"{time.monotonic() - started:.0f} s; its log: {log.relative_to(root)}")  # fmt: skip
    if name == "final":  # the weights to publish; an unfinished run's say which epoch they are of
        finals = sorted((root / STUDY / "certified_final").glob("*/*/checkpoint.pt"))
        for checkpoint in finals:
            subprocess.run([*env["KR"].split(), "export", str(checkpoint.parent)], env=env, check=False)
    for path in pack(name, OUTPUTS[name], out):
        print(f"packed {path.name} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0 if status == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="here: data and wheels into .device/, the tree shrunk")
    run = sub.add_parser("stage", help="on the device: one stage, packed into $OUT")
    run.add_argument("name", choices=tuple(OUTPUTS))
    run.add_argument("--deadline", type=float, default=DEADLINE, help="seconds of work (default 480)")
    back = sub.add_parser("unpack", help="here: the pieces the device brought back, then the tree restored")
    back.add_argument("files_at", type=Path)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.action == "prepare":
        prepare(ROOT)
    elif args.action == "stage":
        out = os.environ.get("OUT")
        if not out:
            raise SystemExit("stage: OUT is not set (the device tool sets it to the folder it brings back)")
        sys.exit(stage(args.name, ROOT, Path(out), args.deadline))
    else:
        for name in unpack(args.files_at, ROOT):
            print(name)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "device_tree.py"), "restore"], check=True)


if __name__ == "__main__":
    main()
