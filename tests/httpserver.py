"""A small HTTP file server on 127.0.0.1 for download tests, able to misbehave on demand.

It serves registered bytes, honours ``Range`` (206 with ``Content-Range``) and
``If-Range`` (a strong ETag, or Last-Modified), and logs every request's headers.
Tests can make it drop the connection after a number of body bytes, ignore Range,
send no ETag, answer 206 from a fixed byte whatever was asked, redirect, or
answer with an error status, each for as many requests as they queue.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    data: bytes
    filename: str | None = None  # sent as Content-Disposition when set
    content_type: str = "application/octet-stream"
    last_modified: str | None = None  # sent as Last-Modified when set

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


@dataclass
class FileServer:
    files: dict[str, Served] = field(default_factory=dict)
    log: list[dict[str, str]] = field(default_factory=list)  # one dict of headers (+ "path") per request
    drops: deque = field(default_factory=deque)  # per request: None, or body bytes to send before hanging up
    statuses: deque = field(default_factory=deque)  # per request: None, or a status code to answer with
    ignore_range: bool = False
    etags: bool = True  # False: no ETag header, so Last-Modified is the only validator
    lengths: bool = True  # False: no Content-Length on files; the body ends when the connection closes
    partial_from: int | None = None  # set: every answer is a 206 from this byte, whatever Range asked
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location of a 302
    retry_after: str | None = None  # sent with error statuses when set

    def __post_init__(self):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def serve(self, path: str, data: bytes, filename: str | None = None, content_type: str | None = None,
              last_modified: str | None = None) -> str:
        self.files[path] = Served(data, filename, content_type or "application/octet-stream", last_modified)
        return self.url(path)

    def requests_for(self, path: str) -> list[dict[str, str]]:
        return [r for r in self.log if r["path"] == path]


def _handler(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest's output clean
            pass

        def do_GET(self):
            server.log.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            drop = server.drops.popleft() if server.drops else None
            status = server.statuses.popleft() if server.statuses else None
            served = server.files.get(self.path)
            if self.path in server.redirects:
                self.send_response(302)
                self.send_header("Location", server.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if served is None or status is not None:
                code = status or 404
                body = f"{code}\n".encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                if server.retry_after is not None:
                    self.send_header("Retry-After", server.retry_after)
                self.end_headers()
                self.wfile.write(body)
                return
            data, start = served.data, 0
            wanted = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            m = re.fullmatch(r"bytes=(\d+)-", wanted or "")
            validators = (served.etag if server.etags else None, served.last_modified)
            if server.partial_from is not None:
                start = server.partial_from
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            elif m and not server.ignore_range and (if_range is None or if_range in validators):
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", served.content_type)
            if server.lengths:
                self.send_header("Content-Length", str(len(body)))
            if server.etags:
                self.send_header("ETag", served.etag)
            if served.last_modified:
                self.send_header("Last-Modified", served.last_modified)
            self.send_header("Accept-Ranges", "bytes")
            if served.filename:
                self.send_header("Content-Disposition", f'attachment; filename="{served.filename}"')
            self.end_headers()
            if drop is not None:
                self.wfile.write(body[:drop])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
