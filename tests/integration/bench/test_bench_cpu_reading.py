"""The benchmark's CPU accounting reads real processes (bench/cpu_account.py, through psutil):
a process's parent, its own CPU, what its reaped children used, and its title, whatever its
command name holds."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.cpu_account import read_stats, read_title

# Names itself "bench (x) y" (spaces and parentheses in /proc/<pid>/stat's command name), runs a
# child that spends 0.2 s of CPU and is reaped, spends 0.1 s itself, then waits.
CHILD = """
import ctypes, subprocess, sys, time
ctypes.CDLL(None).prctl(15, b"bench (x) y", 0, 0, 0)
subprocess.run([sys.executable, "-c", "import time\\nwhile time.process_time() < 0.2: pass"])
while time.process_time() < 0.1: pass
print("ready", flush=True)
sys.stdin.read()
"""
# The kernel counts CPU in clock ticks (10 ms), each counter rounded down: two ticks of slack.
SLACK_S = 0.02


def test_a_process_its_cpu_its_reaped_childrens_and_its_title():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout.readline() == "ready\n"
        stat = read_stats()[child.pid]
        assert stat.process.name() == "bench (x) y"
        assert stat.ppid == os.getpid()
        assert stat.own >= 0.1 - SLACK_S
        assert stat.children >= 0.2 - SLACK_S
        assert read_title(stat.process).startswith(f"{sys.executable} -c")
        # The same process again: the same key of its track (its pid and start time).
        again = read_stats()[child.pid]
        assert again.process == stat.process
        assert again.own >= stat.own
    finally:
        child.stdin.close()
        child.wait(timeout=10)
