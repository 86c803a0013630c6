"""Precompute: the frozen body's pooled activations for every image, once, as batch inference on
Ray Data (a pool of actors that each hold the body). The head's first stage trains on these."""

from __future__ import annotations

import numpy as np
import torch

from raycat.augment import eval_batch

FEATURE_BATCH = 64


class BodyFeatures:
    """Ray Data actor: uint8 images in, pooled body activations out (float32, 2 x body channels)."""

    def __init__(self, arch: str, n_classes: int, state, use_gpu: bool = False, actors: int = 1):
        import os

        import ray

        # Ray starts actors with OMP_NUM_THREADS=1; on CPU the actors should share the node's cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, actors)))

        from raycat.model import create_model

        if isinstance(state, ray.ObjectRef):
            state = ray.get(state)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = create_model(arch, n_classes, "none")
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = eval_batch(batch["image"]).to(self.device)
        f = self.model.features(x).float().cpu().numpy()
        return {"features": f, "label": batch["label"]}


def precompute(dataset, arch: str, n_classes: int, state_ref, workers: int, use_gpu: bool):
    """A materialised dataset of {features, label} for a cached image dataset."""
    import ray.data

    return dataset.map_batches(
        BodyFeatures,
        fn_constructor_kwargs={"arch": arch, "n_classes": n_classes, "state": state_ref, "use_gpu": use_gpu,
                               "actors": max(1, workers)},
        batch_size=FEATURE_BATCH,
        compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
        num_gpus=1 if use_gpu else None,
    ).materialize()
