"""moto's standalone S3 server as a process of its own on a loopback port: the real S3 protocol (SigV4, path-style
addressing, NoSuchKey, Content-MD5 checks), so the object store is tested over HTTP as it runs in production.

Its buckets live in the process's memory: `stop()` loses them, `freeze()`/`thaw()` (SIGSTOP/SIGCONT) keep them
while every request to it hangs, as a wedged store does.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from harness.processes import Child, free_port, wait_http

ACCESS_KEY = "wardrobe-test-key"
SECRET_KEY = "wardrobe-test-secret"
REGION = "us-east-1"


class S3Server:
    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        self.process: Child | None = None

    def start(self) -> S3Server:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = Child(argv, {}, self._log, append=True, die_with_parent=True)

        try:
            wait_http(f"{self.url}/moto-api/", timeout=30, proc=self.process)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.thaw()
            self.process.stop(signal.SIGKILL)
            self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.alive():
            self.process.proc.send_signal(signal.SIGCONT)

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "images") -> dict[str, str]:
        """The settings that point Wardrobe at `bucket` on this server."""
        return {
            "WARDROBE_IMAGE_STORE": f"s3://{bucket}/{prefix}",
            "WARDROBE_S3_ENDPOINT_URL": self.url,
            "WARDROBE_S3_REGION": REGION,
            "WARDROBE_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "WARDROBE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }
