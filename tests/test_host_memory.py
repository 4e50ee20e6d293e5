"""Keeping freed host memory: the settings apply on glibc and remove per-step page faults."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import textwrap

import pytest

from fastadapt.engine.host_memory import retain_freed_host_memory

ON_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# With the retained settings: three training steps of a Conv-4 ProtoNet on 100 images, then
# the minor page faults of each of ten more.
_STEPS = textwrap.dedent(
    """
    import json, resource
    import torch
    from fastadapt import ProtoNet, TaskBatch
    from fastadapt.engine.host_memory import retain_freed_host_memory
    from fastadapt.nn.conv4 import Conv4

    assert retain_freed_host_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(1))
    batch = TaskBatch(
        torch.rand(1, 25, 1, 28, 28), torch.arange(5).repeat_interleave(5)[None],
        torch.rand(1, 75, 1, 28, 28), torch.arange(5).repeat_interleave(15)[None],
    )
    optimizer = torch.optim.Adam(learner.parameters())

    def step():
        optimizer.zero_grad()
        learner.meta_loss(batch).loss.backward()
        optimizer.step()

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    for _ in range(3):
        step()
    per_step = []
    for _ in range(10):
        before = faults()
        step()
        per_step.append(faults() - before)
    print(json.dumps(per_step))
    """
)


def _median_page_faults_per_retained_step() -> int:
    done = subprocess.run(
        [sys.executable, "-c", _STEPS], capture_output=True, text=True, check=True
    )
    return statistics.median_low(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not ON_GLIBC, reason="the settings are glibc's")
def test_retained_memory_removes_the_page_faults_of_repeated_training_steps() -> None:
    # Under glibc's defaults whether a step faults its activations afresh depends on the
    # allocation history: the median step of a run took 9,000-15,000 faults in three runs of
    # five and none in the other two, so only the retained settings give a fixed expectation.
    # With them an occasional step grows the heap (~900 faults); the median step faults none.
    assert _median_page_faults_per_retained_step() < 50


@pytest.mark.skipif(not ON_GLIBC, reason="the settings are glibc's")
def test_retaining_twice_is_harmless() -> None:
    assert retain_freed_host_memory()
    assert retain_freed_host_memory()


@pytest.mark.skipif(ON_GLIBC, reason="checks the platforms without glibc")
def test_without_glibc_nothing_changes() -> None:
    assert not retain_freed_host_memory()
