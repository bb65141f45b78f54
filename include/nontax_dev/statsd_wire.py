"""A StatsD server of the harness: a UDP socket that keeps every line it receives, parsed as
statsd_exporter reads InfluxDB-tagged lines (`name,tag=value,...:value|type`). The tests read
the metrics of real runs with it; beside `make up STATSD=127.0.0.1:9125` it shows them flowing:

    PYTHONPATH=include .venv/bin/python -m nontax_dev.statsd_wire 9125
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class StatLine:
    name: str
    tags: dict[str, str]
    value: float
    kind: str  # c, ms, g
    raw: str


def parse_line(raw: str) -> StatLine:
    head, _, rest = raw.partition(":")
    value, _, kind = rest.partition("|")
    name, *pairs = head.split(",")
    tags = dict(pair.split("=", 1) for pair in pairs)
    return StatLine(name, tags, float(value), kind.split("|")[0], raw)


class StatsdListener:
    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self._keep(data)

    def _keep(self, data: bytes) -> None:
        with self._lock:
            self.raw.extend(line for line in data.decode().split("\n") if line)

    def lines(self, prefix: str = "", *, settle_s: float = 0.3) -> list[StatLine]:
        """The lines received so far whose name starts with `prefix` (after a short wait for
        datagrams still in flight), the socket's queue read here too: the receiving thread may
        not have run since a datagram of this process was sent."""
        time.sleep(settle_s)
        with contextlib.suppress(OSError):  # BlockingIOError: nothing more queued
            while True:
                self._keep(self.sock.recv(65535, socket.MSG_DONTWAIT))
        with self._lock:
            return [parse_line(r) for r in self.raw if r.startswith(prefix)]

    def total(self, name: str, **tags: str) -> float:
        """The sum of the values of `name` whose tags include `tags`."""
        return sum(
            line.value
            for line in self.lines(name)
            if line.name == name and all(line.tags.get(k) == v for k, v in tags.items())
        )

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)


@contextlib.contextmanager
def statsd_in_process(prefix: str = "airflow") -> Iterator[StatsdListener]:
    """Airflow's stats in this process sent to a fresh listener, as `[metrics] statsd_on` with
    `statsd_influxdb_enabled` would; Airflow's own backend is put back afterwards."""
    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk._shared.observability.metrics.statsd_logger import get_statsd_logger
    from statsd import StatsClient

    listener = StatsdListener()
    factory = stats._factory
    stats.initialize(
        factory=lambda: get_statsd_logger(
            stats_class=StatsClient, host="127.0.0.1", port=listener.port, prefix=prefix,
            influxdb_tags_enabled=True, statsd_influxdb_enabled=True,
        ),
        export_legacy_names=False,
    )  # fmt: skip
    try:
        yield listener
    finally:
        stats.initialize(factory=factory, export_legacy_names=True)
        listener.close()


def main(argv: list[str] | None = None) -> int:
    """Print the pipeline's lines (`airflow.nontax.*`) as they come, until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description="print the pipeline's StatsD lines")
    parser.add_argument("port", type=int, nargs="?", default=9125)
    parser.add_argument("--all", action="store_true", help="Airflow's own metrics too")
    args = parser.parse_args(argv)
    # Ctrl-C ends it even when started in the background, where SIGINT comes ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    listener = StatsdListener(args.port)
    where = f"127.0.0.1:{listener.port}"
    print(f"listening on {where} (udp): make up STATSD={where}", flush=True)
    shown = 0
    try:
        while True:
            time.sleep(0.5)
            arrived = listener.raw[shown:]
            shown += len(arrived)
            for raw in arrived:
                if args.all or raw.startswith("airflow.nontax."):
                    print(raw, flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()


if __name__ == "__main__":
    raise SystemExit(main())
