"""The ``dsch`` command line (``dsch --help``): train, evaluate, encode, build and search
indexes. ``main.py`` parses the arguments (``dsch_ext.cli.main.main`` is the entry point);
``commands.py`` does each command's work through the library. Errors are one line on stderr
and exit status 2."""
