import sys

from raycat.cli import main

sys.exit(main())
