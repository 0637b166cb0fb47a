"""The ``dsch`` command line (``dsch --help``): train, evaluate, encode, build and search
indexes. ``main.py`` parses the arguments (``dsch_ext.cli.main.main`` is the entry point);
``training.py``, ``evaluation.py`` and ``indexes.py`` do each command's work through the
library, ``common.py`` holds what they share. Errors are one line on stderr and exit status 2;
Ctrl-C is one line and exit status 130."""
