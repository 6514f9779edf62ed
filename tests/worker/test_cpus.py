"""The worker's thread count: the cores it may use (affinity, cgroup quota) and what other processes leave free."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.worker.cpus import busy_elsewhere, cgroup_cpus, threads_for, usable_cores


def test_a_cgroup_quota_caps_the_cores(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpus(cpu_max) is None
    assert usable_cores(cpu_max) == len(os.sched_getaffinity(0))
    cpu_max.write_text("50000 100000\n")  # docker run --cpus 0.5
    assert cgroup_cpus(cpu_max) == 0.5 and usable_cores(cpu_max) == 1
    assert cgroup_cpus(tmp_path / "absent") is None


def test_threads_follow_the_free_cores() -> None:
    assert threads_for(2, 0.1) == 2  # quiet: both
    assert threads_for(2, 0.9) == 1  # one core busy elsewhere: 1 thread beat 2 (87 vs 48 iterations a minute)
    assert threads_for(2, 3.0) == 1  # never none
    assert threads_for(8, 2.2) == 6
    assert threads_for(4, None) == 4  # unknown: all usable cores


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat")
def test_a_busy_process_elsewhere_is_seen() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_elsewhere(0.5) >= 0.6  # at least the spinner (other work on the machine only adds)
    finally:
        spinner.kill()
        spinner.wait()
