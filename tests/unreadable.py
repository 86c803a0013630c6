"""A folder that can't be read, for real where the tests run unprivileged (chmod 000), else (root
reads any folder) with os.scandir failing for that one path as it fails for an unprivileged user:
the same PermissionError a volume's root-owned lost+found gives."""

import contextlib
import errno
import os


@contextlib.contextmanager
def unreadable_folder(path, monkeypatch):
    path = os.path.abspath(str(path))
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        os.chmod(path, 0)
        try:
            yield path
        finally:
            os.chmod(path, 0o755)
        return
    real = os.scandir

    def scandir(p="."):
        if os.path.abspath(os.fspath(p)) == path:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(p))
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    yield path
