"""`make lint`: Snakemake's linter on the workflow, minus one lint this project answers differently.

Snakemake asks for a conda environment or container per rule. Here every rule runs `advsoup <stage>`
from the one environment `make setup` builds from pyproject.toml (on a cluster too, see README); a
conda file per rule would be a second, untested copy of that dependency list. Every other lint
fails the target. Snakemake 9 prints lints as text only (its --lint json is not wired to the CLI),
so the text is parsed: "Lints for <rule or snakefile>:" headers, then "    * <title>:" items.
"""

import subprocess
import sys

ANSWERED = "Specify a conda environment or container for each rule."


def lints(text):
    """[(where, title, body lines)] from Snakemake's lint report."""
    found, where = [], None
    for line in text.splitlines():
        if line.startswith("Lints for "):
            where = line[len("Lints for ") :].rstrip(":")
        elif line.startswith("    * "):
            found.append((where, line[len("    * ") :].rstrip(":"), []))
        elif found and line.startswith("      "):
            found[-1][2].append(line.strip())
    return found


def main(argv):
    configfile = argv[0] if argv else "params/experiments/demo.yaml"
    proc = subprocess.run(
        # this interpreter's snakemake: the one `make setup` installed, whatever PATH holds
        [sys.executable, "-m", "snakemake", "--lint", "--configfile", configfile], capture_output=True, text=True
    )
    report = proc.stdout + proc.stderr
    found = lints(report)
    if proc.returncode != 0 and not found:  # the workflow did not even load
        sys.stderr.write(report)
        return proc.returncode
    remaining = [lint for lint in found if lint[1] != ANSWERED]
    for where, title, body in remaining:
        print(f"{where}: {title}\n    " + "\n    ".join(body))
    answered = len(found) - len(remaining)
    print(
        f"snakemake --lint ({configfile}): {len(remaining)} lint(s); "
        f"{answered} conda/container lint(s) not applied (one environment from pyproject.toml, see "
        "scripts/lint_workflow.py)"
    )
    return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
