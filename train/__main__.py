"""`python -m pass_jax.train ...` is `pass-jax train ...`."""
import sys

from pass_jax.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
