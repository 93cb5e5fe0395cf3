"""The Host resource: a hostname (DNS glob), which Mappings attach to it, its TLS
(tlsSecret, tls / tlsContext) and what insecure requests get (requestPolicy.insecure).

Emissary's rules (python/ambassador/ir/irhost.py): a Host terminates TLS only when
`tlsSecret` names a Secret; `tls` (inline settings) or `tlsContext` (a TLSContext by name)
refine it, never both; without `tlsSecret` they do nothing. Resolving the Secret and the
TLSContext is compile's (edge.supervisor.compile.compile_tls).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.resources.base import Invalid, RawObject, _type_name, opt_dict, opt_int, opt_str, str_labels
from edge.resources.tls import TLSSettings, normalise, parse_settings

INSECURE_ACTIONS = ("Redirect", "Route", "Reject")
HOST_TLS_KEYS = frozenset({"ca_secret", "cert_required", "min_tls_version", "max_tls_version", "cipher_suites",
                           "ecdh_curves", "alpn_protocols", "redirect_cleartext_from", "sni", "cert_chain_file",
                           "private_key_file", "cacert_chain_file", "crl_secret", "crl_file"})
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"  # the CRD's default authority
NO_ACME = ("edge runs no ACME client (neither does Emissary-ingress: only Ambassador Edge Stack does)")


@dataclass(frozen=True)
class HostSpec:
    hostname: str
    selector: dict[str, str] | None  # mappingSelector.matchLabels; None when absent
    tls_secret: tuple[str, str] | None = None  # (namespace, name) of tlsSecret
    tls_context: str | None = None  # tlsContext.name, in the Host's namespace
    tls: TLSSettings | None = None  # the inline tls settings
    insecure_action: str | None = None  # requestPolicy.insecure.action as given; None: the default
    additional_port: int = -1  # requestPolicy.insecure.additionalPort
    # (severity, field, message) the compiler reports for this Host
    notes: tuple[tuple[str, str, str], ...] = ()


def _ref_name(value, field: str) -> str | None:
    if not isinstance(value, dict):
        raise Invalid(field, f"must be a mapping with a name, not {_type_name(value)}")
    name = opt_str(value, "name", None, field)
    return name.strip() if name and name.strip() else None


def parse_host(obj: RawObject) -> HostSpec:
    spec = obj.spec
    hostname = opt_str(spec, "hostname", "*")
    if not hostname or " " in hostname:
        raise Invalid("spec.hostname", f"must be a DNS name or glob, got {hostname!r}")
    selector = None
    if "mappingSelector" in spec:
        ms = opt_dict(spec, "mappingSelector")
        selector = str_labels(ms.get("matchLabels"), "spec.mappingSelector.matchLabels")
    notes: list[tuple[str, str, str]] = []

    tls_secret = None
    if spec.get("tlsSecret") is not None:
        name = _ref_name(spec["tlsSecret"], "spec.tlsSecret")
        namespace = opt_str(spec["tlsSecret"], "namespace", None, "spec.tlsSecret")
        if name is None:
            notes.append(("warning", "spec.tlsSecret.name", "absent: no TLS for this Host (as in Emissary)"))
        else:
            tls_secret = (namespace or obj.namespace, name)

    tls_context = None
    if spec.get("tlsContext") is not None:
        tls_context = _ref_name(spec["tlsContext"], "spec.tlsContext")
        if tls_context is None:
            raise Invalid("spec.tlsContext.name", "is required")
    tls = None
    if spec.get("tls") is not None:
        if not isinstance(spec["tls"], dict):
            raise Invalid("spec.tls", f"must be a mapping, not {_type_name(spec['tls'])}")
        inline = normalise(spec["tls"], "spec.tls")
        tls, warnings = parse_settings(inline, "spec.tls")
        notes += warnings
        notes += [("warning", f"spec.tls.{k}", "not a Host tls field edge knows; ignored")
                  for k in sorted(set(inline) - HOST_TLS_KEYS, key=str)]
    if tls_context is not None and tls is not None:
        # Emissary: "both TLSContext name and TLS config specified, ignoring Host"
        raise Invalid("spec.tlsContext", "tls and tlsContext may not both be given")
    if tls_secret is None and (tls_context is not None or tls is not None):
        which = "tlsContext" if tls_context is not None else "tls"
        notes.append(("warning", f"spec.{which}", f"{which} without tlsSecret: no TLS for this Host (Emissary "
                      "terminates TLS for a Host only when tlsSecret names a Secret); ignored"))

    action, port = None, -1
    if spec.get("requestPolicy") is not None:
        policy = opt_dict(spec, "requestPolicy")
        insecure = opt_dict(policy, "insecure", "spec.requestPolicy")
        for key in sorted(set(policy) - {"insecure"}, key=str):
            notes.append(("warning", f"spec.requestPolicy.{key}", "not a requestPolicy field; ignored"))
        for key in sorted(set(insecure) - {"action", "additionalPort"}, key=str):
            notes.append(("warning", f"spec.requestPolicy.insecure.{key}", "not a requestPolicy.insecure "
                          "field; ignored"))
        given = opt_str(insecure, "action", None, "spec.requestPolicy.insecure")
        if given is not None:
            action = next((a for a in INSECURE_ACTIONS if a.lower() == given.lower()), None)
            if action is None:
                raise Invalid("spec.requestPolicy.insecure.action",
                              f"must be one of {', '.join(INSECURE_ACTIONS)}, got {given!r}")
        port = opt_int(insecure, "additionalPort", -1, "spec.requestPolicy.insecure", minimum=-1, maximum=65535)
        if port == 0:
            raise Invalid("spec.requestPolicy.insecure.additionalPort", "must be a port (1-65535), or -1 for none")

    if spec.get("acmeProvider") is not None:
        acme = opt_dict(spec, "acmeProvider")
        authority = opt_str(acme, "authority", None, "spec.acmeProvider") or LETS_ENCRYPT
        if authority.lower() != "none":
            if tls_secret is None:
                notes.append(("warning", "spec.acmeProvider", f"{NO_ACME}: no certificate is requested from "
                              f"{authority}, so this Host has no TLS; name a Secret in tlsSecret, or set "
                              "acmeProvider.authority: none"))
            else:
                notes.append(("notice", "spec.acmeProvider", f"{NO_ACME}: the certificate in tlsSecret is served "
                              "as it is and never renewed by edge"))
    if spec.get("previewUrl") is not None:
        notes.append(("notice", "spec.previewUrl", "Service Preview URLs are not supported (Emissary ignores "
                      "them too); ignored"))
    return HostSpec(hostname.lower(), selector, tls_secret, tls_context, tls, action, port, tuple(notes))
