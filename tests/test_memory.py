"""device.keep_freed_memory: on Linux with glibc, large CPU tensors come from the process's heap, where
freed memory is reused, instead of fresh mappings that the kernel faults in page by page."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where a fresh 64 MB tensor lives, twice (the first freed before the second): in the brk heap or
# in a mapping of its own, and whether freeing it handed the heap's top back to the kernel; run in a
# child process, as the setting is the whole process's.
PROBE = """
import sys, torch
from device import keep_freed_memory
kept = keep_freed_memory(torch.device(sys.argv[1]))
def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            return [int(a, 16) for a in line.split()[0].split("-")]
    return [0, 0]
seen = []
for _ in range(2):
    t = torch.ones(16 * 2**20)
    t_ptr, (lo, hi) = t.data_ptr(), heap()
    del t
    seen.append((lo <= t_ptr < hi, hi == heap()[1]))
print(kept, seen[0][0], seen[1][0], seen[0][1] and seen[1][1])   # the last: freeing kept the heap whole
"""


def probe(device: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, device], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or bool(os.environ.get("LD_PRELOAD")),
                           reason="the setting is glibc's malloc's (Linux, no other malloc preloaded)")


@glibc
def test_large_cpu_blocks_come_from_the_heap_and_stay_there():
    assert probe("cpu") == ["True", "True", "True", "True"]


@glibc
def test_without_the_setting_large_blocks_are_mapped_apart():
    # the same probe with the setting left out ("meta" is not the CPU: keep_freed_memory does nothing),
    # so the test above fails if the setting stops working
    kept, first_in_heap, second_in_heap, _ = probe("meta")
    assert (kept, first_in_heap, second_in_heap) == ("False", "False", "False")


@pytest.mark.parametrize("flag, checkpointing, kept", [("auto", False, True), ("auto", True, False),
                                                        ("on", True, True), ("off", False, False)])
def test_run_keeps_freed_memory_as_the_flag_says(monkeypatch, flag, checkpointing, kept):
    import device
    import run
    calls = []
    monkeypatch.setattr(device, "keep_freed_memory", lambda device: calls.append(device) or True)
    cfg = run.parse_config(["--device", "cpu", "--keep_freed_memory", flag] + ["--gradient_checkpointing"] * checkpointing)
    device.setup(cfg.device, run.keeps_freed_memory(cfg))   # as run.train sets up
    assert bool(calls) == kept
