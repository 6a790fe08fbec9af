"""paka_hf.utils.host_memory: glibc's thresholds are raised in the process, unless the user opts out."""

import os
import platform
import subprocess
import sys

import pytest

from paka_hf.utils import host_memory
from paka_hf.utils.errors import PaKAUserError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A fresh process runs a small ViT forward 10 times on 8 images of 448² (tensors of 0.1-3 MB, above glibc's
# starting mmap threshold) and reports its minor page faults after a warm-up. With glibc's defaults each
# activation comes back from the kernel as new pages (measured 2,758 and 3,526 faults for 5 forwards); with
# freed memory kept, the warm-up's pages are reused (0 and 512).
CHILD = """
import resource, torch
from paka_hf.utils.host_memory import keep_freed_host_memory
from paka_hf.modeling.backbones import PatchBackbone
from paka_hf.testing import tiny_dinov2_config
applied = keep_freed_host_memory()
torch.manual_seed(0)
backbone = PatchBackbone.from_config(tiny_dinov2_config()).eval()
pixels = torch.randn(8, 3, 448, 448)
with torch.no_grad():
    backbone(pixels)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        backbone(pixels)
print(int(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_child(**env) -> tuple[int, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.update(env, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD], env=environment, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return int(applied), int(faults)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    applied, kept = run_child(PAKA_KEEP_FREED_HOST_MEMORY="1")
    skipped, default = run_child(PAKA_KEEP_FREED_HOST_MEMORY="0")
    assert (applied, skipped) == (1, 0)
    assert default > 2_000
    assert kept < default / 3


@pytest.mark.parametrize("env", [{"PAKA_KEEP_FREED_HOST_MEMORY": "off"}, {"MALLOC_MMAP_THRESHOLD_": "65536"}])
def test_an_opt_out_or_the_users_own_glibc_setting_leaves_malloc_alone(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert host_memory.keep_freed_host_memory() is False


def test_paka_evaluate_keeps_freed_memory_on_start_up(monkeypatch, tmp_path):
    from paka_hf.commands import evaluate

    called = []
    monkeypatch.setattr(evaluate, "keep_freed_host_memory", lambda: called.append(True))
    with pytest.raises(PaKAUserError):  # a missing model folder stops it right after start-up
        evaluate.main(["--model_name_or_path", str(tmp_path / "missing"), "--dataset_name", "camvid"])
    assert called == [True]
