"""Scale-out: a training step on 2 CPU processes (torch.distributed gloo, DistributedDataParallel,
one image per process) gives the same gradients as 1 process on both images.

What makes this hold is the loss normalization: every worker divides its summed losses by the
number of positives (and the other normalizers) *averaged over workers* (modeling/targets.py
``reduce_mean``: all_reduce SUM / world size), so that DDP's gradient average
(1/W) sum_w grad(S_w / mean_w N_w) equals grad(sum_w S_w / sum_w N_w) of the single process.
The negative control replaces ``reduce_mean`` by the identity (each worker normalizes by its own
positives) and checks that the gradients then differ, so the comparison can fail.

The tiny configs use trainable BN in the ResNet; with one image per process its batch statistics
would be those of one image instead of the 2-image batch and the gradients would differ for a
reason that has nothing to do with the loss. The test therefore uses GN in the ResNet
(``MODEL.RESNETS.NORM "GN"``: per-image statistics, like the GN of the heads).
"""
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2_anchorfree.modeling import criterion as criterion_module
from d2_anchorfree.modeling import detector as detector_module
from d2_anchorfree.modeling import targets as targets_module
from d2_anchorfree.modeling.losses import terms as terms_module

from conftest import load_cfg, make_batch, make_instances, spawn_with_deadline

pytestmark = pytest.mark.slow  # 2 gloo worker processes per detector, spawned once per module

CONFIGS = {  # name -> (config, extra overrides)
    "FCOS": ("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", ()),
    # At the prior 0.01 GFL's box/DFL weight sum (the positives' scores) is < 1, so the
    # normalizer's floor is active: this checks loss_normalizer's floor / world_size rule.
    "GFL": ("configs/GFL/GFL_tiny_R_18_cpu.yaml", ()),
    "DeFCN": ("configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml", ()),
}
OPTS = ("MODEL.RESNETS.NORM", "GN")
WORLD = 2
WORKER_TIMEOUT_S = 300


def two_images():
    """Image 0: two objects; image 1: one object (different numbers of positives per worker)."""
    batch = make_batch(128, 160)
    batch[1]["instances"] = make_instances((128, 160), [[60, 40, 110, 100]], [0])
    return batch


def build(name):
    config, extra = CONFIGS[name]
    model = build_model(load_cfg(config, *OPTS, *extra))
    model.train()
    return model


def loss_and_grads(model, inputs):
    """Sum of the losses and {parameter name: gradient} after one backward pass."""
    model.zero_grad(set_to_none=True)
    with EventStorage():
        losses = model(inputs)
    total = sum(losses.values())
    total.backward()
    module = getattr(model, "module", model)
    return total.detach(), {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def worker(rank, init_file, tmp_dir, names):
    """One DDP process: for each detector, one step on image ``rank``, normalized with the global
    positives ("global", the code as it is) or the local ones ("local", negative control)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=WORKER_TIMEOUT_S))
    try:
        inputs = [two_images()[rank]]
        for name in names:
            for mode in ("global", "local"):
                model = build(name)
                model.load_state_dict(torch.load(os.path.join(tmp_dir, f"{name}_init.pth")))
                original = targets_module.reduce_mean  # loss_normalizer looks reduce_mean up here
                if mode == "local":
                    targets_module.reduce_mean = lambda value: value
                try:
                    ddp = torch.nn.parallel.DistributedDataParallel(model)
                    loss, grads = loss_and_grads(ddp, inputs)
                finally:
                    targets_module.reduce_mean = original
                losses = [torch.zeros(()) for _ in range(WORLD)]
                dist.all_gather(losses, loss)
                if rank == 0:  # after DDP's all-reduce every rank holds the averaged gradients
                    torch.save({"losses": torch.stack(losses), "grads": grads},
                               os.path.join(tmp_dir, f"{name}_{mode}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def run_workers(init_file: str, tmp_dir: str):
    """Run the WORLD workers, killed after WORKER_TIMEOUT_S (``conftest.spawn_with_deadline``)."""
    spawn_with_deadline(worker, (init_file, tmp_dir, list(CONFIGS)), WORLD, WORKER_TIMEOUT_S)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Single-process reference and the 2-process results of every detector in CONFIGS."""
    tmp = tmp_path_factory.mktemp("ddp")
    single = {}
    for name in CONFIGS:
        torch.manual_seed(0)
        model = build(name)
        # The criterion (positives) and the loss terms (box weights, auxiliary positives) normalize
        # with targets.loss_normalizer, whose reduce_mean the negative control replaces.
        for module in (criterion_module, terms_module):
            assert module.loss_normalizer is targets_module.loss_normalizer, \
                f"{module.__name__} no longer normalizes with targets.loss_normalizer: update the negative control"
        assert isinstance(model, detector_module.AnchorFreeDetector), name
        torch.save(model.state_dict(), tmp / f"{name}_init.pth")
        single[name] = loss_and_grads(model, two_images())
    run_workers(str(tmp / "init"), str(tmp))
    return {name: (single[name], {m: torch.load(tmp / f"{name}_{m}.pt") for m in ("global", "local")})
            for name in CONFIGS}


def max_relative_error(grads, reference):
    """max over parameters of max|g - g_ref| / max|g_ref| (parameters with a zero reference
    gradient use an absolute 1e-8 floor)."""
    assert grads.keys() == reference.keys()
    return max(float((grads[n] - reference[n]).abs().max() / reference[n].abs().max().clamp(min=1e-8))
               for n in reference)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_process_gradients_equal_single_process(runs, name):
    (single_loss, single_grads), ddp = runs[name]
    result = ddp["global"]
    # Mean over workers of their losses = loss of the single process on the two images.
    assert torch.allclose(result["losses"].mean(), single_loss, rtol=1e-4), (result["losses"], single_loss)
    assert not torch.allclose(result["losses"][0], result["losses"][1])  # the two workers differ
    err = max_relative_error(result["grads"], single_grads)
    print(f"{name}: max relative gradient error {err:.2e}")
    # float32 round-off of batch-1 vs batch-2 convolutions is ~1e-5 here.
    assert err < 1e-3, f"{name}: DDP gradients differ from the single-process ones (max rel. error {err:.2e})"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_local_normalization_would_break_it(runs, name):
    """Negative control: with per-worker normalizers the averaged gradients are wrong."""
    (_, single_grads), ddp = runs[name]
    err = max_relative_error(ddp["local"]["grads"], single_grads)
    print(f"{name}: local normalization, max relative gradient error {err:.2e}")
    assert err > 0.05, f"{name}: local normalization went unnoticed (max rel. error {err:.2e})"
