"""The README's recipes run as written: its model.pt2 example, its KubeRay zip command, its links.

Each test takes the text from README.md itself, so a README that drifts from the code fails here.
"""

import io
import os
import re
import shlex
import subprocess
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def section(title: str) -> str:
    """The text of the README's `## title` section, up to the next `## ` heading."""
    text = readme()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


# ---- "A model that loads without raycat": the model.pt2 example ------------------------------

def photo(w: int, h: int, seed: int) -> Image.Image:
    """Smooth structure plus noise: crops, squashes and resampling all change what a model sees."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([127 + 120 * np.sin(x / 7 + c + seed) * np.cos(y / 5 - c) for c in range(3)], -1)
    a += np.random.default_rng(seed).normal(0, 3, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    """A 60x40 JPEG tagged 'rotate 90 CW' (EXIF orientation 6): upright it is 40x60."""
    img = photo(60, 40, seed=4)
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


# Every path of raycat's decoder, in shapes a squash would distort: a small JPEG (libjpeg-turbo),
# a JPEG 4x the size and more (PIL with DCT-domain downscaling), PNGs (PIL), an EXIF-rotated JPEG.
IMAGES = {
    "wide.jpg": encode(photo(60, 40, seed=0), "JPEG", quality=95),
    "big.jpg": encode(photo(200, 150, seed=1), "JPEG", quality=95),
    "tall.png": encode(photo(40, 90, seed=2), "PNG"),
    "wide.png": encode(photo(100, 45, seed=3), "PNG"),
    "rotated.jpg": rotated_jpeg(),
}
SIZE = 32
# Raycat decodes small JPEGs with libjpeg-turbo and resizes them with torchvision; the example uses
# PIL for both, which rounds a pixel or two differently. Measured: at most 0.002 apart.
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """OUT/model with model.pt2, from a tiny resnet18 whose answers depend on what it is shown.

    A random head answers nearly the same for any input; its last layer is re-centred on these
    images and scaled, so the probabilities spread out without saturating.
    """
    import torch

    from raycat.core.decode import decode_one
    from raycat.core.model import create_model
    from raycat.edge import model_card

    torch.manual_seed(0)
    model = create_model("resnet18", 3, stem="small_pool").eval()
    card = model_card.ModelCard(arch="resnet18", classes=["a", "b", "c"], size=SIZE, mean=[0.5, 0.4, 0.3],
                                std=[0.2, 0.25, 0.3], stem="small_pool")
    mean, std = torch.tensor(card.mean).view(1, 3, 1, 1), torch.tensor(card.std).view(1, 3, 1, 1)
    x = torch.stack([decode_one(data, SIZE) for data in IMAGES.values()]).float() / 255
    with torch.no_grad():
        logits = model((x - mean) / std)
        last = model.head[-1]
        last.bias.copy_(10 * (last.bias - logits.mean(0)))
        last.weight.mul_(10)
    out = tmp_path_factory.mktemp("readme") / "OUT"
    model_card.write(out=str(out), state_dict=model.state_dict(), card=card)
    return out


def raycat_probs(out, images: list[bytes]):
    """What `raycat predict MODEL FILE... --tta 0` computes for these files: raycat's decoder and
    model (weights.pt), not model.pt2."""
    import torch

    from raycat.core.decode import decode_one
    from raycat.core.evaluate import view_probs
    from raycat.core.tta import tta_views
    from raycat.edge import model_card

    folder, card = model_card.find(str(out))
    views = tta_views(card.augment_spec(), 0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        return view_probs(model_card.load(folder, card), torch.stack([decode_one(d, card.size) for d in images]),
                          views)


def run_the_readme_example() -> dict:
    """Run the README's python block in the current folder (which holds OUT/ and cat.jpg); its names."""
    (block,) = [b for b in code_blocks(section("What you see, and what is tracked"), "python") if "model.pt2" in b]
    assert not re.search(r"^\s*(import|from) raycat", block, flags=re.M), "the example must not need raycat"
    namespace: dict = {}
    exec(compile(block, "README.md (model.pt2 example)", "exec"), namespace)
    return namespace


def test_the_readme_model_pt2_example_scores_as_raycat_does(exported, tmp_path, monkeypatch, capsys):
    import torch

    names, images = list(IMAGES), list(IMAGES.values())
    ours = raycat_probs(exported, images)
    monkeypatch.chdir(exported.parent)
    (exported.parent / "cat.jpg").write_bytes(images[0])  # the example's file; PIL reads the format from the bytes
    example = run_the_readme_example()
    assert example["probs"].shape == (1, 3)
    assert float((example["probs"].detach()[0] - ours[0]).abs().max()) < TOLERANCE
    assert "'a':" in capsys.readouterr().out  # it prints class: probability
    # Then its load_image and model on every kind of image, in one batch.
    for name, data in zip(names, images, strict=True):
        (tmp_path / name).write_bytes(data)
    with torch.no_grad():
        theirs = example["model"](torch.from_numpy(np.stack([example["load_image"](str(tmp_path / n), SIZE)
                                                             for n in names])))
        gaps = (theirs - ours).abs().amax(1)
        for name, gap, p, q in zip(names, gaps.tolist(), theirs.tolist(), ours.tolist(), strict=True):
            assert gap < TOLERANCE, f"{name}: the README's preprocessing gives {p}, raycat {q}"
        # The control: squashing each image to a square (the mistake this example once made) is told apart.
        squashed = example["model"](torch.from_numpy(np.stack([
            np.array(Image.open(io.BytesIO(d)).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)) for d in images])))
    assert float((squashed - ours).abs().max()) > 2.5 * TOLERANCE, "the test can't tell a squash from a crop"


# ---- "On Kubernetes (KubeRay)": the working-dir zip ---------------------------------------------

def git_dir() -> str:
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--absolute-git-dir"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("not a git checkout (CI's fresh clone is one)")
    return r.stdout.strip()


def test_the_readme_zip_command_makes_the_one_folder_zip_ray_wants(tmp_path):
    """Run the README's zip command as written, then unpack the zip as Ray does for a remote
    working_dir: 'The zip file must contain only a single top-level directory' (Ray's runtime
    environment docs, Remote URIs); Ray strips that folder, so the job's `python jobs/train.py`
    must find jobs/ at the top of what is left."""
    from ray._private.runtime_env.packaging import unzip_package

    block = code_blocks(section("On Kubernetes (KubeRay)"), "bash")[0]
    lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    upload = next(i for i, line in enumerate(lines) if line.startswith("aws s3 cp "))
    _, _, _, local_zip, remote_zip = shlex.split(lines[upload], comments=True)
    working_dir = yaml.safe_load(yaml.safe_load(open(os.path.join(ROOT, "k8s", "rayjob.yaml")))["spec"][
        "runtimeEnvYAML"])["working_dir"]
    assert remote_zip == working_dir  # the RayJob reads the zip the README uploads
    # The lines before the upload make the zip. They run here as the README says, in an empty
    # folder with git pointed at this repository, so the zip lands in tmp_path, not in the checkout.
    env = {**os.environ, "GIT_DIR": git_dir()}
    for line in lines[:upload]:
        r = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{line}: {r.stderr[-2000:]}"
    with zipfile.ZipFile(tmp_path / local_zip) as z:
        names = z.namelist()
    assert {n.split("/")[0] for n in names} == {"raycat"}, sorted({n.split("/")[0] for n in names})
    for path in ("raycat/pyproject.toml", "raycat/raycat/__init__.py", "raycat/jobs/train.py"):
        assert path in names, path
    assert not any(n.startswith(("raycat/.git/", "raycat/.venv/")) for n in names)
    unpacked = tmp_path / "working_dir"
    unzip_package(str(tmp_path / local_zip), str(unpacked), remove_top_level_directory=True, unlink_zip=False)
    for path in ("pyproject.toml", "raycat/cli.py", "jobs/train.py"):
        assert (unpacked / path).is_file(), path


# ---- links ------------------------------------------------------------------------------------

def inside_the_repository(target: str) -> bool:
    path = os.path.realpath(os.path.join(ROOT, target.split("#")[0]))
    return path.startswith(os.path.realpath(ROOT) + os.sep) and os.path.exists(path)


PLACEHOLDERS = {"JOB", "DATA", "OUT", "MODEL", "IMAGES"}  # what the README's readers fill in


def test_every_path_the_readme_links_to_is_in_the_repository():
    """A clone has only what the repository holds: no ../shared, no files elsewhere on one machine.

    Checked: every relative markdown link target, and every `code span` that names a file by a
    path with a folder in it (`docs/reliability.md`, `jobs/train.py`), but for placeholders
    (`jobs/JOB.py`).
    """
    text = readme()
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:|#", t)]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = [s for s in re.findall(r"`([^`\n]+)`", prose)
             if re.fullmatch(r"[\w.\-/]+/[\w.\-]+\.(md|py|yaml|yml|toml|sh|txt)", s)
             and not PLACEHOLDERS & {part.split(".")[0] for part in s.split("/")}]
    assert "docs/contract.md" in links  # the contract travels with the repository
    missing = [t for t in links + spans if not inside_the_repository(t)]
    assert not missing, f"README.md names paths a clone does not have: {missing}"
