#!/usr/bin/env python3
"""Whole-process launch timings, interleaved.

    interleave.py [--runs N] [--warmup W] [--log FILE] [--json FILE] [--before CMD] NAME=COMMAND...

Each round runs every command once (the order rotated from round to round), so slow drift of a
shared machine (other jobs, page cache, frequency) falls on all commands alike instead of on
whichever ran last, as it does when each command's runs are taken in one block. A run is
posix_spawn to waitpid, stdout and stderr to the log; a command that exits non-zero stops the
benchmark. Prints per command the median and the interquartile range in ms; --json writes
{"results": [{"command", "median", "q1", "q3", "times"}]} (seconds, as hyperfine's export).
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("--json")
    ap.add_argument("--before", help="a shell command run, untimed, before every run (e.g. "
                    "wait until the cluster is idle, so that no run pays for the one before)")
    ap.add_argument("commands", nargs="+", metavar="NAME=COMMAND")
    a = ap.parse_args()
    cmds = []
    for c in a.commands:
        name, sep, line = c.partition("=")
        if not sep or not line:
            sys.exit(f"interleave.py: {c!r}: expected NAME=COMMAND")
        cmds.append((name, shlex.split(line)))
    log = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    actions = [(os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)]
    times = {n: [] for n, _ in cmds}
    for r in range(a.warmup + a.runs):
        k = r % len(cmds)
        for name, argv in cmds[k:] + cmds[:k]:
            if a.before:
                subprocess.run(a.before, shell=True, check=True)
            t0 = time.perf_counter_ns()
            pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
            _, status = os.waitpid(pid, 0)
            dt = (time.perf_counter_ns() - t0) / 1e9
            if status != 0:
                sys.exit(f"interleave.py: {name}: {shlex.join(argv)} failed ({status:#x}); see {a.log}")
            if r >= a.warmup:
                times[name].append(dt)
    results = []
    for name, _ in cmds:
        t = times[name]
        q = statistics.quantiles(t, n=4)
        results.append({"command": name, "median": statistics.median(t), "q1": q[0], "q3": q[2], "times": t})
        print(f"  {name:44} median {statistics.median(t) * 1e3:7.2f} ms   "
              f"IQR {q[0] * 1e3:6.2f}-{q[2] * 1e3:6.2f}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results}, f)


if __name__ == "__main__":
    main()
