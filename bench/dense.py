#!/usr/bin/env python3
"""Simultaneous launches on one node (bench/dense.sh).

    dense.py --procs N --rounds R [--log FILE] [--json FILE] NAME=COMMAND...

Each round starts, for every command in turn (the order rotated from round to round), N
copies of it at once (posix_spawn, no shell) and waits for all of them: the batch's wall time
is what a job array starting N tasks on a node waits for its slowest. A copy that exits
non-zero stops the benchmark. Prints per command the median batch time and its IQR in ms.
"""
import argparse
import json
import os
import shlex
import statistics
import sys
import time


def batch(argv, n, log):
    actions = [(os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)]
    t0 = time.perf_counter()
    pids = [os.posix_spawn(argv[0], argv, os.environ, file_actions=actions) for _ in range(n)]
    failed = 0
    for p in pids:
        _, st = os.waitpid(p, 0)
        failed += os.waitstatus_to_exitcode(st) != 0
    return time.perf_counter() - t0, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("--json")
    ap.add_argument("commands", nargs="+", metavar="NAME=COMMAND")
    a = ap.parse_args()
    cmds = []
    for c in a.commands:
        name, sep, line = c.partition("=")
        if not sep or not line:
            sys.exit(f"dense.py: {c!r}: expected NAME=COMMAND")
        cmds.append((name, shlex.split(line)))
    log = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    times = {n: [] for n, _ in cmds}
    for r in range(a.warmup + a.rounds):
        k = r % len(cmds)
        for name, argv in cmds[k:] + cmds[:k]:
            t, failed = batch(argv, a.procs, log)
            if failed:
                sys.exit(f"dense.py: {name}: {failed} of {a.procs} failed (see the log)")
            if r >= a.warmup:
                times[name].append(t)
    results = []
    for name, _ in cmds:
        ts = sorted(times[name])
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        results.append({"command": name, "median": statistics.median(ts), "q1": q[0],
                        "q3": q[2], "times": ts})
        print(f"  {name:44} median {statistics.median(ts) * 1e3:8.1f} ms   "
              f"IQR {q[0] * 1e3:7.1f}-{q[2] * 1e3:7.1f}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results}, f)


if __name__ == "__main__":
    main()
