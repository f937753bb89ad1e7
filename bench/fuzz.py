"""The long fuzz campaign: every fuzz target (tests/test_fuzz_*.py) under Hypothesis's "campaign"
profile, then a table of cases run per target.

    python bench/fuzz.py                      # 20,000 cases per target (the profile's max_examples;
                                              # the CLI and HTTP framing targets: 500 and 300,
                                              # convert_checkpoint end to end: 2,000)
    python bench/fuzz.py --examples 3000 -k "checkpoint or size_model"   # the checkpoint readers
    python bench/fuzz.py --examples 2000 -k png

Failures are Hypothesis's usual report (the minimal input, to paste as an ``@example``); the example
database (bench/out/fuzz-db) replays them on the next run.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=None, help="cases per target (default: the profile's)")
    parser.add_argument("-k", default=None, help="pytest -k expression selecting targets")
    args = parser.parse_args()
    env = dict(os.environ, CELLFLOW_RT_FUZZ="campaign")
    if args.examples:
        env["CELLFLOW_RT_FUZZ_EXAMPLES"] = str(args.examples)
    # every test_fuzz_*.py, and the HTTP framing target of the hostile-client tests (marked fuzz)
    targets = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_fuzz_*.py"))
    targets.append("tests/serve/test_serve_hostile.py")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "fuzz",
               "--hypothesis-show-statistics", *targets] + (["-k", args.k] if args.k else [])
    tic = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    out = run.stdout + run.stderr
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "fuzz.log").write_text(out)
    print(f"| target | cases | failing | invalid |\n|---|---|---|---|")
    total = 0
    for name, body in re.findall(r"^(tests/\S+::\S+):\n(.*?)(?=^tests/|\Z)", out, re.M | re.S):
        counts = [tuple(map(int, m)) for m in re.findall(r"(\d+) passing, (\d+) failing, and (\d+) invalid", body)]
        passing, failing, invalid = (sum(c[i] for c in counts) for i in range(3))
        total += passing + failing
        print(f"| {name.split('::')[1]} | {passing + failing} | {failing} | {invalid} |")
    print(f"\n{total} cases in {seconds:.0f} s; pytest exit {run.returncode} (log: bench/out/fuzz.log)")
    if run.returncode:
        print(out[-4000:])
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
