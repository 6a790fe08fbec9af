"""A loopback stand-in for the Hugging Face Hub, for testing pushes and downloads without a network.

No Hub-compatible server installs from a package registry, so this is a small stdlib
``http.server`` on 127.0.0.1 (ephemeral port, daemon thread) that speaks the endpoints the installed
``huggingface_hub`` (2.4) calls, with the same JSON shapes, headers and error codes:

=========================================================  ==============================================
``GET  /api/whoami-v2``                                     who the bearer token belongs to
``POST /api/repos/create``, ``DELETE /api/repos/delete``    create (409 if it exists; visibility as asked,
                                                            else the namespace's default) / delete a repo
``POST /api/validate-yaml``                                 README metadata check run by ``create_commit``
``POST /api/models/{repo}/preupload/{rev}``                 per-file upload mode ("lfs" / "regular") and
                                                            the remote oid, so unchanged files are skipped
``POST /{repo}.git/info/lfs/objects/batch``                 Git-LFS batch API (basic transfer)
``PUT  /lfs-upload/{sha256}``, ``POST /lfs-verify/{repo}``  LFS object upload and verification
``POST /api/models/{repo}/commit/{rev}``                    ndjson commit, applied atomically
``POST /api/models/{repo}/branch/{branch}``                 create a branch
``GET  /api/models/{repo}[/revision/{rev}]``                repo info with ``sha`` and ``siblings``
``GET  /api/models/{repo}/tree/{rev}``                      file listing (``snapshot_download``)
``GET  /api/models/{repo}/commits/{rev}``                   commit history
``HEAD|GET /{repo}/resolve/{rev}/{path}``                   file metadata (``X-Repo-Commit``, ``ETag``,
                                                            ``X-Linked-Etag``/``-Size``) and content
``/api/spaces/...``, ``/spaces/{repo}/...``                 the same for Space repositories (``type: space``)
=========================================================  ==============================================

Binary files: the real Hub answers ``"lfs"`` for ``*.safetensors`` and the client then uploads through Xet,
a content-addressed chunk store this server does not implement. With ``lfs=True`` (default) the server
answers ``"lfs"`` for binary or ``*.safetensors`` files and the client must be told to use the classic
Git-LFS route (``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``, what ``HF_HUB_DISABLE_XET=1``
does); with ``lfs=False`` every file is "regular" (base64 inside the commit) and Xet is never involved.

A commit is validated completely (every LFS object uploaded, parent commit current) before the branch
moves, so a failure leaves the repository exactly as it was. Faults are injected with :meth:`fail`.
The server stops on :meth:`stop` or by itself after ``max_lifetime_s``; stopping also closes the open keep-alive
connections, so a stopped stand-in answers nothing more.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".png", ".jpg")


def git_blob_sha1(content: bytes) -> str:
    r"""Git's object id of a blob: sha1 over ``b"blob <size>\0" + content``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


# Spaces: a Space "org/name" lives in ``HubStandIn.repos`` under ``space_key("org/name")`` (a model id never
# holds a colon), and its ``/api/spaces/...`` and ``/spaces/...`` requests are routed to the model handlers
# with that key, so both repository types share one implementation.
SPACE_KEY_PREFIX = "space:"
_SPACE_API_PATH = re.compile(r"^/api/spaces/(?=[^/]+/[^/]+)")
_SPACE_FILE_PATH = re.compile(r"^/spaces/(?=[^/]+/[^/]+)")


def space_key(repo_id: str) -> str:
    """Key of the Space ``repo_id`` in ``HubStandIn.repos`` (``snapshot(space_key(...))`` reads its files)."""
    return SPACE_KEY_PREFIX + repo_id


def _space_path(path: str) -> str:
    """``/api/spaces/org/name/...`` → ``/api/models/space:org/name/...``; ``/spaces/org/name/...`` → ``/space:org/name/...``."""
    path = _SPACE_API_PATH.sub("/api/models/" + SPACE_KEY_PREFIX, path)
    return _SPACE_FILE_PATH.sub("/" + SPACE_KEY_PREFIX, path)


def _public_url(base: str, key: str) -> str:
    """URL of a repository as the Hub writes it: ``{base}/org/name`` or ``{base}/spaces/org/name``."""
    if key.startswith(SPACE_KEY_PREFIX):
        return f"{base}/spaces/{key[len(SPACE_KEY_PREFIX) :]}"
    return f"{base}/{key}"


@dataclass
class RemoteFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def oid(self) -> str:
        """Git oid: of the pointer file for LFS files, of the content otherwise."""
        return git_blob_sha1(lfs_pointer(self.sha256, len(self.content)) if self.lfs else self.content)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    files: dict[str, RemoteFile]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        matches = [c for oid, c in self.commits.items() if oid.startswith(revision) and len(revision) >= 7]
        return matches[0] if len(matches) == 1 else None

    def history(self, revision: str) -> list[Commit]:
        commit, out = self.resolve(revision), []
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


@dataclass
class Fault:
    method: str
    pattern: re.Pattern
    status: int  # HTTP status to answer, or 0 to drop the connection without an answer
    times: int  # remaining; -1 forever
    after: bool = False  # handle the request normally, then drop the connection instead of answering
    body: bytes = b'{"error": "injected failure"}'
    hits: int = 0


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubStandIn:
    """State and control of the stand-in server (``url``, ``repos``, ``requests``, :meth:`fail`)."""

    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
        lfs: bool = True,
        max_lifetime_s: float = 300.0,
        private_by_default: Iterable[str] = (),
    ):
        self.tokens = dict(tokens if tokens is not None else {"hf_standin_write_token": "stand-in-user"})
        self.orgs = dict(orgs if orgs is not None else {"stand-in-user": ["paka-org"]})
        self.lfs = lfs
        # Namespaces whose new repositories are private unless the request says "public" (the Hub's
        # organization setting "default repository visibility"); elsewhere the default is public.
        self.private_by_default = set(private_by_default)
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, uploaded but maybe not committed yet
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self.max_lifetime_s = max_lifetime_s
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._connections: set[socket.socket] = set()  # open client connections (HTTP/1.1 keep-alive)
        self._stopped = False

    # ----- lifecycle -----

    def start(self) -> HubStandIn:
        stand_in = self

        class Handler(_Handler):
            hub = stand_in

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="hub-stand-in", daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime_s, self.stop)  # stops by itself if a test forgets
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection.

        ``shutdown()`` only ends the accept loop: a handler thread keeps serving its keep-alive connection,
        and clients pool those (``huggingface_hub`` shares one ``httpx`` client per process). Without closing
        them, a stopped stand-in would go on answering, with its own repositories, any later request that
        reuses such a connection: one sent to its URL by an ``HfApi`` built while it ran (``transformers`` keeps
        one per process), or one meant for a later stand-in that happens to get the same port.
        """
        if self._timer is not None:
            self._timer.cancel()
        with self.lock:
            self._stopped = True
            server, self._server = self._server, None
            connections, self._connections = list(self._connections), set()
        if server is not None:
            server.shutdown()
            server.server_close()
        for connection in connections:
            _close_socket(connection)

    def _track(self, connection: socket.socket) -> None:
        with self.lock:
            if not self._stopped:
                self._connections.add(connection)
                return
        _close_socket(connection)  # accepted just as the server stopped

    def _untrack(self, connection: socket.socket) -> None:
        with self.lock:
            self._connections.discard(connection)

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- test helpers -----

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int = 500,
        times: int = 1,
        *,
        after: bool = False,
        body: bytes | None = None,
    ) -> Fault:
        """Answer the next ``times`` requests matching ``method`` and ``path_regex`` with ``status``
        (``times=-1``: all of them; ``status=0``: close the connection without answering; ``after=True``:
        carry the request out, then lose the answer; ``body``: the error body, JSON by default)."""
        fault = Fault(method.upper(), re.compile(path_regex), status, times, after)
        if body is not None:
            fault.body = body
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def snapshot(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """``{path: content}`` of ``repo_id`` at ``revision`` as the server holds it."""
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            return {} if commit is None else {p: f.content for p, f in commit.files.items()}

    def head(self, repo_id: str, revision: str = "main") -> str | None:
        with self.lock:
            return self.repos[repo_id].branches.get(revision)

    def count(self, method: str, path_regex: str) -> int:
        pattern = re.compile(path_regex)
        return sum(1 for m, p, _ in self.requests if m == method and pattern.search(p))

    # ----- helpers used by the handler -----

    def _match_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.times != 0 and fault.pattern.search(path):
                    fault.times -= 1 if fault.times > 0 else 0
                    fault.hits += 1
                    return fault
        return None

    def _user(self, headers) -> str | None:
        auth = headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.tokens.get(token)
        if user is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return user

    def _require_user(self, headers) -> str:
        user = self._user(headers)
        if user is None:
            raise _HubError(401, "Invalid username or password.")
        return user

    def _can_write(self, user: str, repo_id: str) -> bool:
        namespace = repo_id.removeprefix(SPACE_KEY_PREFIX).split("/")[0]
        return namespace == user or namespace in self.orgs.get(user, [])

    def _repo(self, repo_id: str, headers, write: bool = False) -> Repo:
        repo = self.repos.get(repo_id)
        user = self._require_user(headers) if write else self._user(headers)
        if repo is None or (repo.private and (user is None or not self._can_write(user, repo_id))):
            raise _HubError(404, "Repository not found", "RepoNotFound")
        if write and not self._can_write(user, repo_id):
            raise _HubError(403, "You don't have the rights to write to this repository")
        return repo

    def upload_mode(self, path: str, sample: bytes, size: int) -> str:
        if not self.lfs or size == 0:
            return "regular"
        if path.endswith(LFS_EXTENSIONS) or b"\0" in sample or size > 10 * 1024 * 1024:
            return "lfs"
        return "regular"


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean
        return

    def setup(self):
        super().setup()
        self.hub._track(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.hub._untrack(self.connection)

    # ----- plumbing -----

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        if getattr(self, "_lose_answer", False):  # the work is done, the answer is lost on the way
            self.hub.requests.append((self.command, urlsplit(self.path).path, 0))
            return self._drop()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.hub.requests.append((self.command, urlsplit(self.path).path, status))

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _handle(self):
        path = urlsplit(self.path).path
        body = self._read_body() if self.command in ("POST", "PUT", "DELETE") else b""
        fault = self.hub._match_fault(self.command, path)
        self._lose_answer = fault is not None and fault.after
        if fault is not None and not fault.after:
            if fault.status == 0:  # drop the connection: the client sees a protocol/network error
                self.hub.requests.append((self.command, path, 0))
                return self._drop()
            return self._send(
                fault.status,
                fault.body,
                {"X-Error-Message": "injected failure"},
                content_type="application/json" if fault.body.startswith(b"{") else "text/html",
            )
        try:
            self._route(path, body)
        except _HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json(err.status, {"error": err.message}, headers)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle

    # ----- routes -----

    _REPO = r"(?P<repo>[^/]+/[^/]+)"

    def _route(self, path: str, body: bytes):
        hub, method = self.hub, self.command
        path = _space_path(path)
        routes = [
            ("GET", r"/api/whoami-v2", self.whoami),
            ("POST", r"/api/repos/create", self.create_repo),
            ("DELETE", r"/api/repos/delete", self.delete_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", rf"/api/models/{self._REPO}/preupload/(?P<rev>.+)", self.preupload),
            ("POST", rf"/api/models/{self._REPO}/commit/(?P<rev>.+)", self.commit),
            ("POST", rf"/api/models/{self._REPO}/branch/(?P<branch>.+)", self.create_branch),
            ("GET", rf"/api/models/{self._REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self.tree),
            ("GET", rf"/api/models/{self._REPO}/commits/(?P<rev>.+)", self.commits),
            ("GET", rf"/api/models/{self._REPO}/revision/(?P<rev>.+)", self.info),
            ("GET", rf"/api/models/{self._REPO}", self.info),
            ("POST", rf"/{self._REPO}\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self.lfs_upload),
            ("POST", rf"/lfs-verify/{self._REPO}", self.lfs_verify),
            ("HEAD", rf"/{self._REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
            ("GET", rf"/{self._REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                params = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                with hub.lock:
                    return handler(body=body, **params)
        raise _HubError(404, f"stand-in Hub has no route for {method} {path}")

    def whoami(self, body):
        user = self.hub._require_user(self.headers)
        orgs = [{"name": o, "type": "org"} for o in self.hub.orgs.get(user, [])]
        self._json(
            200,
            {
                "type": "user",
                "name": user,
                "fullname": user,
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": "write"}},
            },
        )

    def create_repo(self, body):
        user = self.hub._require_user(self.headers)
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type", "model")
        if repo_type not in ("model", "space"):
            raise _HubError(400, "the stand-in Hub only hosts model and Space repositories")
        if repo_type == "space" and payload.get("sdk") not in ("gradio", "docker", "static"):
            raise _HubError(400, "a Space needs an sdk (gradio, docker or static)")
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        if repo_type == "space":
            repo_id = space_key(repo_id)
        if not self.hub._can_write(user, repo_id):
            raise _HubError(
                403, f"You don't have the rights to create a {repo_type} under the namespace {repo_id.split('/')[0]}"
            )
        if repo_id in self.hub.repos:
            return self._json(
                409, {"error": f"You already created this {repo_type} repo", "url": _public_url(self.hub.url, repo_id)}
            )
        visibility = payload.get("visibility") or ("private" if payload.get("private") else None)
        private = visibility == "private" if visibility else repo_id.split("/")[0] in self.hub.private_by_default
        repo = Repo(repo_id, private=private)
        initial = _make_commit(
            repo,
            None,
            "initial commit",
            "",
            {".gitattributes": RemoteFile(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", lfs=False)},
        )
        repo.branches["main"] = initial.oid
        self.hub.repos[repo_id] = repo
        public_id = repo_id.removeprefix(SPACE_KEY_PREFIX)
        self._json(200, {"url": _public_url(self.hub.url, repo_id), "name": public_id, "id": public_id})

    def delete_repo(self, body):
        payload = json.loads(body or b"{}")
        user = self.hub._require_user(self.headers)
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        self.hub._repo(repo_id, self.headers, write=True)  # 404 / 403 as the Hub would
        del self.hub.repos[repo_id]
        self._json(200, {})

    def validate_yaml(self, body):
        content = json.loads(body).get("content", "")
        errors = []
        if content.startswith("---"):
            header = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                meta = yaml.safe_load(header) or {}
                if not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
                elif "model-index" in meta and not isinstance(meta["model-index"], list):
                    errors.append({"message": '"model-index" must be an array'})
            except yaml.YAMLError as err:
                errors.append({"message": f"invalid YAML: {err}"})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    def preupload(self, repo, rev, body):
        repo_obj = self.hub._repo(repo, self.headers, write=True)
        commit = repo_obj.resolve(rev)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            mode = self.hub.upload_mode(item["path"], sample, int(item["size"]))
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.oid
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": commit.oid})

    def lfs_batch(self, repo, body):
        self.hub._repo(repo, self.headers, write=True)
        payload = json.loads(body)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise _HubError(400, "the stand-in Hub supports LFS uploads with the basic transfer only")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}"},
                    "verify": {"href": f"{self.hub.url}/lfs-verify/{repo}"},
                }
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_upload(self, oid, body):
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HubError(400, "uploaded content does not match its sha256")
        self.hub.lfs_objects[oid] = body
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def lfs_verify(self, repo, body):
        payload = json.loads(body)
        content = self.hub.lfs_objects.get(payload["oid"])
        if content is None or len(content) != payload["size"]:
            raise _HubError(404, "LFS object not found")
        self._json(200, {"success": True})

    def commit(self, repo, rev, body):
        repo_obj = self.hub._repo(repo, self.headers, write=True)
        head = repo_obj.resolve(rev)
        if head is None or rev not in repo_obj.branches:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and not head.oid.startswith(parent):
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines[1:]:  # validate everything before touching the branch: commits are atomic
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = RemoteFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                content = self.hub.lfs_objects.get(value["oid"])
                if content is None:
                    raise _HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = RemoteFile(content, lfs=True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            else:
                raise _HubError(400, f"unsupported commit operation {key!r}")
        commit = _make_commit(repo_obj, head.oid, header.get("summary", ""), header.get("description", ""), files)
        repo_obj.branches[rev] = commit.oid
        self._json(
            200,
            {
                "commitUrl": f"{_public_url(self.hub.url, repo)}/commit/{commit.oid}",
                "commitOid": commit.oid,
                "success": True,
            },
        )

    def create_branch(self, repo, branch, body):
        repo_obj = self.hub._repo(repo, self.headers, write=True)
        if branch in repo_obj.branches:
            raise _HubError(409, "Reference already exists")
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        commit = repo_obj.resolve(start)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {start}", "RevisionNotFound")
        repo_obj.branches[branch] = commit.oid
        self._json(200, {})

    def _commit_or_404(self, repo_obj: Repo, rev: str) -> Commit:
        commit = repo_obj.resolve(rev)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def info(self, repo, body, rev="main"):
        repo_obj = self.hub._repo(repo, self.headers)
        commit = self._commit_or_404(repo_obj, rev)
        siblings = []
        for path, f in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": len(f.content), "blobId": f.oid}
            if f.lfs:
                sibling["lfs"] = {"size": len(f.content), "sha256": f.sha256, "pointerSize": 134}
            siblings.append(sibling)
        self._json(
            200,
            {
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": commit.oid,
                "private": repo_obj.private,
                "lastModified": commit.date,
                "siblings": siblings,
                "tags": [],
                "library_name": "transformers",
            },
        )

    def tree(self, repo, rev, body, sub=None):
        repo_obj = self.hub._repo(repo, self.headers)
        commit = self._commit_or_404(repo_obj, rev)
        query = parse_qs(urlsplit(self.path).query)
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        prefix = (sub.rstrip("/") + "/") if sub else ""
        entries, folders = [], set()
        for path, f in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    folders.add(prefix + "/".join(parts[:i]))
            entry = {"type": "file", "path": path, "size": len(f.content), "oid": f.oid}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.content), "pointerSize": 134}
            entries.append(entry)
        entries += [
            {"type": "directory", "path": p, "oid": git_blob_sha1(p.encode()), "size": 0} for p in sorted(folders)
        ]
        self._json(200, entries)

    def commits(self, repo, rev, body):
        repo_obj = self.hub._repo(repo, self.headers)
        self._commit_or_404(repo_obj, rev)
        self._json(
            200,
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": "stand-in-user"}],
                }
                for c in repo_obj.history(rev)
            ],
        )

    def resolve(self, repo, rev, file, body):
        repo_obj = self.hub._repo(repo, self.headers)
        commit = self._commit_or_404(repo_obj, rev)
        f = commit.files.get(file)
        if f is None:
            raise _HubError(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update(
                {"ETag": f'"{f.sha256}"', "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.content))}
            )
        else:
            headers["ETag"] = f'"{f.oid}"'
        self._send(200, f.content, headers, content_type="application/octet-stream")


def _close_socket(connection: socket.socket) -> None:
    """End a connection from the server side: the peer reads EOF, a blocked handler thread returns."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _make_commit(repo: Repo, parent: str | None, title: str, message: str, files: dict[str, RemoteFile]) -> Commit:
    tree = sorted((p, f.oid) for p, f in files.items())
    oid = hashlib.sha1(json.dumps([parent, title, message, tree, time.time_ns()]).encode()).hexdigest()
    date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    commit = Commit(oid, parent, title, message, dict(files), date)
    repo.commits[oid] = commit
    return commit
