"""Every Python block of README.md and of the documentation runs, and every example runs on tiny settings:
documentation that rots fails the suite."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.M | re.S)


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize(
    "page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT))
)  # fmt: skip
def test_every_python_block_of_a_page_runs(page, tmp_path, monkeypatch):
    """The blocks of one page run in order in one namespace, as a reader would paste them."""
    monkeypatch.chdir(tmp_path)  # a block writes nothing into the repository
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(python_blocks(page), start=1):
        exec(compile(block, f"{page.name}, Python block {number}", "exec"), namespace)


def test_the_documentation_shows_code_on_every_guide():
    guides = sorted((ROOT / "docs" / "guides").glob("*.md"))
    assert len(guides) == 7
    for guide in guides:
        assert "```" in guide.read_text(), f"{guide.name} shows no code"


def run_example(name: str, *argv: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), *argv], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def percents(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"(\d+\.\d)%", text)]


def test_example_penalty_in_your_loop():
    tiny = ("--epochs", "1", "--n-train", "64", "--n-test", "100")
    out = run_example("penalty_in_your_loop.py", "--penalty", "grad", "--tau", "2", *tiny)
    plain, regularized = percents(out)
    assert "plain" in out and "grad + projection" in out and 0 <= plain <= 100 and 0 <= regularized <= 100


def test_example_certify_published_model():
    out = run_example("certify_published_model.py", "--model", "certified/fmnist_vgg5/lipnet_m0.7", "--n-test", "40",
                      "--eps", "0.1", "0.5")  # fmt: skip
    clean, at_01, at_05 = percents(out)
    assert clean >= at_01 >= at_05  # a certificate at a radius holds at every smaller one
    assert float(re.search(r"L <= ([\d.]+)", out).group(1)) >= 1.0 - 1e-6  # a bound for a 1-Lipschitz network


def test_example_evaluate_robustness_apgd():
    out = run_example("evaluate_robustness_apgd.py", "--n-test", "20", "--steps", "3", "--eps", "0.5", "2")
    clean, at_05, at_2 = percents(out)
    assert clean >= at_05 >= at_2 and "APGD-T" in out
