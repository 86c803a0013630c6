"""The layering the README promises: raycat/core/ is plain PyTorch (no Ray, no storage, not even
lazily), and the CLI's help costs neither torch nor Ray."""

import ast
import os
import subprocess
import sys

CORE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "raycat", "core")


def imported_names(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):  # every import, at any depth: a lazy one counts too
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or ""


def test_no_core_module_imports_ray_or_storage_even_lazily():
    offenders = [(f, name) for f in sorted(os.listdir(CORE)) if f.endswith(".py")
                 for name in imported_names(os.path.join(CORE, f))
                 if name == "ray" or name.startswith("ray.") or name in ("raycat.storage", "boto3", "pyarrow")
                 or (name.startswith("raycat.") and not name.startswith(("raycat.core", "raycat.config",
                                                                         "raycat.errors")))]
    assert offenders == []


def test_importing_the_whole_core_loads_no_ray_and_no_storage():
    mods = [f"raycat.core.{f[:-3]}" for f in sorted(os.listdir(CORE)) if f.endswith(".py") and f != "__init__.py"]
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) +
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m == 'raycat.storage'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
