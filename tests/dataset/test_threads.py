"""CPU thread settings: available CPUs from affinity and cgroup quota, OpenMP's wait policy set
before torch loads, torch's thread count for a block, and batches decoded on several threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from amg import AMGConfig, MaskGenerator
from amg.dataset.threads import TorchThreads, available_cpus, cgroup_cpu_limit
from tests.conftest import read_photo

REPO = Path(__file__).resolve().parents[2]


def _cgroup_v2(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def _cgroup_v1(tmp_path: Path, quota: int, period: int) -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_cgroup_v2_quota_in_cpus(tmp_path):
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path, "150000 100000\n")) == 1.5


def test_cgroup_v2_without_quota(tmp_path):
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path, "max 100000\n")) is None


@pytest.mark.parametrize("quota, expected", [(50000, 0.5), (250000, 2.5), (-1, None)])
def test_cgroup_v1_quota(tmp_path, quota, expected):
    assert cgroup_cpu_limit(_cgroup_v1(tmp_path, quota, 100000)) == expected


def test_no_cgroup_files(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None


def test_available_cpus_capped_by_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == affinity  # no quota: the affinity mask
    assert available_cpus(_cgroup_v2(tmp_path, "50000 100000")) == 1  # half a CPU: one thread
    assert available_cpus(_cgroup_v2(tmp_path, "100000 100000")) == 1
    # 1.5 CPUs: two threads where the mask allows two
    assert available_cpus(_cgroup_v2(tmp_path, "150000 100000")) == min(2, affinity)


def _python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_passive_wait_policy_set_before_torch_loads():
    out = _python("import os; from amg.dataset.threads import prefer_passive_openmp as p; "
                  "print(p(), os.environ['OMP_WAIT_POLICY'])")
    assert out == "True PASSIVE"


def test_user_wait_policy_wins():
    out = _python("import os; from amg.dataset.threads import prefer_passive_openmp as p; "
                  "print(p(), os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="ACTIVE")
    assert out == "False ACTIVE"


def test_wait_policy_untouched_once_torch_is_loaded():
    out = _python("import os, torch; from amg.dataset.threads import prefer_passive_openmp as p; "
                  "print(p(), os.environ.get('OMP_WAIT_POLICY'))")
    assert out == "False None"


def test_command_sets_the_wait_policy_before_torch():
    out = _python("import os, sys; import amg.dataset.cli; "
                  "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    assert out.split()[0] == "PASSIVE"


def test_torch_threads_block_sets_and_restores():
    before = torch.get_num_threads()
    with TorchThreads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with TorchThreads(None):
        assert torch.get_num_threads() == available_cpus()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_batch_threads_checked(mobile_sam, bad):
    with pytest.raises(ValueError, match="batch_threads"):
        MaskGenerator(mobile_sam, batch_threads=bad)


def test_batches_on_threads_equal_one_thread(mobile_sam):
    """Real weights, real photo: batches decoded on two threads give the records of the
    one-thread run exactly (each batch is one-thread arithmetic, results kept in order), and
    the caller's torch thread settings are as before."""
    image = read_photo("groceries.jpg")
    cfg = AMGConfig(points_per_side=12, points_per_batch=16, output_mode="coco_rle")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the encoder's threads too, so only the batching differs
        one = MaskGenerator(mobile_sam, cfg, batch_threads=1).generate(image)
        two = MaskGenerator(mobile_sam, cfg, batch_threads=2).generate(image)
    finally:
        torch.set_num_threads(before)
    assert len(one) > 10
    assert two == one


def test_batch_threads_leave_thread_settings_as_they_were(mobile_sam):
    """The workers' one-thread setting does not leak into the caller or later threads."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        MaskGenerator(mobile_sam, points_per_side=4, points_per_batch=4,
                      batch_threads=2).generate(read_photo("dog.jpg"))
        assert torch.get_num_threads() == 3
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [3]
    finally:
        torch.set_num_threads(before)
