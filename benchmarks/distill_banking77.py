"""Ticket triage on Banking77: benchmarks/distill_classifier.py on ../shared/data/banking77.

    python benchmarks/distill_banking77.py [--data DIR] [any distill_classifier.py option, e.g. --quick]

Ends with distill_classifier.py's RESULT line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import distill_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data root")
    args, rest = parser.parse_known_args()
    data = args.data / "banking77"
    if not (data / "train.csv").is_file():
        raise SystemExit(f"{data}/train.csv not found (pass --data DIR, the folder that holds banking77/)")
    sys.argv = [sys.argv[0], "--train", str(data / "train.csv"), "--test", str(data / "test.csv")]
    sys.argv += ["--text-column", "text", "--label-column", "category", "--name", "banking77", *rest]
    distill_classifier.main()


if __name__ == "__main__":
    main()
