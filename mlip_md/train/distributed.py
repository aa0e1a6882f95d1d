"""Training across processes: torch's own distributed engine under ``torchrun``, and thread counts.

``torchrun --nproc-per-node N -m mlip_md train CONFIG`` starts N copies of the
command; :func:`from_environment` joins them into one process group (gloo on
CPUs, NCCL where every process has a GPU; several nodes through torchrun's
rendezvous options). Every process holds the whole model; each minibatch is
split across the processes (:meth:`Group.shard`), the loss terms are
normalised by the global batch, and the summed gradients make every
process take the same optimiser step as one process with the whole batch
(Hessian probes are drawn per process: the same expectation, not the same
numbers). Rank 0 alone validates, writes checkpoints, logs and exports.

A single process is a group of one, whose operations do nothing, so the
trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional

import numpy as np
import torch
import torch.distributed as dist

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Group:
    """The processes training one model: this one's ``rank`` among ``size``, ``local_size`` on its node."""

    rank: int = 0
    size: int = 1
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (checkpoints, logs, the exported model)."""
        return self.rank == 0

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This process's part of a global minibatch ``indices`` (contiguous, sizes differing by at most 1)."""
        return np.array_split(np.asarray(indices), self.size)[self.rank]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the processes (a detached float64 copy)."""
        total = values.detach().to(torch.float64).clone()
        if self.size > 1:
            dist.all_reduce(total)
        return total

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replaces every gradient by its sum over the processes (a missing gradient counts as zero)."""
        if self.size == 1:
            return
        parameters = list(parameters)
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in parameters])
        dist.all_reduce(flat)
        offset = 0
        for p in parameters:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object, e.g. a state dict) on every process."""
        if self.size == 1:
            return value
        box: List[Any] = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting its variables)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def from_environment() -> Group:
    """The process group of a ``torchrun`` launch (initialised here if it is not yet), else a group of one."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Group()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= 1 else "gloo"
        dist.init_process_group(backend)
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_WORLD_SIZE"]))


def close(group: Group) -> None:
    """Waits for every process (rank 0 exports after the others are done), then leaves the process
    group that :func:`from_environment` joined; a process that leaves early can abort gloo's threads."""
    if group.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_process(requested: Optional[int], processes: int) -> int:
    """Torch threads for one of ``processes`` training processes on a node: ``requested``, else
    ``OMP_NUM_THREADS`` where the user set it, else the cores shared out (at least 1), because
    torch's threads spin-wait and slow each other down far beyond their share when there are
    more of them than cores."""
    if requested is not None:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, cores() // max(1, processes))
