"""``python -m d2_anchorfree.cli``: the ``d2af`` command."""
import sys

from d2_anchorfree.cli.main import main

sys.exit(main())
