"""What a call of the device tool sends, and how to bring it under its limit without touching the repository.

The device tool copies the checkout's tracked files and its untracked files that git does not ignore, 64 MiB
at most; the published weights under ``results/`` are more than that. ``shrink`` takes the largest
``weights.pt`` files out of git's index (kept on disk, untouched) and ignores them through the checkout's
``.git/info/exclude`` until the tree fits, leaving those under ``--keep`` in place; ``restore`` puts the
index and the exclude file back as they were. While shrunk, a pre-commit hook refuses commits, which would
otherwise delete the weights from the repository.

    python scripts/device_tree.py size [--limit MIB]
    python scripts/device_tree.py shrink [--keep results/robustness_claim2] [--room MIB] [--limit MIB]
    ... device calls ...
    python scripts/device_tree.py restore
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

LIMIT = 64 * 2**20  # the device tool's limit on the tree it sends
STATE = "device-tree-shrunk.json"  # in the worktree's git folder: what shrink took out and the exclude file before
BEGIN = "# device_tree.py shrink: published weights left out of device calls (python scripts/device_tree.py restore)"
END = "# device_tree.py shrink: end"
HOOK = """#!/bin/sh
# installed by scripts/device_tree.py shrink, removed by its restore
if [ -f "$(git rev-parse --git-path {state})" ]; then
  echo "weights are out of git's index for a device call: python scripts/device_tree.py restore, then commit" >&2
  exit 1
fi
"""


def git(*args: str, root: Path) -> str:
    """git's output; every path argument is a literal path, never a pattern (``run[1]`` is not ``run1``)."""
    env = {**os.environ, "GIT_LITERAL_PATHSPECS": "1"}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout


def git_path(name: str, root: Path) -> Path:
    return root / git("rev-parse", "--git-path", name, root=root).strip()


def listed(root: Path, *args: str) -> list[str]:
    return [p for p in git("ls-files", "-z", *args, root=root).split("\0") if p]


def sent(root: Path) -> dict[str, int]:
    """The files a device call sends (tracked, and untracked but not ignored) and their sizes in bytes."""
    files = {}
    for name in dict.fromkeys(listed(root, "--cached") + listed(root, "--others", "--exclude-standard")):
        path = root / name
        if path.is_symlink() or path.is_file():
            files[name] = path.lstat().st_size
    return files


def pattern(name: str) -> str:
    """An exclude line matching exactly the file ``name`` (relative to the checkout's root)."""
    escaped = "".join("\\" + c if c in "*?[]\\!# " else c for c in name)
    return "/" + escaped


def exclude_block(chosen: list[str]) -> bytes:
    """The lines shrink adds to the exclude file for ``chosen``, between its markers."""
    return ("\n".join([BEGIN, *map(pattern, chosen), END]) + "\n").encode("utf-8", "surrogateescape")


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def shrunk_worktrees(root: Path) -> list[Path]:
    """The state files of every worktree of this repository that is shrunk (the hook and the exclude file are
    shared by all of them, so one at a time)."""
    common = root / git("rev-parse", "--git-common-dir", root=root).strip()
    return [p for p in [common / STATE, *sorted(common.glob(f"worktrees/*/{STATE}"))] if p.is_file()]


def shrink(root: Path, keep: list[str], room: int, limit: int = LIMIT) -> list[str]:
    """Take the largest weights files under results/ (not under ``keep``) out of the tree sent until it is at
    most ``limit`` - ``room`` bytes; returns them. SystemExit, before any change, when a worktree is already
    shrunk, when commits cannot be guarded (another pre-commit hook, core.hooksPath), when a candidate has
    staged changes, or when the rest does not fit."""
    shrunk = shrunk_worktrees(root)
    if shrunk:
        raise SystemExit(f"already shrunk ({shrunk[0]}): python scripts/device_tree.py restore in that worktree first")
    hooks_path = subprocess.run(["git", "config", "core.hooksPath"], cwd=root, capture_output=True, text=True).stdout
    hook = git_path("hooks/pre-commit", root)
    if hooks_path.strip():
        raise SystemExit("core.hooksPath is set: commits could not be refused while shrunk; unset it first")
    if hook.exists() and "device_tree.py" not in hook.read_text(errors="replace"):
        raise SystemExit(f"{hook} is not this script's: commits could not be refused while shrunk; set it aside first")
    files = sent(root)
    total, target = sum(files.values()), limit - room
    prefixes = tuple(k.rstrip("/") + "/" for k in keep)
    candidates = sorted(
        (n for n in files if n.startswith("results/") and n.endswith("/weights.pt") and not n.startswith(prefixes)),
        key=lambda n: -files[n],
    )
    tracked = set(listed(root, "--cached"))
    chosen: list[str] = []
    for name in candidates:
        if total <= target:
            break
        chosen.append(name)
        total -= files[name]
    if total > target:
        biggest = sorted(files, key=lambda n: -files[n])[:5]
        raise SystemExit(f"the tree is {mib(total)} without every weights file that may leave, over "
                         f"{mib(target)}; the largest files left: {', '.join(biggest)}")  # fmt: skip
    removed = [n for n in chosen if n in tracked]
    staged = [n for n in removed if git("diff", "--cached", "--name-only", "--", n, root=root)]
    if staged:
        raise SystemExit(f"{', '.join(staged)}: staged changes; commit them first, so that restore finds them in HEAD")
    if not chosen:
        print(f"the tree is {mib(total)}, within {mib(target)}: nothing to take out")
        return []
    exclude = git_path("info/exclude", root)
    before = exclude.read_bytes() if exclude.exists() else None
    record = {"chosen": chosen, "exclude": None if before is None else before.decode("utf-8", "surrogateescape")}
    git_path(STATE, root).write_text(json.dumps(record))
    if removed:
        git("rm", "-q", "--cached", "--", *removed, root=root)
    exclude.parent.mkdir(parents=True, exist_ok=True)
    separator = b"" if not before or before.endswith(b"\n") else b"\n"
    exclude.write_bytes((before or b"") + separator + exclude_block(chosen))
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(HOOK.format(state=STATE))
    hook.chmod(0o755)
    print(f"took {len(chosen)} weights files out of the tree sent ({mib(sum(files.values()))} -> {mib(total)}; on "
          "disk and in HEAD as before); commits are refused until: python scripts/device_tree.py restore")  # fmt: skip
    return chosen


def restore(root: Path) -> list[str]:
    """Undo ``shrink``: the files back in the index as HEAD has them, the exclude file as it was (byte for byte,
    unless edited meanwhile: then only the lines shrink added go), the hook gone."""
    state = git_path(STATE, root)
    if not state.exists():
        print("not shrunk: nothing to restore")
        return []
    record = json.loads(state.read_text())
    chosen: list[str] = record["chosen"]
    in_head = set(git("ls-tree", "-r", "-z", "--name-only", "HEAD", "--", *chosen, root=root).split("\0")) - {""}
    if in_head:
        git("reset", "-q", "HEAD", "--", *sorted(in_head), root=root)
    exclude = git_path("info/exclude", root)
    before = None if record["exclude"] is None else record["exclude"].encode("utf-8", "surrogateescape")
    block = exclude_block(chosen)
    now = exclude.read_bytes() if exclude.exists() else b""
    if now.endswith(block) and now[: -len(block)].rstrip(b"\n") == (before or b"").rstrip(b"\n"):
        if before is None:
            exclude.unlink()
        else:
            exclude.write_bytes(before)
    else:  # edited meanwhile: only shrink's lines go
        lines = now.split(b"\n")
        if BEGIN.encode() in lines and END.encode() in lines:
            lines = lines[: lines.index(BEGIN.encode())] + lines[lines.index(END.encode()) + 1 :]
        exclude.write_bytes(b"\n".join(lines))
    hook = git_path("hooks/pre-commit", root)
    if hook.exists() and "device_tree.py" in hook.read_text(errors="replace"):
        hook.unlink()
    state.unlink()
    print(f"restored {len(chosen)} weights files to the tree sent")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("size", "shrink", "restore"))
    parser.add_argument("--keep", nargs="+", default=[], help="folders whose weights stay (shrink)")
    parser.add_argument("--room", type=float, default=4.0, help="MiB left for carried paths (shrink; default 4)")
    parser.add_argument("--limit", type=float, default=LIMIT / 2**20, help="the tool's limit in MiB (default 64)")
    args = parser.parse_args()
    root = Path(git("rev-parse", "--show-toplevel", root=Path.cwd()).strip())
    limit = int(args.limit * 2**20)
    if args.action == "size":
        total = sum(sent(root).values())
        print(f"{mib(total)} sent, limit {mib(limit)}{'' if total <= limit else ': over; run shrink'}")
        sys.exit(0 if total <= limit else 1)
    if args.action == "shrink":
        shrink(root, args.keep, int(args.room * 2**20), limit)
    else:
        restore(root)


if __name__ == "__main__":
    main()
