"""Cores from CPU affinity and the cgroup quota, on faked /proc and /sys/fs/cgroup files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mmsearch import cpus
from mmsearch.settings import Settings

Fake = Callable[..., None]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    """``fake(affinity=8, proc="0::/x", files={"x/cpu.max": "..."})`` sets up a machine."""
    root = tmp_path / "cgroup"
    root.mkdir()
    monkeypatch.setattr(cpus, "CGROUP_ROOT", root)
    monkeypatch.setattr(cpus, "PROC_CGROUP", tmp_path / "proc-self-cgroup")

    def make(affinity: int = 8, proc: str | None = "0::/", files: dict[str, str] | None = None) -> None:
        monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(affinity)))
        if proc is not None:
            (tmp_path / "proc-self-cgroup").write_text(proc + "\n")
        for rel, text in (files or {}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text + "\n")
        cpus.available_cpus.cache_clear()

    yield make
    cpus.available_cpus.cache_clear()


def test_no_quota_uses_the_affinity(fake: Fake) -> None:
    fake(affinity=6, files={"cpu.max": "max 100000"})
    assert cpus.cgroup_cpu_limit() is None
    assert cpus.available_cpus() == 6


def test_cgroup_v2_quota_caps_and_rounds_down(fake: Fake) -> None:
    fake(affinity=16, files={"cpu.max": "250000 100000"})
    assert cpus.cgroup_cpu_limit() == 2.5
    assert cpus.available_cpus() == 2


def test_quota_under_one_cpu_still_gives_one_thread(fake: Fake) -> None:
    fake(affinity=4, files={"cpu.max": "50000 100000"})
    assert cpus.available_cpus() == 1


def test_affinity_below_the_quota_wins(fake: Fake) -> None:
    fake(affinity=2, files={"cpu.max": "800000 100000"})
    assert cpus.available_cpus() == 2


def test_v2_nested_cgroup_takes_the_tightest_ancestor(fake: Fake) -> None:
    fake(affinity=32, proc="0::/jobs/job7", files={
        "cpu.max": "max 100000", "jobs/cpu.max": "300000 100000", "jobs/job7/cpu.max": "max 100000"})
    assert cpus.available_cpus() == 3


def test_cgroup_v1_quota(fake: Fake) -> None:
    fake(affinity=16, proc="4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/", files={
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"})
    assert cpus.available_cpus() == 4


def test_cgroup_v1_no_quota_and_path_missing_inside_the_mount(fake: Fake) -> None:
    # without a cgroup namespace /proc names the host's path; the mount holds the container's own
    fake(affinity=8, proc="1:cpu:/docker/abc", files={"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cpus.available_cpus() == 8
    fake(affinity=8, proc="1:cpu:/docker/abc", files={"cpu/cpu.cfs_quota_us": "200000"})
    assert cpus.available_cpus() == 2


def test_unreadable_or_garbled_files_mean_no_quota(fake: Fake) -> None:
    fake(affinity=3, proc=None, files={"cpu.max": "garbage"})
    assert cpus.available_cpus() == 3


def test_thread_counts_follow_settings_then_cores(fake: Fake) -> None:
    fake(affinity=16, files={"cpu.max": "400000 100000"})
    assert cpus.intra_op_threads(Settings()) == 4
    assert cpus.intra_op_threads(Settings(threads=2)) == 2
    assert cpus.decode_workers(Settings(), on_gpu=False) == 1
    assert cpus.decode_workers(Settings(), on_gpu=True) == 4
    assert cpus.decode_workers(Settings(decode_workers=3), on_gpu=False) == 3
    fake(affinity=32, files={"cpu.max": "max 100000"})
    assert cpus.decode_workers(Settings(), on_gpu=True) == 16  # feeding a GPU: up to 16
    assert cpus.decode_workers(Settings(), on_gpu=False) == 8
    fake(affinity=16, files={"cpu.max": "400000 100000"})
    assert Settings().resolved_build_threads() == 3
    assert Settings(threads=2).resolved_build_threads() == 1
    assert Settings(build_threads=7).resolved_build_threads() == 7


def test_apply_sets_the_process_default(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    fake(affinity=16, files={"cpu.max": "400000 100000"})
    monkeypatch.setattr(cpus, "_configured", None)
    before = torch.get_num_threads()
    try:
        cpus.apply(Settings(threads=3))  # torch is loaded here (conftest): set too
        assert cpus.intra_op_threads() == 3 and torch.get_num_threads() == 3
        cpus.apply(Settings())
        assert cpus.intra_op_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_torch_threads_come_from_the_available_cores(fake: Fake) -> None:
    torch = pytest.importorskip("torch")
    fake(affinity=16, files={"cpu.max": "100000 100000"})
    before = torch.get_num_threads()
    try:
        cpus.apply_torch_threads(Settings())
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
