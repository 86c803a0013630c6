"""The head on precomputed activations (the lesson's precompute stage) with several workers: every
worker steps the head alike on everyone's activations, with no all-reduce a step, and ends the
unit with rank 0's head; two real gloo processes."""

import socket

import numpy as np
import torch

from raycat.core.augment import AugmentSpec
from raycat.core.data import TensorData
from raycat.core.loop import PRECOMPUTE, Loop, Optim


def _images(rank):
    rng = np.random.default_rng(rank)  # each worker its own images
    x = torch.from_numpy(rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8))
    y = torch.arange(24) % 2
    x[y == 1, 0] = 255
    return x, y


def _rank(rank, port, out):
    import torch.distributed as dist

    from raycat.core.comm import TorchComm
    from raycat.core.model import create_model

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    x, y = _images(rank)
    torch.manual_seed(0)  # the same starting model on both, as the driver hands it over
    model = create_model("resnet18", 2)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    comm = TorchComm()
    loop = Loop(model, TensorData(x[:16], y[:16], x[16:], y[16:], 4), comm, torch.device("cpu"), "fp32",
                AugmentSpec("side_on"), Optim(), 4, global_batch=8, bn_images=8)
    loop.reseed(123)
    loss = loop.train_epoch(PRECOMPUTE, lambda step: [0.0, 0.0, 0.05], 0, [])
    feats, labels = loop.all_features()
    out[rank] = {"head": {k: v.clone() for k, v in model.head.state_dict().items()},
                 "moved": any(not torch.equal(before[k], v) for k, v in model.head.state_dict().items()),
                 "features": len(feats), "labels": labels.tolist(), "ddp": sorted(comm._wrapped), "loss": loss}
    dist.destroy_process_group()


def test_workers_step_the_head_on_everyone_s_activations_without_ddp_and_end_with_one_head():
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, out), nprocs=2)
    a, b = out[0], out[1]
    assert a["features"] == b["features"] == 32  # 16 train images a worker, both workers' on each
    assert a["labels"] == b["labels"]
    assert a["ddp"] == b["ddp"] == []  # no DDP wrapper for the head: no all-reduce a step
    assert a["moved"] and all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])
    assert np.isfinite(a["loss"]) and a["loss"] == b["loss"]
    # The head they end with is the one a single process steps on the concatenated activations
    # (rank 0's draws): not two heads each trained on its own worker's activations.
    from raycat.core.comm import LocalComm
    from raycat.core.model import create_model

    (x0, y0), (x1, y1) = _images(0), _images(1)
    torch.manual_seed(0)
    model = create_model("resnet18", 2)
    loop = Loop(model, TensorData(torch.cat([x0[:16], x1[:16]]), torch.cat([y0[:16], y1[:16]]), x0[16:], y0[16:], 8),
                LocalComm(), torch.device("cpu"), "fp32", AugmentSpec("side_on"), Optim(), 8, global_batch=8,
                bn_images=8)
    loop.reseed(123)
    loop.train_epoch(PRECOMPUTE, lambda step: [0.0, 0.0, 0.05], 0, [])
    one = model.head.state_dict()
    assert all(torch.allclose(a["head"][k].float(), one[k].float(), atol=1e-5) for k in one)


def test_a_frozen_stage_on_images_validates_on_the_cached_activations_without_the_body():
    """The head with augmentation trains through the frozen body, but its valid pass scores the
    plain valid images' activations precompute cached: the same numbers, no pass of the body."""
    from raycat.core.comm import LocalComm
    from raycat.core.loop import HEAD
    from raycat.core.model import create_model

    x, y = _images(0)
    torch.manual_seed(0)
    model = create_model("resnet18", 2)
    loop = Loop(model, TensorData(x[:16], y[:16], x[16:], y[16:], 4), LocalComm(), torch.device("cpu"), "fp32",
                AugmentSpec("side_on"), Optim(), 4)
    loop.train_epoch(HEAD, lambda step: [0.0, 0.0, 0.05], 0, [])
    through_body = loop.valid(HEAD)
    loop.features()  # precompute's cache
    calls = []
    handle = model.body.register_forward_pre_hook(lambda *_: calls.append(1))
    cached = loop.valid(HEAD)
    handle.remove()
    assert calls == []
    assert torch.equal(cached[1], through_body[1]) and torch.allclose(cached[0], through_body[0], atol=1e-5)
