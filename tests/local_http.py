"""A real HTTP server on 127.0.0.1 for tests: records every request it gets, answers as told."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorded:
    method: str
    path: str
    body: bytes


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordingServer:
    url: str
    port: int
    answer: Answer
    received: list[Recorded]


@contextmanager
def recording_server(answer: Answer | None = None) -> Iterator[RecordingServer]:
    """Serve until the block ends; change `.answer` to change what it says next."""
    received: list[Recorded] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(Recorded(self.command, self.path, body))
            reply = recording.answer
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = _handle  # http.server calls do_<METHOD>

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    recording = RecordingServer(f"http://127.0.0.1:{port}", port, answer or Answer(), received)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield recording
    finally:
        server.shutdown()
        server.server_close()
