"""``python -m readtalk.cli`` (what ``torchrun ... -m readtalk.cli train dit`` runs)."""

import sys

from readtalk.cli.main import main

sys.exit(main())
