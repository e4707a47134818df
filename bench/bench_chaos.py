"""The chaos test at full length: many SIGKILLs of the agent and restarts of its broker.

Why: the suite's version kills the agent three times; a rare window (a kill during a spool
commit, a restart during a replay) needs many more tries to be hit. This runs the same test
(``tests/test_chaos.py``) with more kills and broker restarts and prints its summary line:
numbers served by the simulator, stored exactly once, and missing.

    python bench/bench_chaos.py --kills 30 --broker-restarts 15
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--broker-restarts", type=int, default=15)
    args = parser.parse_args()
    env = {
        **os.environ,
        "EDGE_AGENT_CHAOS_KILLS": str(args.kills),
        "EDGE_AGENT_CHAOS_BROKER_RESTARTS": str(args.broker_restarts),
    }
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "pytest", "-q", "-s", "tests/test_chaos.py"]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    summary = [line for line in result.stdout.splitlines() if line.startswith(("chaos:", "1 "))]
    print(f"{args.kills} SIGKILLs, {args.broker_restarts} broker restarts")
    print("\n".join(summary) or result.stdout[-2000:])
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
