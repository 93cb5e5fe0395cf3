"""The Kubernetes source and Secrets (issue 18), against the fake API server: Secrets of
type kubernetes.io/tls and Opaque are listed and watched (one field selector each), kept as
their TLS keys only, compiled into certificates; RBAC that forbids Secrets leaves the rest
served, without TLS, with the reason in the statistics and one warning."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

from edge.supervisor import compile as compiler
from tests.certgen import b64, pki
from tests.kubeapply import ambassador
from tests.test_kubewatch import kind_stats, logged, names, running, until, until_sent

TLS = "Secret (type=kubernetes.io/tls)"
OPAQUE = "Secret (type=Opaque)"


def secret(name: str, type_: str, data: dict, namespace: str = "default") -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": {"name": name, "namespace": namespace},
            "data": {k: b64(v) for k, v in data.items()}}


def secret_queries(fake) -> set[str]:
    out = set()
    for method, path in list(fake.requests):
        url = urlsplit(path)
        if method == "GET" and url.path.endswith("/secrets"):
            out.add(parse_qs(url.query).get("fieldSelector", [""])[-1])
    return out


async def test_tls_and_opaque_secrets_are_watched_and_kept_as_their_tls_keys_only(fake_kube):
    certs = pki()
    kind = fake_kube.kind("Secret")
    fake_kube.create(kind, "default", secret("a-cert", "kubernetes.io/tls",
                                             {"tls.crt": certs.leaf.cert_pem, "tls.key": certs.leaf.key_pem}))
    fake_kube.create(kind, "default", secret("ca", "Opaque", {"tls.crt": certs.ca.cert_pem, "password": "hunter2"}))
    fake_kube.create(kind, "default", secret("app", "Opaque", {"password": "hunter2"}))
    fake_kube.create(kind, "default", secret("pull", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": "{}"}))
    fake_kube.create(fake_kube.kind("Host"), "default", ambassador("Host", "a", {
        "hostname": "a.example.com", "tlsSecret": {"name": "a-cert"}, "tls": {"ca_secret": "ca"}}))
    async with running(fake_kube) as (source, latest):
        snapshot = await until_sent(latest, lambda s: names(s, "Secret") == ["a-cert", "ca"])
        assert secret_queries(fake_kube) == {"type=kubernetes.io/tls", "type=Opaque"}
        assert kind_stats(source, TLS)["objects"] == 1 and kind_stats(source, OPAQUE)["objects"] == 2
        ca = next(o for o in snapshot.objects if o.name == "ca")
        assert ca.spec == {"type": "Opaque", "data": {"tls.crt": b64(certs.ca.cert_pem)}}  # no password
        assert all("password" not in str(r) for r in source.reflectors[-1].items.values())
        table, diags = compiler.compile(snapshot.objects)
        assert [d for d in diags if d.severity == "error"] == []
        assert [c.name for c in table.certificates] == ["default/a-cert", "default/ca"]

        # a rotated Secret is a new snapshot; a deleted one is gone, and the Host with it
        fake_kube.replace(kind, ("default", "a-cert"), secret("a-cert", "kubernetes.io/tls", {
            "tls.crt": certs.wildcard.cert_pem, "tls.key": certs.wildcard.key_pem}))
        snapshot = await until_sent(latest, lambda s: any(
            o.name == "a-cert" and o.spec["data"]["tls.crt"] == b64(certs.wildcard.cert_pem) for o in s.objects))
        fake_kube.delete(kind, ("default", "a-cert"))
        snapshot = await until_sent(latest, lambda s: names(s, "Secret") == ["ca"])
        table, diags = compiler.compile(snapshot.objects)
        assert [(d.name, d.field) for d in diags if d.severity == "error"] == [("a", "spec.tlsSecret.name")]


async def test_forbidden_secrets_leave_the_rest_served_with_a_warning(fake_kube, caplog):
    caplog.set_level(logging.INFO, logger="edge.kubernetes")
    fake_kube.forbid(fake_kube.kind("Secret"))
    fake_kube.create(fake_kube.kind("Mapping"), "default", ambassador("Mapping", "m", {"prefix": "/", "service": "x"}))
    async with running(fake_kube, unavailable_retry=0.05) as (source, latest):
        assert names(await latest(), "Mapping") == ["m"]  # nothing waits for the Secrets
        unavailable = source.unavailable()
        assert set(unavailable) == {TLS, OPAQUE}
        assert all(reason.startswith("forbidden (403): secrets is forbidden") for reason in unavailable.values())
        await until(lambda: logged(caplog, logging.WARNING, "secrets:") == 2)  # one per reflector, once
        fake_kube.create(fake_kube.kind("Secret"), "default", secret("late", "kubernetes.io/tls", {"tls.crt": "x"}))
        fake_kube.allow(fake_kube.kind("Secret"))
        await until_sent(latest, lambda s: names(s, "Secret") == ["late"])
        await until(lambda: not source.unavailable())
