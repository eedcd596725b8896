"""``python -m hepfm`` runs the command line."""

from hepfm.cli import main

main()
