"""``python -m fewstep ...`` (and ``torchrun ... -m fewstep ...``): the ``fewstep`` command."""

from fewstep.app.cli import main

main()
