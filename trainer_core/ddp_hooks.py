"""A DDP gradient hook for `deterministic=True` with more than 2 ranks: every element summed in rank order.

DDP all-reduces gradients in buckets, and after its first step it rebuilds the buckets in the order the
gradients became ready. With more than 2 ranks, where an element sits in a bucket decides the order in which
the ring all-reduce adds the ranks' values (((a+b)+c)+d or ((c+d)+a)+b): a different last bit. A resumed run
starts with a new DDP whose first step uses the initial layout, where the run that never stopped used the
rebuilt one, so its weights differ in the last bits. (With 2 ranks a+b = b+a exactly: no hook is needed.)

`ordered_mean_hook` gathers every rank's bucket and adds them in rank order, the same order for any layout,
so the result depends on the gradients only. It moves world-size times more data than an all-reduce; the
trainer installs it only when `deterministic=True` asks for bit-exact runs and the job has more than 2 ranks.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations as objects, not strings.
import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup


def ordered_mean_hook(
    process_group: ProcessGroup | None,
    bucket: dist.GradBucket,  # type: ignore[name-defined]
) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: the mean of the ranks' gradients (as DDP's default computes it), added in rank order."""
    group = process_group if process_group is not None else dist.group.WORLD
    world_size = dist.get_world_size(group)
    flat = bucket.buffer().div_(world_size)  # as DDP's default hook: divide first, then add
    parts = [torch.empty_like(flat) for _ in range(world_size)]
    work = dist.all_gather(parts, flat, group=group, async_op=True)
    assert work is not None  # async_op=True always returns a work handle

    def add_in_rank_order(_: torch.futures.Future[object]) -> torch.Tensor:
        total = parts[0].clone()
        for part in parts[1:]:
            total.add_(part)
        flat.copy_(total)
        return flat

    return work.get_future().then(add_in_rank_order)
