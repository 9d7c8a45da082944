"""A stand-in for NVIDIA's `tegrastats` (no Jetson here): same invocation, same output.

    fake_tegrastats.py --interval MS --lines FILE [--count N]

Prints the non-comment lines of FILE (real tegrastats captures, tests/fixtures/tegrastats/), one every
MS milliseconds, cycling, flushed like the real tool; exits after N lines when --count is given.
"""

import argparse
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--interval", type=int, default=1000)
ap.add_argument("--lines", required=True)
ap.add_argument("--count", type=int, default=None)
args = ap.parse_args()
lines = [ln.rstrip("\n") for ln in open(args.lines) if ln.strip() and not ln.startswith("#")]
n = 0
while args.count is None or n < args.count:
    print(lines[n % len(lines)], flush=True)
    n += 1
    time.sleep(args.interval / 1000)
sys.exit(0)
