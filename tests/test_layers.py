"""docs/architecture.md kept true: every module's imports point inward (face -> shell -> edge -> core);
raycat/core/ is plain PyTorch (no Ray, no storage, no face, not even lazily), and the CLI's help
costs neither torch nor Ray.

The import rules read each module's source (no import runs): the raycat modules it imports at run
time (one under `if TYPE_CHECKING:` is for the type checker only), Ray, storage libraries."""

import ast
import os
import subprocess
import sys

import pytest

CORE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "raycat", "core")


def test_importing_the_whole_core_loads_no_ray_and_no_storage():
    mods = [f"raycat.core.{f[:-3]}" for f in sorted(os.listdir(CORE)) if f.endswith(".py") and f != "__init__.py"]
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) +
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m == 'raycat.edge.storage'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


ROOT = os.path.join(os.path.dirname(__file__), "..", "raycat")

PARTS = ("core", "edge", "shell")  # a folder each under raycat/; the face is raycat/ itself
PLAIN_DATA = {"config", "errors"}  # the face's dataclasses and exception classes: readable by edge and shell


def part(module: str) -> str:
    """'core' | 'edge' | 'shell' | 'face' for a module path under raycat/ ('core.loop', 'edge.storage'):
    its folder says."""
    top = module.split(".")[0]
    return top if top in PARTS else "face"


def modules() -> list[str]:
    out = []
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                out.append(rel.removesuffix(".__init__") if rel != "__init__" else rel)
    return sorted(out)


def imports(source: str) -> tuple[set[str], bool, bool]:
    """(the raycat modules `source` imports at run time, at any depth (a lazy import counts too),
    whether it imports Ray, whether it imports a storage library: boto3, pyarrow)."""
    tree = ast.parse(source)
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    known = set(modules())
    found, ray, storage = set(), False, False
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name == "ray" or name.startswith("ray."):
                ray = True
            if name.split(".")[0] in ("boto3", "pyarrow"):
                storage = True
            if name.startswith("raycat.") and name.removeprefix("raycat.") in known:
                found.add(name.removeprefix("raycat."))
    return found, ray, storage


ALLOWED = {  # part -> the parts it may import
    "core": {"core"},
    "edge": {"core", "edge"},
    "shell": {"core", "edge", "shell"},
    "face": {"core", "edge", "shell", "face"},
}


def crossings(module: str, source: str) -> list[str]:
    """The lines of docs/architecture.md that `module`'s source crosses."""
    mine, out = part(module), []
    found, ray, storage = imports(source)
    for target in sorted(found):
        theirs = part(target)
        if target == "cli" and module != "__main__":
            out.append(f"raycat/{module} imports the CLI")
        elif theirs not in ALLOWED[mine] and not (target in PLAIN_DATA and mine in ("edge", "shell")):
            out.append(f"raycat/{module} ({mine}) imports raycat/{target} ({theirs})")
    if ray and mine in ("core", "edge"):
        out.append(f"raycat/{module} ({mine}) imports Ray")
    if storage and mine == "core":
        out.append(f"raycat/{module} (core) imports a storage library")
    return out


def source_of(module: str) -> str:
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    if not os.path.exists(path):
        path = os.path.join(ROOT, *module.split("."), "__init__.py")
    return open(path, encoding="utf-8").read()


@pytest.mark.parametrize("module", modules())
def test_each_module_imports_inward_only(module):
    assert crossings(module, source_of(module)) == []


FACE = {"cli", "config", "errors", "demo", "check", "submit", "datasets", "__main__", "__init__"}


def test_the_top_folder_holds_the_face_alone():
    """A new module goes in the folder of its part; raycat/ itself holds what a user types and reads."""
    assert {m for m in modules() if "." not in m and m not in PARTS} == FACE


def test_the_check_sees_each_kind_of_crossing():
    assert crossings("core.bodies", "from raycat import config\nfrom raycat.errors import BadInput\n") == [
        "raycat/core.bodies (core) imports raycat/config (face)",
        "raycat/core.bodies (core) imports raycat/errors (face)"]
    assert crossings("edge.storage", "import ray\n") == ["raycat/edge.storage (edge) imports Ray"]
    assert crossings("core.loop", "def f():\n    import pyarrow\n") == [
        "raycat/core.loop (core) imports a storage library"]
    assert crossings("shell.train_job", "from raycat import cli\n") == ["raycat/shell.train_job imports the CLI"]
    assert crossings("edge.model_card", "from raycat.shell.train_job import fit\n") == [
        "raycat/edge.model_card (edge) imports raycat/shell.train_job (shell)"]
    # an import for the type checker alone is no dependency at run time
    assert crossings("core.recipe", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from raycat.config import Recipe\n") == []
