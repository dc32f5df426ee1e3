"""python -m vlmkit ...: the `vlmkit` command, for an environment where the package is on PYTHONPATH but not installed."""
import sys

from vlmkit.cli import main

sys.exit(main())
