"""`python -m xtune.cli`: what the `xtune` command runs (tests and torchrun start it so)."""

from xtune.cli import main

main()
