"""A local HTTP server that answers like the Hugging Face Hub for one model repository, so `vcam models pull` is
tested through the real huggingface_hub client (pointed here with HF_ENDPOINT), never the internet.

It serves the three things a snapshot download asks for: the repository's file tree (`/api/models/ID/tree/REV`),
its revision info (`/api/models/ID/revision/REV`) and each file (`/ID/resolve/REV/PATH`, HEAD and GET, with the
commit and ETag headers the client keys its cache on). Every requested path is recorded, so a test can say which
files were fetched.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """Serves `files` (repo path -> bytes) as the repository `repo_id` at http://127.0.0.1:PORT."""

    def __init__(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repo_id, self.files = repo_id, files
        self.fetched: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: pytest shows failures, not access logs
                pass

            def do_HEAD(self) -> None:
                server._answer(self, body=False)

            def do_GET(self) -> None:
                server._answer(self, body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _send(self, handler: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str],
              body: bool) -> None:
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(payload)), **headers}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(payload)

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        api = f"/api/models/{self.repo_id}/"
        resolve = f"/{self.repo_id}/resolve/"
        if path.startswith(api + "tree/"):
            tree = [{"type": "file", "path": name, "size": len(data), "oid": _oid(data)}
                    for name, data in sorted(self.files.items())]
            return self._send(handler, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        if path.startswith(api + "revision/") or path.rstrip("/") == api.rstrip("/"):
            info = {"id": self.repo_id, "modelId": self.repo_id, "sha": COMMIT, "private": False,
                    "siblings": [{"rfilename": name} for name in sorted(self.files)]}
            return self._send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if path.startswith(resolve):
            name = path[len(resolve):].split("/", 1)[1]
            if name in self.files:
                data = self.files[name]
                if body:
                    self.fetched.append(name)
                return self._send(handler, 200, data, {"ETag": f'"{_oid(data)}"', "X-Repo-Commit": COMMIT,
                                                       "Content-Type": "application/octet-stream"}, body)
        error = json.dumps({"error": "Repository not found"}).encode()
        self._send(handler, 404, error, {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, body)


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def repository_from_folder(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` as repo path -> bytes (a diffusers folder becomes a Hub repository)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
