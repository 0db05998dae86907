"""`python -m fruits_assets.cli.quarantine`: list the current quarantined images (path, reason, batch) of the output."""

import argparse
import os
import sys

from fruits_assets.deploy.settings import Settings
from spark_code.storage import lake


def quarantined_rows(output_uri: str) -> list[dict]:
    """The quarantined images of the output now (path, reason, batch), by path ([] when none): read from the Delta
    table with delta-rs, no Spark."""
    rows = lake.read(lake.table_of(output_uri, "quarantined_images"), ["path", "reason", "batch"])
    return [] if rows is None else sorted(rows.to_pylist(), key=lambda row: row["path"])


def main(argv: list[str] | None = None) -> int:
    """Print one tab-separated line per quarantined image: path, reason, batch."""
    parser = argparse.ArgumentParser(prog="python -m fruits_assets.cli.quarantine", description=main.__doc__)
    parser.add_argument(
        "--output", default=Settings.from_env().output_uri, help="default: $FRUITS_OUTPUT_URI or ./data"
    )
    args = parser.parse_args(argv)
    rows = quarantined_rows(args.output)
    for row in rows:
        print(f"{row['path']}\t{row['reason']}\t{row['batch']}")
    print(f"{len(rows)} quarantined image(s) under {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # delta-rs' runtime threads can abort a normal interpreter exit ("terminate called …")
