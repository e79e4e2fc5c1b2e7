"""``process.workers = "auto"``: the CPUs the affinity allows, capped by the cgroup's CPU quota (v2 and v1), read from
a tree laid out as /proc and /sys are."""

from __future__ import annotations

from pathlib import Path

from daemon.app.cpus import available


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_without_a_quota_auto_is_the_cpus_of_the_affinity(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "max 100000\n"})
    cpus = available(root, affinity=6)
    assert (cpus.workers, cpus.quota) == (6, None)
    assert str(cpus) == "6 (CPU affinity 6, no cgroup CPU quota)"


def test_a_cgroup_v2_quota_caps_the_affinity_at_its_whole_cpus(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/kubepods/pod1/c1\n",
                            "sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "250000 100000\n"})  # fmt: skip
    cpus = available(root, affinity=16)
    assert (cpus.workers, cpus.quota) == (2, 2.5)
    assert available(root, affinity=1).workers == 1


def test_the_smallest_quota_on_the_way_to_the_root_counts(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/system.slice/webhook-router.service\n",
                            "sys/fs/cgroup/system.slice/cpu.max": "300000 100000\n",
                            "sys/fs/cgroup/system.slice/webhook-router.service/cpu.max": "max 100000\n"})  # fmt: skip
    assert available(root, affinity=8).workers == 3


def test_a_quota_under_one_cpu_still_runs_one_worker(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "50000 100000\n"})
    cpus = available(root, affinity=4)
    assert (cpus.workers, cpus.quota) == (1, 0.5)


def test_a_container_that_sees_its_own_cgroup_at_the_mount_reads_it_there(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/kubepods/host/path\n", "sys/fs/cgroup/cpu.max": "200000 100000"})
    assert available(root, affinity=8).workers == 2


def test_a_cgroup_v1_quota_counts_and_minus_one_is_none(tmp_path: Path) -> None:
    cgroup = "11:memory:/x\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
    root = _tree(tmp_path, {"proc/self/cgroup": cgroup,
                            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000\n",
                            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"})  # fmt: skip
    assert available(root, affinity=32).workers == 4


def test_no_cgroup_information_leaves_the_affinity(tmp_path: Path) -> None:
    assert available(tmp_path, affinity=3).workers == 3
    assert available(_tree(tmp_path, {"proc/self/cgroup": "garbage\n"}), affinity=3).workers == 3


def test_this_machine_answers_at_least_one_cpu() -> None:
    assert available().workers >= 1
