"""BatchNorm's statistics re-taken at the end of an epoch (core/bn_stats.py), alone and in an epoch."""

import numpy as np
import torch
import torch.nn as nn

from raycat.core import bn_stats
from raycat.core.augment import AugmentSpec
from raycat.core.comm import LocalComm
from raycat.core.data import TensorData
from raycat.core.loop import HEAD, UNFROZEN, Loop, Optim
from raycat.core.model import create_model


def test_the_tail_keeps_the_last_images_and_at_least_as_many_as_asked():
    tail = bn_stats.TailBatches(10)
    for i in range(5):
        tail.add(torch.full((4, 1), float(i)))
    kept = tail.batches()
    assert [int(b[0, 0]) for b in kept] == [2, 3, 4]  # 12 images: dropping batch 2 would leave 8
    off = bn_stats.TailBatches(0)
    off.add(torch.zeros(4, 1))
    assert off.batches() == []


def test_recompute_gives_the_plain_average_of_the_batches_and_leaves_frozen_layers_and_momentum_alone():
    torch.manual_seed(0)
    trained, frozen = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    net = nn.Sequential(frozen, trained)
    frozen.eval()  # a frozen group's layer
    frozen.running_mean.fill_(5.0)
    trained.running_mean.fill_(-7.0)  # stale statistics, far off
    batches = [torch.randn(16, 3) * 2 + 1 for _ in range(3)]
    assert bn_stats.recompute(net, batches, net) == 1
    # through the frozen layer (eval: its own statistics) first, as the network sees them
    seen = [(b - 5.0) / torch.sqrt(torch.ones(3) + frozen.eps) for b in batches]
    mean = torch.stack([s.mean(0) for s in seen]).mean(0)
    var = torch.stack([s.var(0, unbiased=True) for s in seen]).mean(0)
    assert torch.allclose(trained.running_mean, mean, atol=1e-5)
    assert torch.allclose(trained.running_var, var, atol=1e-5)
    assert trained.momentum == 0.1 and torch.all(frozen.running_mean == 5.0)


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    y = torch.arange(n) % 2
    return TensorData(x[:16], y[:16], x[16:], y[16:], 8)


def last_inputs(module):
    seen = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    return seen, handle


def test_an_epoch_ends_with_the_statistics_of_its_last_batch_under_its_final_weights():
    torch.manual_seed(0)
    model = create_model("resnet18", 2)
    loop = Loop(model, data(), LocalComm(), torch.device("cpu"), "fp32", AugmentSpec("side_on"), Optim(), 8,
                bn_images=8)  # one batch: the epoch's last
    seen, handle = last_inputs(model)
    loop.train_epoch(UNFROZEN, lambda step: [0.5] * 3, 0, None)  # a rate that moves the weights a lot
    handle.remove()
    conv1, bn1 = model.body[0], model.body[1]
    with torch.no_grad():
        act = conv1(seen[-1])
    assert torch.allclose(bn1.running_mean, act.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn1.running_var, act.var((0, 2, 3), unbiased=True), rtol=1e-3)


def test_with_the_body_frozen_only_the_head_s_statistics_are_retaken_from_its_activations():
    torch.manual_seed(0)
    model = create_model("resnet18", 2)
    body_bn = {k: v.clone() for k, v in model.body.state_dict().items()}
    loop = Loop(model, data(), LocalComm(), torch.device("cpu"), "fp32", AugmentSpec("side_on"), Optim(), 8,
                bn_images=8)
    seen, handle = last_inputs(model.head)
    loop.train_epoch(HEAD, lambda step: [0.0, 0.0, 0.5], 0, None)
    handle.remove()
    assert all(torch.equal(body_bn[k], v) for k, v in model.body.state_dict().items())
    assert torch.allclose(model.head[0].running_mean, seen[-1].mean(0), atol=1e-5)


def test_with_bn_freeze_an_unfrozen_epoch_keeps_the_body_s_statistics_and_passes_the_body_once_a_step():
    """bn_freeze through the Loop: the body trains (its weights move) with its BatchNorm statistics
    as they were; the head's are re-taken from its own inputs, with no extra forward pass through
    the body (it used to run the whole model again over bn_images images an epoch)."""
    torch.manual_seed(0)
    model = create_model("resnet18", 2)
    before = {k: v.clone() for k, v in model.body.state_dict().items()}
    loop = Loop(model, data(), LocalComm(), torch.device("cpu"), "fp32", AugmentSpec("side_on"), Optim(), 8,
                bn_images=8, bn_freeze=True)
    body_calls, handle = last_inputs(model.body)
    seen, head_handle = last_inputs(model.head)
    loop.train_epoch(UNFROZEN, lambda step: [0.5] * 3, 0, None)
    handle.remove()
    head_handle.remove()
    assert len(body_calls) == loop.data.steps_per_epoch  # one forward a step, no more
    after = model.body.state_dict()
    stats = [k for k in before if "running_" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])  # the body did train
    assert torch.allclose(model.head[0].running_mean, seen[-1].mean(0), atol=1e-5)


def test_off_the_running_averages_are_what_the_steps_left():
    torch.manual_seed(0)
    model = create_model("resnet18", 2)
    loop = Loop(model, data(), LocalComm(), torch.device("cpu"), "fp32", AugmentSpec("side_on"), Optim(), 8)
    seen, handle = last_inputs(model)
    loop.train_epoch(UNFROZEN, lambda step: [0.5] * 3, 0, None)
    handle.remove()
    with torch.no_grad():
        act = model.body[0](seen[-1])
    assert not torch.allclose(model.body[1].running_mean, act.mean((0, 2, 3)), atol=1e-4)


def _sync_rank(rank, port, out):
    import torch.distributed as dist

    from raycat.core.comm import TorchComm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(float(rank + 1))  # rank 0: 1, rank 1: 2
    bn.running_var.fill_(0.5 * (rank + 1))  # rank 0: 0.5, rank 1: 1.0
    bn.num_batches_tracked.fill_(10 * (rank + 1))
    TorchComm().sync_buffers(bn)
    out[rank] = (bn.running_mean.tolist(), bn.running_var.tolist(), int(bn.num_batches_tracked))
    dist.destroy_process_group()


def test_workers_end_an_epoch_with_the_mean_of_their_statistics():
    """Each rank re-takes BatchNorm's statistics from its own batches; every rank then scores (and
    rank 0 saves) the statistics of all their batches: the mean of the means, and the mean of the
    variances plus the spread of the ranks' means (0.75 + 0.25 here): two real gloo processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_sync_rank, args=(port, out), nprocs=2)
    assert out[0] == out[1] == ([1.5, 1.5], [1.0, 1.0], 10)
