"""`python -m proto_lightning` = the `proto-lightning` console script."""

import sys

from proto_lightning.cli import main

sys.exit(main())
