"""``python -m fewstep ...`` (and ``torchrun ... -m fewstep ...``): the ``fewstep`` command."""

from fewstep.cli import main

main()
