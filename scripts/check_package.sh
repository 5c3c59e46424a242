#!/bin/bash
# What CI checks of the package as users install it: build the sdist and the wheel, check them (twine; the
# wheel holds py.typed, the embedded data and its notice, the licence files), install the wheel into a clean
# virtual environment (the CPU build of torch, as `make setup` installs it) and run it there, away from the
# source tree: `kernel-reg --help`, `--version`, and README's first Python example.
#   scripts/check_package.sh            (after `make setup`; uses .venv for build and twine)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

.venv/bin/python -m build --sdist --wheel --outdir "$work/dist" . > "$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
.venv/bin/twine check --strict "$work"/dist/*
wheel=$(ls "$work"/dist/*.whl)
.venv/bin/python - "$wheel" <<'PY'
import sys
import zipfile

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
data = "kernel_reg/data/fashion-mnist-subset/"
need = ["kernel_reg/py.typed", data + "NOTICE"] + [
    data + f"{part}-{kind}-idx{dims}-ubyte.gz" for part in ("train", "t10k") for kind, dims in (("images", 3), ("labels", 1))
]
licences = {name.rsplit("/", 1)[-1] for name in names if ".dist-info/licenses/" in name}
missing = [n for n in need if n not in names] + sorted({"LICENSE", "NOTICE"} - licences)
if missing:
    sys.exit(f"the wheel lacks {', '.join(missing)}")
print(f"wheel holds py.typed, the embedded data, their notice and the licence files ({len(names)} files)")
PY

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --timeout 30 --retries 1 --index-url "$TORCH_INDEX" "$TORCH_SPEC" \
  || "$work/venv/bin/python" -m pip install -q "$TORCH_SPEC"
"$work/venv/bin/python" -m pip install -q "$wheel"
cd "$work"  # away from the source tree: only the installed wheel can be imported
"$work/venv/bin/kernel-reg" --help > /dev/null
"$work/venv/bin/kernel-reg" --version
"$work/venv/bin/python" -c "import kernel_reg, sys; assert 'site-packages' in kernel_reg.__file__, kernel_reg.__file__"
awk '/^```python$/ {inside = 1; next} /^```$/ && inside {exit} inside' "$OLDPWD/README.md" > example.py
"$work/venv/bin/python" example.py
echo "the wheel installs into a clean environment and runs README's example"
