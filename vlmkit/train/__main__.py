"""python -m vlmkit.train CONFIG [options]: the same as `vlmkit train`, for torchrun -m."""
import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
