"""Model EMA under DistributedDataParallel: 2 CPU processes (gloo), each averaging its unwrapped
model after every step (ModelEMAHook on a DDP-wrapped model), hold bitwise the same average,
with the plain module's keys (no "module."), equal to the average of a single process that
trains on both processes' data."""
import os
import types
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn

from detectron2.utils.events import EventStorage

from d2_anchorfree.engine.ema import ModelEMA, ModelEMAHook

from conftest import spawn_with_deadline

pytestmark = pytest.mark.slow  # 2 spawned processes

WORLD, STEPS = 2, 3


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()


def batch(rank, step):
    """Process ``rank``'s 2 samples of ``step``; the single process trains on both processes' 4."""
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 1, generator=g, dtype=torch.float64)


def train(model, batches):
    """SGD steps, each followed by the EMA hook's update; returns the averaged state dict."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = ModelEMAHook(ModelEMA(model, decay=0.5, warmup=1))
    hook.trainer = types.SimpleNamespace(model=model, iter=0)
    with EventStorage() as storage:
        hook.trainer.storage = storage
        hook.before_train()
        for x, y in batches:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            hook.after_step()
    return hook._ema.module.state_dict()


def worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    try:
        ddp = nn.parallel.DistributedDataParallel(make_model(), broadcast_buffers=False)  # as detectron2's
        averaged = train(ddp, [batch(rank, s) for s in range(STEPS)])
        torch.save({"ema": averaged, "raw": ddp.module.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
        # No closing barrier (the parent waits for both processes), and the DDP wrapper goes first:
        # a barrier's work object freed by gloo's thread while the process group was torn down from
        # the main thread deadlocked on the GIL once (torch 2.13: ~ProcessGroupGloo joining a
        # thread that waits for the GIL); the parent also kills workers stuck past a deadline.
        del ddp
    finally:
        dist.destroy_process_group()


def test_ema_is_the_same_on_every_process_and_equals_single_process(tmp_path):
    spawn_with_deadline(worker, (str(tmp_path / "init"), str(tmp_path)), WORLD, timeout_s=180)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = train(make_model(), [tuple(torch.cat(t) for t in zip(*(batch(r, s) for r in range(WORLD))))
                                  for s in range(STEPS)])
    assert set(ranks[0]["ema"]) == set(single) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for key, value in single.items():
        assert torch.equal(ranks[0]["ema"][key], ranks[1]["ema"][key]), key
        assert torch.allclose(ranks[0]["ema"][key], value, rtol=1e-12, atol=1e-12), key
        assert not torch.allclose(ranks[0]["ema"][key], ranks[0]["raw"][key]), key  # an average, not the weights
