"""`python -m fruits_assets.cli.quarantine`: list the current quarantined images (path, reason, batch) of the output."""

import argparse
import sys
import tempfile
from pathlib import Path

from fruits_assets.deploy.settings import Settings
from fruits_assets.io import console


def quarantined_rows(spark, output_uri: str) -> list:
    """The current quarantined rows over every committed batch under `output_uri`, by path ([] when none)."""
    from spark_code.ingest import batches

    rows = batches.read_current_rows(spark, output_uri, "quarantined_images")
    return [] if rows is None else rows.select("path", "reason", "batch").orderBy("path").collect()


def main(argv: list[str] | None = None) -> int:
    """Print one tab-separated line per quarantined image: path, reason, batch."""
    parser = argparse.ArgumentParser(prog="python -m fruits_assets.cli.quarantine", description=main.__doc__)
    parser.add_argument(
        "--output", default=Settings.from_env().output_uri, help="default: $FRUITS_OUTPUT_URI or ./data"
    )
    args = parser.parse_args(argv)
    from fruits_assets.deploy.spark_conf import local_session

    with console.terminal(Path(tempfile.gettempdir()) / "fruits-quarantine.log"):  # Spark's start-up lines
        spark = local_session(extra={"spark.ui.enabled": "false"})
        try:
            rows = quarantined_rows(spark, args.output)
        finally:
            spark.stop()
    for row in rows:
        print(f"{row.path}\t{row.reason}\t{row.batch}")
    print(f"{len(rows)} quarantined image(s) under {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
