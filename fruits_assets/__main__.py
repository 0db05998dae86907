"""`python -m fruits_assets`: the main job, one ingest batch then every asset (see fruits_assets.cli.materialize)."""

import sys

from fruits_assets.cli.materialize import main

sys.exit(main())
