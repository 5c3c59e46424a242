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
import subprocess
import sys
from pathlib import Path

LIMIT = 64 * 2**20  # the device tool's limit on the tree it sends
STATE = "device-tree-shrunk"  # in the worktree's git folder: the paths taken out, one per line
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
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


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


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def shrink(root: Path, keep: list[str], room: int, limit: int = LIMIT) -> list[str]:
    """Take the largest weights files under results/ (not under ``keep``) out of the tree sent until it is at
    most ``limit`` - ``room`` bytes; returns them. SystemExit when already shrunk, when a candidate has staged
    changes, or when the rest does not fit."""
    state = git_path(STATE, root)
    if state.exists():
        raise SystemExit(f"already shrunk ({state} lists the files): python scripts/device_tree.py restore first")
    files = sent(root)
    total, target = sum(files.values()), limit - room
    prefixes = tuple(k.rstrip("/") + "/" for k in keep)
    candidates = sorted(
        (n for n in files if n.startswith("results/") and n.endswith("/weights.pt") and not n.startswith(prefixes)),
        key=lambda n: -files[n],
    )
    tracked = set(listed(root, "--cached"))
    staged = [n for n in candidates if n in tracked and git("diff", "--cached", "--name-only", "--", n, root=root)]
    if staged:
        raise SystemExit(f"{', '.join(staged)}: staged changes; commit them first, so that restore finds them in HEAD")
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
    if not chosen:
        print(f"the tree is {mib(total)}, within {mib(target)}: nothing to take out")
        return []
    removed = [n for n in chosen if n in tracked]
    if removed:
        git("rm", "-q", "--cached", "--", *removed, root=root)
    state.write_text("".join(f"{n}\n" for n in chosen))
    exclude = git_path("info/exclude", root)
    exclude.parent.mkdir(parents=True, exist_ok=True)
    before = exclude.read_text() if exclude.exists() else ""
    separator = "" if not before or before.endswith("\n") else "\n"
    exclude.write_text(before + separator + "\n".join([BEGIN, *map(pattern, chosen), END]) + "\n")
    hook = git_path("hooks/pre-commit", root)
    if hook.exists() and "device_tree.py" not in hook.read_text():
        print(f"warning: {hook} is not this script's; commits are not refused while shrunk", file=sys.stderr)
    else:
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(HOOK.format(state=STATE))
        hook.chmod(0o755)
    print(f"took {len(chosen)} weights files out of the tree sent ({mib(sum(files.values()))} -> {mib(total)}; on "
          "disk and in HEAD as before); commits are refused until: python scripts/device_tree.py restore")  # fmt: skip
    return chosen


def restore(root: Path) -> list[str]:
    """Undo ``shrink``: the files back in the index as HEAD has them, the exclude lines and the hook gone."""
    state = git_path(STATE, root)
    if not state.exists():
        print("not shrunk: nothing to restore")
        return []
    chosen = state.read_text().split()
    in_head = set(git("ls-tree", "-r", "--name-only", "HEAD", "--", *chosen, root=root).split("\n")) - {""}
    if in_head:
        git("reset", "-q", "HEAD", "--", *sorted(in_head), root=root)
    exclude = git_path("info/exclude", root)
    lines = exclude.read_text().split("\n")
    if BEGIN in lines and END in lines:
        lines = lines[: lines.index(BEGIN)] + lines[lines.index(END) + 1 :]
    kept = "\n".join(lines)
    if kept.strip():
        exclude.write_text(kept)
    else:  # shrink made it
        exclude.unlink()
    state.unlink()
    hook = git_path("hooks/pre-commit", root)
    if hook.exists() and "device_tree.py" in hook.read_text():
        hook.unlink()
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
