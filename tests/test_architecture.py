"""The architecture's contracts (pyproject.toml, import-linter): they hold on the tree, and they are not
vacuous: an import that points up a layer, or two modules that import each other from inside functions,
make `lint-imports` fail, naming the import."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from competition.paths import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the project's packages and its contracts, to break on purpose."""
    for package in ("pipelines", "competition", "models"):
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.yaml"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_contracts_hold_on_the_tree():
    done = lint(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


BREAKS = {
    # an import up a layer, hidden inside a function
    "upward": ("pipelines/stages/tta.py", "from pipelines.chain import config_hash",
               ["pipelines.stages is not allowed to import pipelines.chain", "pipelines.stages.tta -> pipelines.chain"]),
    # prepare imports download already: the way back closes a cycle
    "cycle": ("pipelines/stages/download.py", "from pipelines.stages import prepare",
              ["No cycles are allowed in pipelines.stages"]),
    # the spec layer reaching into the pipeline
    "spec": ("competition/spec.py", "import pipelines.chain", ["competition.spec -> pipelines.chain"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BREAKS))
def test_an_import_against_the_architecture_breaks_the_contracts(tree, case):
    module, statement, messages = BREAKS[case]
    with open(tree / module, "a") as fh:
        fh.write(f"\n\ndef _breaks_the_contract():\n    {statement}\n")
    done = lint(tree)
    assert done.returncode != 0, done.stdout
    for message in messages:
        assert message in done.stdout, done.stdout
