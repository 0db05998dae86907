"""`python -m tests.emr_emulator [--root DIR] [--master URL] [--cold] [--log-delay S] [--cancel-delay S]`: prints
what to export, Ctrl-C stops it."""

import argparse
import logging
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path

from tests.emr_emulator import EmrEmulator
from tests.emr_emulator.host import CANCEL_DELAY_S, LOG_DELAY_S


def main(argv: list[str] | None = None) -> int:
    """Run the emulation until Ctrl-C (or SIGTERM)."""
    parser = argparse.ArgumentParser(prog="python -m tests.emr_emulator", description=__doc__)
    parser.add_argument("--root", type=Path, default=None, help="the node's disk (default: a new temporary folder)")
    parser.add_argument(
        "--master", default="yarn", help="yarn: EMR's, on Hadoop's YARN (default); or another Spark master (local[2])"
    )
    parser.add_argument("--cold", action="store_true", help="nodes share no pip cache or venv with this machine")
    parser.add_argument(
        "--log-delay", type=float, default=LOG_DELAY_S, help="seconds until a step's logs are on S3 (EMR: minutes)"
    )
    parser.add_argument(
        "--cancel-delay", type=float, default=CANCEL_DELAY_S, help="seconds a cancelled running step is CANCEL_PENDING"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s emr-emulator: %(message)s", stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    root = args.root or Path(tempfile.mkdtemp(prefix="emr-emulator-"))
    emulator = EmrEmulator(
        root, args.master, cold=args.cold, log_delay_s=args.log_delay, cancel_delay_s=args.cancel_delay
    ).start()
    for name, value in emulator.exports().items():
        print(f"export {name}={shlex.quote(value)}")
    print("# emulated EMR ready; Ctrl-C stops it", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
