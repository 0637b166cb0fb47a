"""``python -m dsch_ext`` is the ``dsch`` command."""
import sys

from .cli.main import main

sys.exit(main())
