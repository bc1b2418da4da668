"""`python -m mgkd.cli`: the `mgkd` command."""

from mgkd.cli import main

main()
