"""`ray job submit --working-dir . -- python jobs/tune.py ...`: same arguments as `raycat tune`."""

import os
import sys

# The job's working dir is the repository root; make the package importable without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raycat.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
