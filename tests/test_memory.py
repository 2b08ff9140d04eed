import platform
import resource

import pytest
import torch

from pyro_vae.memory import reuse_freed_memory


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's mallopt")
def test_a_freed_tensor_of_megabytes_is_reused_without_page_faults():
    """After reuse_freed_memory, allocating and freeing 4 MB tensors in a loop takes its
    pages from the process's heap; glibc's default after `import torch` maps fresh pages
    every time (about a thousand page faults a tensor)."""
    assert reuse_freed_memory()
    for _ in range(3):
        torch.empty(2**20).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.empty(2**20).fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 20 * 100, faults
