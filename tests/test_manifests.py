"""config/kubernetes/ manifests: valid offline against the Kubernetes schemas, RBAC that
covers exactly what the source watches, CRDs that accept Emissary's own YAML."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from edge import cpus
from edge.ratelimit import store as ratelimit_store
from edge.resources.base import RawObject
from edge.supervisor import compile as compiler
from edge.supervisor.endpoints import EndpointBook
from edge.supervisor.main import Options
from edge.supervisor.sources.kubernetes import KubernetesSource, Scope

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "config" / "kubernetes").glob("*.yaml"))
QUICKSTART = ROOT / "tests" / "data" / "emissary-quickstart.yaml"
KUBERNETES_VERSION = "1.30.0"


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the JSON schema of its spec, from crds.yaml."""
    out = {}
    for crd in documents(ROOT / "config" / "kubernetes" / "crds.yaml"):
        for version in crd["spec"]["versions"]:
            out[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = \
                version["schema"]["openAPIV3Schema"]
    return out


def validate_custom(doc: dict) -> None:
    schema = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    jsonschema.validate(doc, schema, cls=jsonschema.Draft4Validator)


def test_there_are_manifests_for_each_way_to_deploy():
    names = {p.name for p in MANIFESTS}
    assert {"crds.yaml", "rbac.yaml", "listener.yaml", "deployment-loadbalancer.yaml",
            "deployment-nodeport.yaml", "daemonset-hostnetwork.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_offline_schema_validation(path):
    docs = documents(path)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("getambassador.io/"):
            validate_custom(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    """The validation above can fail: a typo in a Deployment and a Mapping without service."""
    deployment = next(d for d in documents(ROOT / "config/kubernetes/deployment-loadbalancer.yaml")
                      if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        validate_custom({"apiVersion": "getambassador.io/v3alpha1", "kind": "Mapping",
                         "metadata": {"name": "m"}, "spec": {"prefix": "/"}})


def test_workloads_probe_the_admin_endpoints():
    for name in ("deployment-loadbalancer.yaml", "deployment-nodeport.yaml", "daemonset-hostnetwork.yaml"):
        workload = next(d for d in documents(ROOT / "config/kubernetes" / name) if d["kind"] in ("Deployment",
                                                                                                  "DaemonSet"))
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ambassador/v0/check_ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/ambassador/v0/check_alive"
        if workload["kind"] == "DaemonSet":
            assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    services = {name: next(d for d in documents(ROOT / "config/kubernetes" / name) if d["kind"] == "Service")
                for name in ("deployment-loadbalancer.yaml", "deployment-nodeport.yaml")}
    assert services["deployment-loadbalancer.yaml"]["spec"]["type"] == "LoadBalancer"
    assert services["deployment-nodeport.yaml"]["spec"]["type"] == "NodePort"


def test_rbac_grants_exactly_what_the_kubernetes_source_uses():
    rules = next(d for d in documents(ROOT / "config/kubernetes/rbac.yaml") if d["kind"] == "ClusterRole")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    source = KubernetesSource(None, Scope(), EndpointBook())
    needed = {(r.resource.group, r.resource.plural, verb) for r in source.reflectors for verb in ("list", "watch")}
    needed |= {("networking.k8s.io", "ingresses/status", "patch")}
    assert needed <= granted, needed - granted
    # exactly: no resource is granted that the source does not use, and only reading verbs
    assert {(g, r) for g, r, _ in granted} == {(g, r) for g, r, _ in needed}
    assert {v for _, _, v in granted} <= {"get", "list", "watch", "update", "patch"}
    assert {(g, r) for g, r, v in granted if v in ("update", "patch")} == {("networking.k8s.io", "ingresses/status")}


def test_rbac_only_reads_secrets():
    """edge reads Secrets for TLS (get, list, watch), never writes them, and no Role or
    ClusterRole in any manifest grants "*" (resources or apiGroups)."""
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] in ("Role", "ClusterRole"):
                for rule in doc.get("rules", []):
                    assert "*" not in rule.get("resources", []), (path.name, rule)
                    assert "*" not in rule.get("apiGroups", []), (path.name, rule)
                    assert "*" not in rule.get("verbs", []), (path.name, rule)
                    if "secrets" in rule.get("resources", []):
                        assert set(rule["verbs"]) <= {"get", "list", "watch"}, (path.name, rule)


def test_the_crds_cover_every_kind_the_source_watches():
    kinds = {kind for _, kind in crd_schemas()}
    source = KubernetesSource(None, Scope(), EndpointBook())
    watched = {r.resource.kind for r in source.reflectors if r.resource.group == "getambassador.io"}
    assert watched == kinds


def test_emissary_quickstart_yaml_passes_the_crds_and_compiles_unchanged():
    docs = documents(QUICKSTART)
    for doc in docs:
        validate_custom(doc)
    objects = [RawObject(d["kind"], d["metadata"].get("namespace", "default"), d["metadata"]["name"], "quickstart",
                         d["spec"], {}, d["apiVersion"]) for d in docs]
    table, diags = compiler.compile(objects)
    assert [d for d in diags if d.severity == "error"] == []
    assert [(r.path, t.cluster) for r in table.routes for t in r.targets] == [("/backend/", "cluster_quote_80_default")]
    assert [vh.hostname for vh in table.virtual_hosts] == ["host.example.com"]
    assert [listener.port for listener in table.listeners] == [8080]


# ---- deploy variants ------------------------------------------------------------------------

WORKLOAD_FILES = ("deployment-loadbalancer.yaml", "deployment-nodeport.yaml", "daemonset-hostnetwork.yaml")
DEPLOYMENT_FILES = WORKLOAD_FILES[:2]
SIZES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def workload(name: str) -> dict:
    docs = [d for d in documents(ROOT / "config/kubernetes" / name) if d["kind"] in ("Deployment", "DaemonSet")]
    assert len(docs) == 1, name
    return docs[0]


def quantity(text) -> float:
    """A Kubernetes quantity: "80Mi" -> bytes, "500m" -> 0.5, "2" -> 2."""
    text = str(text)
    if text.endswith("m"):
        return int(text[:-1]) / 1000
    number = text.rstrip("kMGTiE")
    return float(number) * SIZES[text[len(number):]]


def edge_container(pod_spec: dict) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == "edge")


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def listener_ports() -> set[int]:
    return {d["spec"]["port"] for d in documents(ROOT / "config/kubernetes/listener.yaml") if d["kind"] == "Listener"}


# ---- Pod Security Standards -------------------------------------------------------------
# Each control of https://kubernetes.io/docs/concepts/security/pod-security-standards/ as of
# Kubernetes 1.30, one function each, returning the offending fields (empty: the control
# holds). Every control covers containers, initContainers and ephemeralContainers. The
# Windows-only exemptions (spec.os.name: windows) are not modelled: edge runs on Linux, so
# this is stricter than the admission plugin, never looser.

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
CONFINED_SECCOMP = {"RuntimeDefault", "Localhost"}


def containers(spec: dict):
    """(field path, container) of every container, init container and ephemeral container."""
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(key) or []):
            yield f"spec.{key}[{i}]", c


def contexts(spec: dict):
    """(field path, securityContext) of the pod and of every container."""
    yield "spec.securityContext", spec.get("securityContext") or {}
    for where, c in containers(spec):
        yield f"{where}.securityContext", c.get("securityContext") or {}


def host_process(pod):
    return [f"{w}.windowsOptions.hostProcess" for w, sc in contexts(pod["spec"])
            if (sc.get("windowsOptions") or {}).get("hostProcess")]


def host_namespaces(pod):
    return [f"spec.{f}" for f in ("hostNetwork", "hostPID", "hostIPC") if pod["spec"].get(f)]


def privileged_containers(pod):
    return [f"{w}.securityContext.privileged" for w, c in containers(pod["spec"])
            if (c.get("securityContext") or {}).get("privileged")]


def capabilities_baseline(pod):
    return [f"{w}.securityContext.capabilities.add: {cap}" for w, c in containers(pod["spec"])
            for cap in ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
            if cap not in BASELINE_CAPABILITIES]


def host_path_volumes(pod):
    return [f"spec.volumes[{i}].hostPath" for i, v in enumerate(pod["spec"].get("volumes") or []) if "hostPath" in v]


def host_ports(pod):
    return [f"{w}.ports[{i}].hostPort" for w, c in containers(pod["spec"])
            for i, p in enumerate(c.get("ports") or []) if p.get("hostPort")]


def apparmor(pod):
    out = [f"{w}.appArmorProfile.type" for w, sc in contexts(pod["spec"])
           if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost")]
    out += [f"metadata.annotations[{k}]" for k, v in ((pod.get("metadata") or {}).get("annotations") or {}).items()
            if k.startswith("container.apparmor.security.beta.kubernetes.io/")
            and not (v == "runtime/default" or v.startswith("localhost/"))]
    return out


def selinux(pod):
    out = []
    for w, sc in contexts(pod["spec"]):
        options = sc.get("seLinuxOptions") or {}
        if options.get("type") not in SELINUX_TYPES:
            out.append(f"{w}.seLinuxOptions.type")
        out += [f"{w}.seLinuxOptions.{f}" for f in ("user", "role") if options.get(f)]
    return out


def proc_mount(pod):
    return [f"{w}.securityContext.procMount" for w, c in containers(pod["spec"])
            if (c.get("securityContext") or {}).get("procMount") not in (None, "Default")]


def seccomp_baseline(pod):
    return [f"{w}.seccompProfile.type" for w, sc in contexts(pod["spec"])
            if (sc.get("seccompProfile") or {}).get("type") not in (None, *CONFINED_SECCOMP)]


def sysctls(pod):
    return [f"spec.securityContext.sysctls: {s.get('name')}"
            for s in (pod["spec"].get("securityContext") or {}).get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]


def volume_types(pod):
    return [f"spec.volumes[{i}].{kind}" for i, v in enumerate(pod["spec"].get("volumes") or [])
            for kind in v if kind != "name" and kind not in RESTRICTED_VOLUMES]


def privilege_escalation(pod):
    return [f"{w}.securityContext.allowPrivilegeEscalation" for w, c in containers(pod["spec"])
            if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False]


def running_as_non_root(pod):
    """true at the pod level (containers may leave it unset), or on every container; false nowhere."""
    pod_level = (pod["spec"].get("securityContext") or {}).get("runAsNonRoot")
    out = ["spec.securityContext.runAsNonRoot"] if pod_level is False else []
    for w, c in containers(pod["spec"]):
        value = (c.get("securityContext") or {}).get("runAsNonRoot")
        if value is False or (value is None and pod_level is not True):
            out.append(f"{w}.securityContext.runAsNonRoot")
    return out


def running_as_non_root_user(pod):
    return [f"{w}.runAsUser" for w, sc in contexts(pod["spec"]) if sc.get("runAsUser") == 0]


def seccomp_restricted(pod):
    """RuntimeDefault or Localhost at the pod level (containers may leave it unset), or on every container."""
    pod_level = ((pod["spec"].get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    out = ["spec.securityContext.seccompProfile.type"] if pod_level not in (None, *CONFINED_SECCOMP) else []
    for w, c in containers(pod["spec"]):
        value = ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        if value not in (None, *CONFINED_SECCOMP) or (value is None and pod_level not in CONFINED_SECCOMP):
            out.append(f"{w}.securityContext.seccompProfile.type")
    return out


def capabilities_restricted(pod):
    out = []
    for w, c in containers(pod["spec"]):
        caps = (c.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{w}.securityContext.capabilities.drop")
        out += [f"{w}.securityContext.capabilities.add: {cap}" for cap in caps.get("add") or []
                if cap != "NET_BIND_SERVICE"]
    return out


PSS_CONTROLS = {
    "baseline": {"HostProcess": host_process, "Host Namespaces": host_namespaces,
                 "Privileged Containers": privileged_containers, "Capabilities": capabilities_baseline,
                 "HostPath Volumes": host_path_volumes, "Host Ports": host_ports, "AppArmor": apparmor,
                 "SELinux": selinux, "/proc Mount Type": proc_mount, "Seccomp": seccomp_baseline,
                 "Sysctls": sysctls},
    "restricted": {"Volume Types": volume_types, "Privilege Escalation": privilege_escalation,
                   "Running as Non-root": running_as_non_root, "Running as Non-root user": running_as_non_root_user,
                   "Seccomp": seccomp_restricted, "Capabilities": capabilities_restricted},
}


def pss_violations(pod: dict, level: str = "restricted") -> dict[str, list[str]]:
    """{"baseline/Host Ports": [fields], ...} for every control of `level` (restricted includes
    baseline) that `pod` (a pod template: metadata and spec) breaks."""
    levels = ("baseline",) if level == "baseline" else ("baseline", "restricted")
    found = {f"{lv}/{name}": check(pod) for lv in levels for name, check in PSS_CONTROLS[lv].items()}
    return {k: v for k, v in found.items() if v}


def admitted_pod(workload_doc: dict) -> dict:
    """The pod template as the API server stores it, which is what admission checks: with
    hostNetwork, every port's hostPort defaults to its containerPort."""
    pod = copy.deepcopy(workload_doc["spec"]["template"])
    if pod["spec"].get("hostNetwork"):
        for _, c in containers(pod["spec"]):
            for port in c.get("ports") or []:
                port.setdefault("hostPort", port["containerPort"])
    return pod


@pytest.mark.parametrize("name", DEPLOYMENT_FILES)
def test_the_deployments_pass_pod_security_restricted(name):
    assert pss_violations(admitted_pod(workload(name)), "restricted") == {}


def test_the_hostnetwork_daemonset_breaks_only_host_namespaces_and_host_ports():
    """hostNetwork is the point of this variant, and implies host ports; every other
    restricted control holds. README tells to label its namespace enforce: privileged."""
    violations = pss_violations(admitted_pod(workload("daemonset-hostnetwork.yaml")), "restricted")
    assert violations.keys() == {"baseline/Host Namespaces", "baseline/Host Ports"}, violations
    assert violations["baseline/Host Namespaces"] == ["spec.hostNetwork"]


def _init_container(pod):
    """A copy of the edge container as an init container (compliant), for mutations of init containers."""
    init = copy.deepcopy(edge_container(pod["spec"]))
    init["name"] = "init"
    for field in ("ports", "readinessProbe", "livenessProbe", "lifecycle"):
        init.pop(field, None)
    pod["spec"]["initContainers"] = [init]
    return init


def _ephemeral_container(pod, **security):
    debug = {"name": "debug", "image": "busybox",
             "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, **security}}
    pod["spec"]["ephemeralContainers"] = [debug]
    return debug


def _sc(pod):
    return pod["spec"]["securityContext"]


def _csc(pod):
    return edge_container(pod["spec"])["securityContext"]


# (id, mutation of a pod that passes restricted, the controls it must break, exactly)
MUTATIONS = [
    ("hostprocess-pod", lambda p: _sc(p).update(windowsOptions={"hostProcess": True}), {"baseline/HostProcess"}),
    ("hostprocess-container", lambda p: _csc(p).update(windowsOptions={"hostProcess": True}),
     {"baseline/HostProcess"}),
    ("hostpid", lambda p: p["spec"].update(hostPID=True), {"baseline/Host Namespaces"}),
    ("hostipc", lambda p: p["spec"].update(hostIPC=True), {"baseline/Host Namespaces"}),
    ("privileged-ephemeral", lambda p: _ephemeral_container(p, privileged=True), {"baseline/Privileged Containers"}),
    ("privileged", lambda p: _csc(p).update(privileged=True), {"baseline/Privileged Containers"}),
    ("cap-sys-admin", lambda p: _csc(p)["capabilities"].update(add=["SYS_ADMIN"]),
     {"baseline/Capabilities", "restricted/Capabilities"}),
    ("cap-sys-admin-init", lambda p: _init_container(p)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
     {"baseline/Capabilities", "restricted/Capabilities"}),
    ("cap-chown", lambda p: _csc(p)["capabilities"].update(add=["CHOWN"]), {"restricted/Capabilities"}),
    ("no-drop-all-init", lambda p: _init_container(p)["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
     {"restricted/Capabilities"}),
    ("no-drop-all-ephemeral", lambda p: _ephemeral_container(p)["securityContext"].pop("capabilities"),
     {"restricted/Capabilities"}),
    ("hostpath", lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
     {"baseline/HostPath Volumes", "restricted/Volume Types"}),
    ("hostport", lambda p: edge_container(p["spec"])["ports"][0].update(hostPort=8080), {"baseline/Host Ports"}),
    ("apparmor-unconfined", lambda p: _sc(p).update(appArmorProfile={"type": "Unconfined"}), {"baseline/AppArmor"}),
    ("apparmor-annotation", lambda p: p["metadata"].setdefault("annotations", {}).update(
        {"container.apparmor.security.beta.kubernetes.io/edge": "unconfined"}), {"baseline/AppArmor"}),
    ("selinux-type", lambda p: _csc(p).update(seLinuxOptions={"type": "spc_t"}), {"baseline/SELinux"}),
    ("selinux-user", lambda p: _sc(p).update(seLinuxOptions={"user": "system_u"}), {"baseline/SELinux"}),
    ("procmount", lambda p: _csc(p).update(procMount="Unmasked"), {"baseline//proc Mount Type"}),
    ("seccomp-unconfined-pod", lambda p: _sc(p).update(seccompProfile={"type": "Unconfined"}),
     {"baseline/Seccomp", "restricted/Seccomp"}),
    ("seccomp-unconfined-container", lambda p: _csc(p).update(seccompProfile={"type": "Unconfined"}),
     {"baseline/Seccomp", "restricted/Seccomp"}),
    ("seccomp-unset", lambda p: _sc(p).pop("seccompProfile"), {"restricted/Seccomp"}),
    ("sysctl-unsafe", lambda p: _sc(p).update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
     {"baseline/Sysctls"}),
    ("volume-nfs", lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
     {"restricted/Volume Types"}),
    ("escalation-unset", lambda p: _csc(p).pop("allowPrivilegeEscalation"), {"restricted/Privilege Escalation"}),
    ("escalation-init", lambda p: _init_container(p)["securityContext"].update(allowPrivilegeEscalation=True),
     {"restricted/Privilege Escalation"}),
    ("nonroot-unset", lambda p: _sc(p).pop("runAsNonRoot"), {"restricted/Running as Non-root"}),
    ("nonroot-false-container", lambda p: _csc(p).update(runAsNonRoot=False), {"restricted/Running as Non-root"}),
    ("uid-0-pod", lambda p: _sc(p).update(runAsUser=0), {"restricted/Running as Non-root user"}),
    ("uid-0-ephemeral", lambda p: _ephemeral_container(p, runAsUser=0), {"restricted/Running as Non-root user"}),
    # allowed by restricted: the checker is not stricter than the standard either
    ("cap-net-bind-service", lambda p: _csc(p)["capabilities"].update(add=["NET_BIND_SERVICE"]), set()),
    ("sysctl-safe", lambda p: _sc(p).update(sysctls=[{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]),
     set()),
    ("seccomp-localhost-container", lambda p: _csc(p).update(
        seccompProfile={"type": "Localhost", "localhostProfile": "edge.json"}), set()),
    ("apparmor-runtime-default", lambda p: _sc(p).update(appArmorProfile={"type": "RuntimeDefault"}), set()),
    ("nonroot-on-every-container", lambda p: (_sc(p).pop("runAsNonRoot"), _csc(p).update(runAsNonRoot=True)), set()),
]


def test_every_pod_security_control_has_a_mutation_that_breaks_it():
    broken = set().union(*(expected for _, _, expected in MUTATIONS))
    assert broken == {f"{lv}/{name}" for lv, controls in PSS_CONTROLS.items() for name in controls}


@pytest.mark.parametrize("mutate, expected", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_the_pod_security_check_catches_a_pod_that_breaks_a_control(mutate, expected):
    pod = admitted_pod(workload("deployment-loadbalancer.yaml"))
    assert pss_violations(pod) == {}
    mutate(pod)
    assert pss_violations(pod).keys() == expected
    baseline_only = {k for k in expected if k.startswith("baseline/")}
    assert pss_violations(pod, "baseline").keys() == baseline_only


# ---- what the pod needs to run edge ------------------------------------------------------

def _default(field: str):
    return {f.name: f.default for f in dataclasses.fields(Options)}[field]


def workers_bound(container: dict) -> int:
    """How many workers edge starts in this container: EDGE_WORKERS, else the CPU limit
    rounded up (edge.cpus.usable, on a node of any size)."""
    env = env_of(container)
    if "EDGE_WORKERS" in env:
        return int(env["EDGE_WORKERS"])
    return cpus.usable(1 << 16, quantity(container["resources"]["limits"]["cpu"]))


def volume_at(pod_spec: dict, container: dict, path: str) -> dict:
    mount = next(m for m in container.get("volumeMounts", []) if m["mountPath"] == path)
    return next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_the_root_filesystem_is_read_only_and_edge_writes_to_emptydirs(name):
    """edge writes only to /dev/shm (its segments); /tmp is there for libraries (tempfile),
    PYTHONDONTWRITEBYTECODE keeps Python from trying to write __pycache__."""
    spec = workload(name)["spec"]["template"]["spec"]
    for _, c in containers(spec):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    edge = edge_container(spec)
    assert env_of(edge)["PYTHONDONTWRITEBYTECODE"] == "1"
    shm, tmp = volume_at(spec, edge, "/dev/shm"), volume_at(spec, edge, "/tmp")
    assert shm["emptyDir"]["medium"] == "Memory" and "sizeLimit" in shm["emptyDir"]
    assert "emptyDir" in tmp and "sizeLimit" in tmp["emptyDir"]


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_shm_and_memory_are_sized_for_the_table_cap_and_the_counters(name):
    """/dev/shm holds the routes segments, the rate-limit counters and the stats cells.

    Routes (edge/supervisor/publish.py): a table over EDGE_MAX_TABLE_MB (M) is refused; a
    segment is two slots of capacity C, a table that does not fit makes a new segment with
    C' = max(2 * needed, 2 * C) <= 2M, and retired segments stay until shutdown. Each C is at
    most half the next, so all segments together are 2 * sum(C) <= 4 * C_last <= 8M.
    Counters: edge.ratelimit.store.segment_size(2 * workers, buckets). Stats cells and segment
    headers: far under the 1 MiB slack.

    Memory: tmpfs pages count against the container's memory limit, and each process holds
    decoded tables: measured, a 16.2 MiB table (78,000 Mappings) takes 238 MiB decoded in a
    fresh process, so 16 bytes per encoded byte is allowed per table. A worker may hold two
    (a request pins the old one across a swap), the supervisor one; plus 48 MiB per process
    for the interpreter and libraries."""
    spec = workload(name)["spec"]["template"]["spec"]
    edge = edge_container(spec)
    env = env_of(edge)
    workers = workers_bound(edge)
    max_table = quantity(env["EDGE_MAX_TABLE_MB"] + "Mi")  # stated, not the 256 MiB default
    buckets = int(env.get("EDGE_RATELIMIT_BUCKETS", _default("ratelimit_buckets")))
    shm_needed = 8 * max_table + ratelimit_store.segment_size(2 * workers, buckets) + (1 << 20)
    shm_limit = quantity(volume_at(spec, edge, "/dev/shm")["emptyDir"]["sizeLimit"])
    assert shm_limit >= shm_needed, (shm_limit / 2**20, shm_needed / 2**20)
    memory = quantity(edge["resources"]["limits"]["memory"])
    processes_need = (workers + 1) * (48 << 20) + (2 * workers + 1) * 16 * max_table
    assert memory >= shm_limit + processes_need, (memory / 2**20, (shm_limit + processes_need) / 2**20)
    assert quantity(edge["resources"]["requests"]["memory"]) <= memory


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_a_cpu_limit_bounds_the_workers(name):
    """Without limits.cpu (or EDGE_WORKERS) edge starts a worker per node CPU, and neither the
    counters nor the memory above have a bound."""
    edge = edge_container(workload(name)["spec"]["template"]["spec"])
    assert "cpu" in edge["resources"]["limits"]
    assert workers_bound(edge) == 2


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_the_pod_drains_before_it_is_killed(name):
    """preStop sleeps (the pod leaves the endpoints while it still serves), then SIGTERM
    drains for up to EDGE_DRAIN_TIMEOUT; the kubelet's SIGKILL comes terminationGracePeriodSeconds
    after the start of preStop."""
    spec = workload(name)["spec"]["template"]["spec"]
    edge = edge_container(spec)
    command = edge["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    drain = float(env_of(edge)["EDGE_DRAIN_TIMEOUT"])  # stated, so the numbers can be compared
    assert spec["terminationGracePeriodSeconds"] > float(command[1]) + drain


def admin_port(container: dict) -> int:
    return int(env_of(container)["EDGE_ADMIN_ADDR"].rsplit(":", 1)[1])


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_pods_that_prometheus_can_reach_carry_the_scrape_annotations(name):
    """The admin server (with /metrics) on the pod IP: annotated. On loopback (the hostNetwork
    DaemonSet keeps it off the node's network): no annotations, which would only make a
    scrape target that always fails."""
    template = workload(name)["spec"]["template"]
    edge = edge_container(template["spec"])
    host = env_of(edge)["EDGE_ADMIN_ADDR"].rsplit(":", 1)[0]
    annotations = {k: v for k, v in (template["metadata"].get("annotations") or {}).items()
                   if k.startswith("prometheus.io/")}
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        assert annotations == {} and name == "daemonset-hostnetwork.yaml"
    else:
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(admin_port(edge)),
                               "prometheus.io/path": "/metrics"}
    if name in DEPLOYMENT_FILES:
        assert annotations  # every Deployment is scraped


@pytest.mark.parametrize("name", DEPLOYMENT_FILES)
def test_each_deployment_has_a_pod_disruption_budget(name):
    deployment = workload(name)
    pdbs = [d for d in documents(ROOT / "config/kubernetes" / name) if d["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == 1
    pdb = pdbs[0]
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_daemonset_paces_updates_itself_instead_of_a_pdb():
    """A PDB is not meaningful for a DaemonSet (its pods are bound to their nodes, and drains
    leave them); its rollouts are paced by updateStrategy."""
    name = "daemonset-hostnetwork.yaml"
    assert not [d for d in documents(ROOT / "config/kubernetes" / name) if d["kind"] == "PodDisruptionBudget"]
    strategy = workload(name)["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 1


def test_no_service_exposes_the_admin_port():
    for path in MANIFESTS:
        docs = documents(path)
        admin = {}
        for d in docs:
            if d["kind"] in ("Deployment", "DaemonSet"):
                edge = edge_container(d["spec"]["template"]["spec"])
                admin = {admin_port(edge)} | {p["name"] for p in edge["ports"] if p["containerPort"] == admin_port(edge)}
        for service in (d for d in docs if d["kind"] == "Service"):
            for port in service["spec"]["ports"]:
                exposed = {port["port"], port.get("targetPort", port["port"])}
                assert not exposed & ({8877} | admin), (path.name, port)


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_ports_are_unprivileged_and_no_capability_is_added_for_them(name):
    """The traffic port is listener.yaml's, 8080: a containerPort, and with nothing below 1024
    bound, no capability is added (NET_BIND_SERVICE would be, only for such a port)."""
    edge = edge_container(workload(name)["spec"]["template"]["spec"])
    declared = {p["containerPort"] for p in edge["ports"]}
    assert listener_ports() <= declared
    bound = declared | listener_ports() | {admin_port(edge)}
    added = set(edge["securityContext"]["capabilities"].get("add") or [])
    if min(bound) < 1024:
        assert added == {"NET_BIND_SERVICE"}
    else:
        assert added == set()
    assert min(bound) >= 1024  # what the manifests do today: see README "On Kubernetes"


# ---- CRDs beside Emissary ----------------------------------------------------------------

# The CRDs Emissary-ingress 3.x (OSS) installs: emissary-ingress/emissary
# manifests/emissary/emissary-crds.yaml.in, the same 14 in every tag v3.0.0 ... v3.10.0
# (all stored as v2 with a conversion webhook, but Listener: v3alpha1 only). No RateLimit.
EMISSARY_3_CRDS = {f"{plural}.getambassador.io" for plural in (
    "authservices", "consulresolvers", "devportals", "hosts", "kubernetesendpointresolvers",
    "kubernetesserviceresolvers", "listeners", "logservices", "mappings", "modules", "ratelimitservices",
    "tcpmappings", "tlscontexts", "tracingservices")}


def test_crds_beside_emissary_are_ours_that_emissary_lacks_and_the_same_definitions():
    ours = {d["metadata"]["name"]: d for d in documents(ROOT / "config/kubernetes/crds.yaml")}
    beside = {d["metadata"]["name"]: d for d in documents(ROOT / "config/kubernetes/crds-beside-emissary.yaml")}
    assert all(d["kind"] == "CustomResourceDefinition" for d in beside.values())
    assert beside.keys() == ours.keys() - EMISSARY_3_CRDS == {"ratelimits.getambassador.io"}
    for crd_name, crd in beside.items():
        assert crd == ours[crd_name]  # same group, names, versions and schemas


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_readme_says_how_to_deploy_on_kubernetes():
    section = readme_section("On Kubernetes")
    for needed in ("crds.yaml", "crds-beside-emissary.yaml", "pod-security.kubernetes.io/enforce: privileged",
                   "daemonset-hostnetwork.yaml", "EDGE_MAX_TABLE_MB", "PodDisruptionBudget"):
        assert needed in section, needed
