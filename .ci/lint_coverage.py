"""Fail when a tracked Python file escapes the linter.

ruff, like pytest, silently skips folders with build-like names (``dist``, ``build``,
``venv``...), so a package named that way would never be linted. This compares the files
ruff checks for the given paths with every ``*.py`` that git tracks.

    python .ci/lint_coverage.py adaact_dist launch tests benchmarks .ci
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lines(*command: str) -> list[str]:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.split()


def main() -> int:
    tracked = {(ROOT / path).resolve() for path in lines("git", "ls-files", "*.py")}
    seen = {
        Path(p).resolve()
        for p in lines(sys.executable, "-m", "ruff", "check", "--show-files", *sys.argv[1:])
    }
    unseen = sorted(str(path.relative_to(ROOT)) for path in tracked - seen)
    if unseen:
        print(f"{len(unseen)} tracked Python file(s) escape ruff: {', '.join(unseen)}")
        print("Rename their folder (ruff skips dist/, build/, venv/...) or add it to SOURCES.")
        return 1
    print(f"ruff sees all {len(tracked)} tracked Python files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
