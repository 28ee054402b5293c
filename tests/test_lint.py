"""`make lint`: Snakemake's linter passes on the workflow, and still fails on a lint we did not answer."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "lint_workflow.py"


def lint(cwd, configfile):
    return subprocess.run(
        [sys.executable, str(SCRIPT), configfile], cwd=cwd, capture_output=True, text=True
    )


def test_workflow_has_no_lint_but_the_conda_one():
    proc = lint(ROOT, "params/experiments/demo.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 lint(s)" in proc.stdout
    assert "conda/container lint(s) not applied" in proc.stdout


def test_other_lints_fail_the_target(tmp_path):
    # A rule without a log: a lint that is not the conda one.
    (tmp_path / "Snakefile").write_text("rule make_x:\n    output:\n        'x'\n    shell:\n        'touch {output}'\n")
    (tmp_path / "config.yaml").write_text("{}\n")
    proc = lint(tmp_path, "config.yaml")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rule make_x" in proc.stdout and "No log directive defined" in proc.stdout
    assert "1 lint(s); 1 conda/container" in proc.stdout


def test_a_broken_workflow_is_not_a_pass(tmp_path):
    (tmp_path / "Snakefile").write_text("rule broken\n")  # a syntax error: no lint report at all
    (tmp_path / "config.yaml").write_text("{}\n")
    proc = lint(tmp_path, "config.yaml")
    assert proc.returncode != 0
    assert "SyntaxError" in proc.stderr or "Error" in proc.stderr
