"""A real kube-apiserver (1.20.2, the binary ../shared/tools/realkube.sh builds and caches)
with etcd on loopback, started by the tests themselves, with RBAC on.

realkube.sh starts the server with `--authorization-mode AlwaysAllow` and one token in
system:masters, so no Role can forbid anything there. This starts the same cached binary
with `--authorization-mode RBAC` and a token file of two users:

- `admin`, in system:masters: the tests apply CRDs, objects and RBAC as it;
- `edge`, in no group (the server adds system:authenticated): edge runs as it, and may do
  only what the ClusterRoles bound to User "edge" allow.

`RealKube(dir).start()`; `admin_kubeconfig` / `edge_kubeconfig` are kubeconfig paths,
`api("admin" | "edge")` an official-client ApiClient; `create_many(path, objects)` POSTs
many objects fast (plain HTTPS from a pool of threads, lighter than the client); `compact()` compacts etcd's history
up to now (as kube-apiserver does every 5 minutes), which expires every continue token
handed out so far; `stop()` ends exactly the two processes it started.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import threading
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

CACHED = Path(os.environ.get("REALKUBE_CACHE", Path.home() / ".cache" / "realkube")) / "kube-apiserver"
USERS = {"admin": "system:masters", "edge": ""}  # user -> group ("" for none)


def available() -> bool:
    return CACHED.exists() and shutil.which("etcd") is not None and shutil.which("openssl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealKube:
    def __init__(self, state: Path, binary: Path = CACHED):
        self.dir = Path(state)
        self.binary = binary
        self.tokens = {user: secrets.token_hex(16) for user in USERS}
        self.procs: list[subprocess.Popen] = []
        self.url = ""
        self.etcd_url = ""

    def start(self, timeout: float = 120.0) -> "RealKube":
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "tokens.csv", "w") as f:
            for user, group in USERS.items():
                f.write(f'{self.tokens[user]},{user},{user}' + (f',"{group}"' if group else "") + "\n")
        for args in (["genrsa", "-out", str(d / "sa.key"), "2048"],
                     ["rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")]):
            subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
        client_port, peer_port, secure_port = _free_port(), _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        self.procs.append(self._spawn("etcd", [
            "etcd", "--name", "realkube", "--data-dir", str(d / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"realkube=http://127.0.0.1:{peer_port}"]))
        self.procs.append(self._spawn("apiserver", [
            str(self.binary), "--etcd-servers", f"http://127.0.0.1:{client_port}",
            "--advertise-address", "127.0.0.1", "--bind-address", "127.0.0.1",
            "--secure-port", str(secure_port), "--cert-dir", str(d / "certs"),
            "--token-auth-file", str(d / "tokens.csv"), "--authorization-mode", "RBAC",
            "--allow-privileged=true", "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(d / "sa.pub"),
            "--service-account-signing-key-file", str(d / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/24"]))
        self.url = f"https://127.0.0.1:{secure_port}"
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        for user in USERS:
            self.kubeconfig(user)
        return self

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        try:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def _wait_ready(self, timeout: float) -> None:
        """Until /readyz answers 200 (RBAC's bootstrap roles are in place by then)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; see {self.dir}/*.log")
            req = urllib.request.Request(f"{self.url}/readyz",
                                         headers={"Authorization": f"Bearer {self.tokens['admin']}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise RuntimeError(f"kube-apiserver not ready after {timeout:.0f} s ({last}); see {self.dir}/apiserver.log")

    def kubeconfig(self, user: str) -> str:
        path = self.dir / f"{user}.kubeconfig"
        if not path.exists():
            path.write_text(
                "apiVersion: v1\nkind: Config\n"
                f'clusters: [{{name: realkube, cluster: {{server: "{self.url}", '
                f'certificate-authority: "{self.dir}/certs/apiserver.crt"}}}}]\n'
                f'users: [{{name: {user}, user: {{token: "{self.tokens[user]}"}}}}]\n'
                f"contexts: [{{name: realkube, context: {{cluster: realkube, user: {user}, namespace: default}}}}]\n"
                "current-context: realkube\n")
        return str(path)

    @property
    def admin_kubeconfig(self) -> str:
        return self.kubeconfig("admin")

    @property
    def edge_kubeconfig(self) -> str:
        return self.kubeconfig("edge")

    def api(self, user: str = "admin", pool: int = 4):
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig(user), client_configuration=cfg)
        cfg.connection_pool_maxsize = pool
        return client.ApiClient(cfg)

    def revoke(self, user: str, timeout: float = 30.0) -> None:
        """Delete every RoleBinding and ClusterRoleBinding naming User `user`, and wait until
        the authorizer (which follows them through a watch) denies it again: the server is
        shared by the session, so no test may leave its grants to the next."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        rbac = client.RbacAuthorizationV1Api(self.api("admin"))

        def names(binding) -> bool:
            return any(s.kind == "User" and s.name == user for s in binding.subjects or [])

        for b in rbac.list_cluster_role_binding().items:
            if names(b):
                rbac.delete_cluster_role_binding(b.metadata.name)
        for b in rbac.list_role_binding_for_all_namespaces().items:
            if names(b):
                rbac.delete_namespaced_role_binding(b.metadata.name, b.metadata.namespace)
        review = client.AuthorizationV1Api(self.api("admin"))
        deadline = time.monotonic() + timeout
        while review.create_subject_access_review({
                "spec": {"user": user, "resourceAttributes": {"verb": "list", "group": "getambassador.io",
                                                             "resource": "mappings"}}}).status.allowed:
            assert time.monotonic() < deadline, f"User {user} still allowed {timeout:.0f} s after its bindings went"
            time.sleep(0.05)

    def create_many(self, path: str, objects: list[dict], threads: int = 16, user: str = "admin") -> None:
        """POST every object to `path` (a collection) as `user`, from `threads` keep-alive
        connections; raises on the first answer that is not 201."""
        ctx = ssl.create_default_context(cafile=str(self.dir / "certs" / "apiserver.crt"))
        host, port = self.url.removeprefix("https://").split(":")
        headers = {"Authorization": f"Bearer {self.tokens[user]}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        bodies = iter([json.dumps(o).encode() for o in objects])
        lock, errors = threading.Lock(), []

        def work() -> None:
            conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=60)
            try:
                while not errors:
                    with lock:
                        body = next(bodies, None)
                    if body is None:
                        return
                    conn.request("POST", path, body=body, headers=headers)
                    resp = conn.getresponse()
                    answer = resp.read()
                    if resp.status != 201:
                        errors.append(f"{resp.status}: {answer[:300]!r}")
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
            finally:
                conn.close()
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        if errors:
            raise RuntimeError(f"create_many {path}: {errors[0]}")

    def _etcd(self, path: str, body: dict) -> dict:
        """etcd's v3 JSON gateway (no etcdctl needed)."""
        req = urllib.request.Request(self.etcd_url + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def compact(self) -> int:
        """Compact etcd at its current revision; returns the revision."""
        revision = int(self._etcd("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
        self._etcd("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def stop(self) -> None:
        """SIGTERM (apiserver first), up to 10 s for a clean exit, then SIGKILL; only the
        processes this object started."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
