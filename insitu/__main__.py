"""``python -m insitu`` runs the command-line interface."""

from insitu.cli import main

main()
