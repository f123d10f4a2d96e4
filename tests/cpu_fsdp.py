"""``python -m relevance_lens ARGS`` with accelerate's FSDP switched on for CPU processes (gloo).

torch's FSDP2 (``fully_shard``) shards and trains on CPU with gloo, but accelerate enables FSDP
only for accelerator runs: ``AcceleratorState.__init__`` (accelerate 1.16, ``state.py``) sets
``DistributedType.FSDP`` inside ``elif self.distributed_type in [MULTI_GPU, MULTI_XPU, ...]``,
a list without MULTI_CPU, and otherwise drops the plugin silently: the HF Trainer then runs
plain DDP (``train`` refuses ``fsdp`` there, tests/test_fsdp.py). This launcher makes the one
change accelerate makes on a GPU, after its own set-up, so that tests/test_fsdp.py runs the
Trainer's whole FSDP2 path (wrapping, sharded optimizer, full-state-dict checkpoints) on CPU.
Used by tests only; never by the package.
"""

import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_cpu_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        # Where accelerate records it on a GPU too: a later AcceleratorState() copies PartialState's type.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_with_cpu_fsdp
    sys.argv = ["relevance_lens", *sys.argv[1:]]
    runpy.run_module("relevance_lens", run_name="__main__", alter_sys=True)
