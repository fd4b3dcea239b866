"""Locust users for `make bench-api`'s reference apps (the floor and bench/minimal_app.py): each asks for its own
user's row, then thinks 1-3 s, as the session mix's users do. Requests are logged by bench/locustfile.py's sample
log (`--samples-dir`), so the driver reads them as it reads the mix's."""

from __future__ import annotations

import itertools

from locust import FastHttpUser, between, task

import bench.locustfile  # noqa: F401 (its listeners write every request to --samples-dir)

_sessions = itertools.count()


class Reader(FastHttpUser):
    wait_time = between(1, 3)
    network_timeout = 60.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.path = f"/users/{options.user_base + next(_sessions) % options.population}"

    @task
    def read(self) -> None:
        with self.client.get(self.path, name="/users/{id}", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
