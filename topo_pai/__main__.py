"""``python -m topo_pai``: the ``topo-pai`` command."""

import sys

from topo_pai.cli import main

if __name__ == "__main__":
    sys.exit(main())
