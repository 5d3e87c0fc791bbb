"""``python -m segbalance`` runs the same CLI as the ``segbalance`` script."""

import sys

from segbalance.cli import main

sys.exit(main())
