"""``python -m pipeline.cli``: the ``jwtwatch`` command."""

from pipeline.cli import main

main()
