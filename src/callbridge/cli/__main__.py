"""`python -m callbridge.cli`: the `callbridge` command."""

from callbridge.cli import main

main()
