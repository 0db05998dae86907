"""`python -m fruits_assets`: the main job, one ingest batch then every asset (see fruits_assets.ingest)."""

import sys

from fruits_assets.ingest import main

sys.exit(main())
