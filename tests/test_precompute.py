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


def _rank(rank, port, out, gather_limit=None):
    import torch.distributed as dist

    import raycat.core.loop
    from raycat.core.comm import TorchComm
    from raycat.core.model import create_model

    if gather_limit is not None:  # activations larger than a worker may hold of everyone's
        raycat.core.loop.GATHER_FEATURES_BYTES = gather_limit
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
    everyone = loop.all_features()
    feats, labels = everyone if everyone is not None else loop.features()[:2]
    out[rank] = {"head": {k: v.clone() for k, v in model.head.state_dict().items()},
                 "moved": any(not torch.equal(before[k], v) for k, v in model.head.state_dict().items()),
                 "features": len(feats), "labels": labels.tolist(), "ddp": sorted(comm._wrapped), "loss": loss,
                 "gathered": everyone is not None}
    dist.destroy_process_group()


def _spawn(fn, *args) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(fn, args=(port, out, *args), nprocs=2)
    return dict(out)


def test_workers_step_the_head_on_everyone_s_activations_without_ddp_and_end_with_one_head():
    out = _spawn(_rank)
    a, b = out[0], out[1]
    assert a["gathered"] and b["gathered"]
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


def test_activations_above_the_gather_limit_stay_with_their_worker_and_the_head_steps_with_ddp():
    """The path for train sets whose activations a worker can't hold all of: each worker steps
    on its own, DDP averages the gradients, and both end with one head."""
    out = _spawn(_rank, 1)  # a limit of one byte: nothing is gathered
    a, b = out[0], out[1]
    assert not a["gathered"] and not b["gathered"]
    assert a["features"] == b["features"] == 16  # each worker its own activations only
    assert a["ddp"] == b["ddp"] == ["head"]  # the head stepped under DDP
    assert a["moved"] and all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])
    assert np.isfinite(a["loss"]) and np.isfinite(b["loss"])


def _gather(rank, port, out):
    import torch.distributed as dist

    from raycat.core.comm import TorchComm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    comm = TorchComm()
    rows = (5, 3)[rank]  # uneven parts, as the last worker's shard is
    t = torch.arange(rows * 4, dtype=torch.float32).reshape(rows, 4) + 100 * rank
    out[rank] = {"chunked": comm.gather(t, chunk_bytes=2 * 4 * 4),  # two rows at a time
                 "whole": comm.gather(t), "empty": comm.gather(t[:0] if rank else t)}
    dist.destroy_process_group()


def test_a_gather_concatenates_uneven_parts_in_rank_order_whatever_its_chunk():
    out = _spawn(_gather)
    want = torch.cat([torch.arange(20.).reshape(5, 4), torch.arange(12.).reshape(3, 4) + 100])
    for rank in (0, 1):
        assert torch.equal(out[rank]["chunked"], want) and torch.equal(out[rank]["whole"], want)
        assert torch.equal(out[rank]["empty"], want[:5])  # a rank with no rows adds none
