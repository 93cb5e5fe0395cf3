"""The Host resource: a hostname (DNS glob) and which Mappings attach to it."""

from __future__ import annotations

from dataclasses import dataclass

from edge.resources.base import Invalid, RawObject, opt_dict, opt_str, str_labels

# Accepted now, served by the TLS issue: each present one gets a notice.
LATER_FIELDS = ("tlsSecret", "tls", "tlsContext", "acmeProvider", "requestPolicy", "previewUrl")


@dataclass(frozen=True)
class HostSpec:
    hostname: str
    selector: dict[str, str] | None  # mappingSelector.matchLabels; None when absent


def parse_host(obj: RawObject) -> HostSpec:
    hostname = opt_str(obj.spec, "hostname", "*")
    if not hostname or " " in hostname:
        raise Invalid("spec.hostname", f"must be a DNS name or glob, got {hostname!r}")
    selector = None
    if "mappingSelector" in obj.spec:
        ms = opt_dict(obj.spec, "mappingSelector")
        selector = str_labels(ms.get("matchLabels"), "spec.mappingSelector.matchLabels")
    return HostSpec(hostname.lower(), selector)
