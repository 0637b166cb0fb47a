"""``python -m dsch_ext`` is the ``dsch`` command."""
import sys

from .cli import main

sys.exit(main())
