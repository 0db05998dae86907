"""An emulated AWS EMR on loopback: a moto server (S3, EMR, IAM, SQS) and a primary node that runs what EMR runs."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from tests.emr_emulator import moto_emr
from tests.emr_emulator.host import CANCEL_DELAY_S, LOG_DELAY_S, NodeConfig
from tests.emr_emulator.node import ClusterNode

logger = logging.getLogger(__name__)

CACHE = Path.home() / ".cache" / "fruits" / "emr-emulator"  # node venvs, one per set of requirements


class EmrEmulator:
    """Start with `start()`, stop with `stop()`; `exports()` is what a shell needs to use it as AWS."""

    def __init__(
        self,
        root: Path,
        master: str = "yarn",
        region: str = "eu-west-3",
        cache: Path = CACHE,
        cold: bool = False,
        log_delay_s: float = LOG_DELAY_S,
        cancel_delay_s: float = CANCEL_DELAY_S,
    ):
        self.root, self.master, self.region, self.cold = Path(root), master, region, cold
        self.delays = {"log_delay_s": log_delay_s, "cancel_delay_s": cancel_delay_s}  # EMR's timing (NodeConfig)
        self.cache = self.root / "node-venvs" if cold else cache  # cold: the node installs everything anew
        self.server = None
        self.config: NodeConfig | None = None
        self.nodes: list[ClusterNode] = []
        self._stop = threading.Event()

    def start(self) -> EmrEmulator:
        """Start the moto server (in this process, so the node can drive EMR's states) and the node watcher."""
        from moto.server import ThreadedMotoServer

        os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"  # AWS' own policies (AmazonEMRServicePolicy_v2)
        moto_emr.install()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.config = NodeConfig(self.root, f"http://{host}:{port}", self.master, self.region, self.cold, **self.delays)
        self.root.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._watch, name="emr-control-plane", daemon=True).start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            for cluster in moto_emr.take_new_clusters():
                node = ClusterNode(cluster, self.config, self.cache)
                self.nodes.append(node)
                node.start()
            time.sleep(0.2)

    def exports(self) -> dict[str, str]:
        """The variables that make the AWS CLI, boto3, the recipe and the main command use this emulation."""
        return {
            "AWS_ENDPOINT_URL": self.config.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "FRUITS_EMR_REGION": self.region,
            "FRUITS_EMR_NODE_DIR": str(self.config.node_dir),
            "FRUITS_EMR_POLL_SECONDS": "1",
        }

    def stop(self) -> None:
        """Terminate every cluster (killing running steps), then stop the server."""
        self._stop.set()
        for cluster in moto_emr.all_clusters():
            moto_emr.set_state(cluster, "TERMINATED")
        for node in self.nodes:
            node.join(timeout=30)
        if self.server is not None:
            self.server.stop()
