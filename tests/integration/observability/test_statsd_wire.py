"""The harness's StatsD printer (`python -m nontax_dev.statsd_wire PORT`): it shows the pipeline's
lines as they arrive and leaves Airflow's own out unless asked."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from nontax_dev.airflow_run import ROOT


def test_the_printer_shows_the_pipelines_lines_as_they_come():
    # Port 0: the printer binds a free UDP port itself and says which.
    proc = subprocess.Popen(
        [sys.executable, "-m", "nontax_dev.statsd_wire", "0"],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT / "include"), "PATH": ""},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        listening = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in listening, listening
        port = int(listening.split("127.0.0.1:")[1].split()[0])
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for line in (
            b"airflow.ti.finish:1|c",
            b"airflow.nontax.bills.inserted,status=inserted:1|c",
        ):
            sender.sendto(line, ("127.0.0.1", port))
        sender.close()
        # The printer shows a line within its half-second poll; wait for it, however loaded.
        shown = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert shown.rstrip("\n") == "airflow.nontax.bills.inserted,status=inserted:1|c"
    assert out.splitlines() == []  # Airflow's own line was left out
    assert proc.returncode == 0
