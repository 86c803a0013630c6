"""The CUDA path (marked gpu; skipped cleanly without CUDA): one DDP training step over nccl, and a
scoring batch on the device in bf16. bench/gpu_check.sh runs these on a GPU machine, with the GPU
decode test in test_decode.py. They need torch, torchvision and pillow only: no Ray."""

import numpy as np
import pytest
import torch

from raycat.core.augment import AugmentSpec
from raycat.core.model import create_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_one_training_step_with_nccl(tmp_path):
    import torch.distributed as dist

    from raycat.core.comm import TorchComm
    from raycat.core.data import TensorData
    from raycat.core.loop import UNFROZEN, Loop, Optim

    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        device = torch.device("cuda", 0)
        torch.manual_seed(0)
        model = create_model("resnet18", 3)
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.integers(0, 256, (32, 3, 64, 64), dtype=np.uint8))
        y = torch.from_numpy(rng.integers(0, 3, 32))
        data = TensorData(x, y, x[:8], y[:8], 16, device=device)
        loop = Loop(model, data, TorchComm(), device, "bf16", AugmentSpec(), Optim(), 16)
        before = model.body.conv1.weight.detach().clone()
        steps = []
        loss = loop.train_epoch(UNFROZEN, lambda step: [0.05] * 3, 0, steps)
        assert np.isfinite(loss) and len(steps) == 2
        assert not torch.equal(before, model.body.conv1.weight.detach())  # the step reached the body
        assert next(model.parameters()).device.type == "cuda"
        probs, labels = loop.valid(UNFROZEN)
        assert probs.shape == (8, 3) and torch.allclose(probs.sum(1), torch.ones(8), atol=1e-4)
    finally:
        dist.destroy_process_group()


def test_a_scoring_batch_on_the_device_agrees_with_the_cpu():
    from raycat.core.device import autocast, memory_format
    from raycat.core.evaluate import view_probs
    from raycat.core.tta import tta_views

    torch.manual_seed(0)
    model = create_model("resnet50", 5).eval()
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (64, 3, 96, 96), dtype=np.uint8))
    cpu = view_probs(lambda x: model(x), images, tta_views(AugmentSpec(), 0, torch.Generator()))
    gpu_model = model.to("cuda").to(memory_format=torch.channels_last)
    dev = torch.device("cuda")

    def forward(x):
        with autocast(dev, "bf16"):
            return gpu_model(x.contiguous(memory_format=memory_format(dev, "bf16"))).float()

    views = tta_views(AugmentSpec(), 4, torch.Generator().manual_seed(0))
    gpu_plain = view_probs(forward, images.to(dev), views[:1])
    gpu_tta = view_probs(forward, images.to(dev), views)
    assert gpu_plain.device.type == "cpu" and gpu_tta.shape == (64, 5)
    assert (gpu_plain - cpu).abs().max() < 0.05  # bf16 against fp32
    assert torch.allclose(gpu_tta.sum(1), torch.ones(64), atol=1e-4) and not torch.allclose(gpu_tta, gpu_plain)
