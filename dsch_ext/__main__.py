"""``python -m dsch_ext`` is the ``dsch`` command."""
import sys

from .experiments.cli import main

sys.exit(main())
