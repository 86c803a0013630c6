"""`ray job submit --working-dir . -- python jobs/train.py ...`: same arguments as `raycat train`."""

import os
import sys

# The job's working dir is the repository root; make the package importable without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raycat.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
