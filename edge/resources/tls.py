"""TLS inputs: Secrets (key material), TLSContexts and the TLS settings a Host or
TLSContext carries, validated the way Emissary-ingress reads them, for termination and for
origination (a Mapping's `tls` naming a TLSContext). Pure: no I/O.

- A Secret is a core `v1` Secret as `kubectl create secret tls` writes it (`type:
  kubernetes.io/tls`, base64 `data` `tls.crt` / `tls.key`; `stringData` too). A server
  certificate needs `tls.crt` (the chain, leaf first) and `tls.key` that matches the leaf;
  a CA (`ca_secret`) needs only `tls.crt` (Emissary's key) or `ca.crt`, of any type. The
  PEM is parsed with `cryptography`, once per distinct content (memoised).
- Secret references are Emissary's: a Host's `tlsSecret: {name, namespace}` is a
  Kubernetes reference; a TLSContext's `secret` / `ca_secret` (and a Host's
  `tls.ca_secret`) is `name` or, with `secret_namespacing` (the default), `name.namespace`.
- TLS versions are spelled `v1.0` .. `v1.3`; `alpn_protocols` is Emissary's
  comma-separated string (a list is taken too); cipher suites and curves are checked
  against the OpenSSL the workers use.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from edge.resources.base import Invalid, RawObject, _type_name, opt_bool, opt_int

SECRET_TYPES = ("kubernetes.io/tls", "Opaque")
TLS_VERSIONS = ("v1.0", "v1.1", "v1.2", "v1.3")
# Envoy's (BoringSSL's) curve names -> OpenSSL's, which the workers' ssl module takes
CURVE_ALIASES = {"P-256": "prime256v1", "secp256r1": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}
_DATA_KEYS = ("tls.crt", "tls.key", "ca.crt", "cert_required")


# ---- Secrets -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SecretMaterial:
    """What a Secret holds that TLS can use, decoded (PEM text); None when absent."""

    ref: str  # "namespace/name"
    type: str
    tls_crt: str | None
    tls_key: str | None
    ca_crt: str | None
    cert_required: bool | None  # Emissary reads a `cert_required` key of a CA Secret


def secret_spec(doc: dict) -> dict:
    """The part of a Secret document compile reads (its `type`, `data`, `stringData`), with
    only the keys TLS uses, so that nothing else a Secret holds is kept."""
    out = {"type": doc.get("type", "Opaque")}
    for part in ("data", "stringData"):
        value = doc.get(part)
        if isinstance(value, dict):
            out[part] = {k: v for k, v in value.items() if k in _DATA_KEYS}
        elif value is not None:
            out[part] = value  # wrong shape: read_secret says so
    return out


def _decode(value, field: str) -> str:
    if not isinstance(value, str):
        raise Invalid(field, f"must be a string, not {_type_name(value)}")
    if value.lstrip().startswith("-----BEGIN"):
        return value  # PEM where base64 was expected: Emissary takes it as it is, so does edge
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", value), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(field, "is not valid base64") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(field, "does not decode to PEM text (not UTF-8)") from None


def read_secret(obj: RawObject) -> SecretMaterial:
    """A Secret's TLS material. Raises Invalid naming the Secret's field."""
    spec = obj.spec
    kind = spec.get("type") or "Opaque"
    if kind not in SECRET_TYPES:
        raise Invalid("type", f"Secrets of type {kind!r} are not read; use {' or '.join(SECRET_TYPES)}")
    values: dict[str, str] = {}
    for part in ("data", "stringData"):
        section = spec.get(part)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise Invalid(part, f"must be a mapping, not {_type_name(section)}")
        for key in _DATA_KEYS:
            if key in section:
                values[key] = _decode(section[key], f"{part}.{key}") if part == "data" else \
                    _plain(section[key], f"{part}.{key}")  # stringData wins over data, as in Kubernetes
    required = values.get("cert_required")
    return SecretMaterial(f"{obj.namespace}/{obj.name}", kind, values.get("tls.crt") or None,
                          values.get("tls.key") or None, values.get("ca.crt") or None,
                          None if required is None else required.strip().lower() == "true")


def _plain(value, field: str) -> str:
    if not isinstance(value, str):
        raise Invalid(field, f"must be a string, not {_type_name(value)}")
    return value


@lru_cache(maxsize=4096)
def _chain_problem(chain_pem: str) -> str:
    """"" when `chain_pem` is one or more PEM certificates, else what is wrong."""
    if "-----BEGIN" not in chain_pem:
        return "is not PEM"
    try:
        x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as exc:
        return f"holds no readable PEM certificate ({_short(exc)})"
    return ""


@lru_cache(maxsize=4096)
def _pair_problem(chain_pem: str, key_pem: str) -> tuple[str, str]:
    """("", "") when the key is an unencrypted PEM private key matching the chain's first
    certificate, else (which key, what is wrong)."""
    problem = _chain_problem(chain_pem)
    if problem:
        return "tls.crt", problem
    if "-----BEGIN" not in key_pem:
        return "tls.key", "is not PEM"
    try:
        # RSA key validation (checking the primes) costs ~35 ms a 2048-bit key: 1,000 Hosts would
        # stall a compile for half a minute. The match with the certificate is checked below.
        key = serialization.load_pem_private_key(key_pem.encode(), password=None,
                                                 unsafe_skip_rsa_key_validation=True)
    except TypeError:
        return "tls.key", "is encrypted (a passphrase is needed): store the key unencrypted"
    except (ValueError, UnsupportedAlgorithm) as exc:
        return "tls.key", f"is not a readable PEM private key ({_short(exc)})"
    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        matches = key.public_key().public_bytes(*spki) == leaf.public_key().public_bytes(*spki)
    except (ValueError, TypeError) as exc:
        return "tls.key", f"cannot be compared with the certificate ({_short(exc)})"
    if not matches:
        return "tls.key", "does not match the certificate in tls.crt (the first certificate of the chain)"
    return "", ""


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def server_pair(material: SecretMaterial) -> tuple[str, str]:
    """(chain PEM, key PEM) for terminating TLS. Raises Invalid("", message) (the message
    names the Secret's key) when the Secret cannot serve."""
    if material.tls_crt is None:
        raise Invalid("", f"secret {material.ref} has no tls.crt")
    if material.tls_key is None:
        raise Invalid("", f"secret {material.ref} has no tls.key (a certificate alone cannot terminate TLS)")
    which, problem = _pair_problem(material.tls_crt, material.tls_key)
    if problem:
        raise Invalid("", f"secret {material.ref}: {which} {problem}")
    return material.tls_crt, material.tls_key


def client_pair(material: SecretMaterial) -> tuple[str, str]:
    """(chain PEM, key PEM) of a client certificate that TLS origination presents to the
    upstream (a TLSContext's `secret`). Raises Invalid("", message) as server_pair does."""
    if material.tls_crt is None:
        raise Invalid("", f"secret {material.ref} has no tls.crt")
    if material.tls_key is None:
        raise Invalid("", f"secret {material.ref} has no tls.key (Emissary: no private key; a client "
                      "certificate cannot be presented without it)")
    which, problem = _pair_problem(material.tls_crt, material.tls_key)
    if problem:
        raise Invalid("", f"secret {material.ref}: {which} {problem}")
    return material.tls_crt, material.tls_key


def ca_bundle(material: SecretMaterial) -> str:
    """The CA certificates to verify clients against: tls.crt (Emissary's key), else ca.crt."""
    bundle, key = (material.tls_crt, "tls.crt") if material.tls_crt is not None else (material.ca_crt, "ca.crt")
    if bundle is None:
        raise Invalid("", f"secret {material.ref} has neither tls.crt nor ca.crt")
    problem = _chain_problem(bundle)
    if problem:
        raise Invalid("", f"secret {material.ref}: {key} {problem}")
    return bundle


def secret_ref(value: str, namespace: str, namespacing: bool) -> tuple[str, str]:
    """(namespace, name) of an Emissary-style reference: `name`, or `name.namespace` when
    secret_namespacing is on (Emissary splits at the last dot)."""
    if namespacing and "." in value:
        name, namespace = value.rsplit(".", 1)
        return namespace, name
    return namespace, value


# ---- TLS settings (Host.tls, TLSContext) -------------------------------------------------

@dataclass(frozen=True)
class TLSSettings:
    ca_secret: str | None = None  # as written: "name" or "name.namespace"
    cert_required: bool | None = None
    min_version: str = ""
    max_version: str = ""
    cipher_suites: tuple[str, ...] = ()
    ecdh_curves: tuple[str, ...] = ()
    alpn_protocols: tuple[str, ...] = ()


# Emissary's Host.tls takes these camelCase spellings too (irhost.py's camel_snake_map)
CAMEL = {"alpnProtocols": "alpn_protocols", "cipherSuites": "cipher_suites", "ecdhCurves": "ecdh_curves",
         "redirectCleartextFrom": "redirect_cleartext_from", "certRequired": "cert_required",
         "minTlsVersion": "min_tls_version", "maxTlsVersion": "max_tls_version",
         "certChainFile": "cert_chain_file", "privateKeyFile": "private_key_file",
         "cacertChainFile": "cacert_chain_file", "crlSecret": "crl_secret", "crlFile": "crl_file",
         "caSecret": "ca_secret"}
SETTING_KEYS = ("ca_secret", "cert_required", "min_tls_version", "max_tls_version", "cipher_suites",
                "ecdh_curves", "alpn_protocols")
# served without them would mean a different certificate or weaker client checks: refused
REFUSED = {
    "cert_chain_file": "certificates from files are not read by edge; put them in a Secret (secret / tlsSecret)",
    "private_key_file": "keys from files are not read by edge; put them in a Secret (secret / tlsSecret)",
    "cacert_chain_file": "CA certificates from files are not read by edge; put them in a Secret (ca_secret)",
    "crl_secret": "certificate revocation lists are not served by edge yet; without one revoked client "
                  "certificates would be accepted",
    "crl_file": "certificate revocation lists are not served by edge yet; without one revoked client "
                "certificates would be accepted",
}
RCF_WARNING = ("ignored, as by Emissary 2.x and later (which parse it and do nothing): a Listener and the "
               "Host's requestPolicy.insecure say where cleartext is taken and whether it is redirected")
SNI_NOTICE = ("sni is for TLS origination (the server name a Mapping's tls: <TLSContext> sends to the upstream); "
              "a Host terminates TLS, so it is ignored here")


def normalise(spec: dict, path: str) -> dict:
    """Host.tls with Emissary's camelCase spellings turned into the snake_case ones."""
    out = {}
    for key, value in spec.items():
        snake = CAMEL.get(key, key)
        if snake in out:
            raise Invalid(f"{path}.{key}", f"given twice (as {snake} too)")
        out[snake] = value
    return out


def _version(spec: dict, key: str, path: str) -> str:
    value = spec.get(key)
    if value is None or value == "":
        return ""
    if value not in TLS_VERSIONS:
        raise Invalid(f"{path}.{key}", f"must be one of {', '.join(TLS_VERSIONS)}, got {value!r}")
    return value


def _names(spec: dict, key: str, path: str) -> tuple[str, ...]:
    value = spec.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise Invalid(f"{path}.{key}", "must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


@lru_cache(maxsize=1024)
def _cipher_ok(name: str) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(name)
    except ssl.SSLError:
        return False
    return True


@lru_cache(maxsize=256)
def _curve_ok(name: str) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ecdh_curve(name)
    except (ValueError, ssl.SSLError):
        return False
    return True


def _ciphers(spec: dict, path: str, warnings: list[tuple[str, str, str]]) -> tuple[str, ...]:
    out = []
    for i, entry in enumerate(_names(spec, "cipher_suites", path)):
        # BoringSSL's equal-preference groups ("[A|B]") are Envoy's; OpenSSL takes the names
        for name in entry.strip("[]").split("|"):
            name = name.strip()
            if name.startswith("TLS_"):
                warnings.append(("warning", f"{path}.cipher_suites[{i}]",
                                 f"{name} is a TLS 1.3 suite: TLS 1.3 suites are not configurable (as in Envoy); "
                                 "ignored"))
            elif not _cipher_ok(name):
                raise Invalid(f"{path}.cipher_suites[{i}]", f"unknown cipher suite {name!r} (OpenSSL names, "
                              "e.g. ECDHE-RSA-AES128-GCM-SHA256)")
            elif name not in out:
                out.append(name)
    return tuple(out)


def _curves(spec: dict, path: str) -> tuple[str, ...]:
    out = []
    for i, name in enumerate(_names(spec, "ecdh_curves", path)):
        name = CURVE_ALIASES.get(name, name)
        if not _curve_ok(name):
            raise Invalid(f"{path}.ecdh_curves[{i}]", f"unknown curve {name!r} (e.g. X25519, P-256, P-384)")
        if name not in out:
            out.append(name)
    return tuple(out)


def _alpn(spec: dict, path: str) -> tuple[str, ...]:
    value = spec.get("alpn_protocols")
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise Invalid(f"{path}.alpn_protocols", "must be a comma-separated string, e.g. \"h2,http/1.1\"")
    out = []
    for item in items:
        item = item.strip()
        if not item or len(item.encode()) > 255 or not item.isascii() or not item.isprintable():
            raise Invalid(f"{path}.alpn_protocols", f"bad protocol name {item!r}")
        if item not in out:
            out.append(item)
    return tuple(out)


def parse_settings(spec: dict, path: str, sni_used: bool = False) -> tuple[TLSSettings, list[tuple[str, str, str]]]:
    """The TLS settings of a TLSContext spec or a (normalised) Host.tls, and what to say
    about them as (severity, field, message); `sni_used`: the caller reads `sni` (a
    TLSContext, for origination), else it is noted as ignored.
    Raises Invalid for a value that cannot be served as written."""
    for key, message in REFUSED.items():
        if spec.get(key) not in (None, ""):
            raise Invalid(f"{path}.{key}", message)
    warnings: list[tuple[str, str, str]] = []
    ca = spec.get("ca_secret")
    if ca is not None and (not isinstance(ca, str) or not ca.strip()):
        raise Invalid(f"{path}.ca_secret", "must be a Secret name")
    required = None
    if spec.get("cert_required") is not None:
        required = opt_bool(spec, "cert_required", False, path)
    settings = TLSSettings(
        ca_secret=ca.strip() if ca else None,
        cert_required=required,
        min_version=_version(spec, "min_tls_version", path),
        max_version=_version(spec, "max_tls_version", path),
        cipher_suites=_ciphers(spec, path, warnings),
        ecdh_curves=_curves(spec, path),
        alpn_protocols=_alpn(spec, path),
    )
    lo, hi = settings.min_version, settings.max_version
    if lo and hi and TLS_VERSIONS.index(lo) > TLS_VERSIONS.index(hi):
        raise Invalid(f"{path}.min_tls_version", f"{lo} is above max_tls_version {hi}")
    if spec.get("redirect_cleartext_from") is not None:
        opt_int(spec, "redirect_cleartext_from", None, path, 1, 65535)
        warnings.append(("warning", f"{path}.redirect_cleartext_from", RCF_WARNING))
    if spec.get("sni") not in (None, "") and not sni_used:
        warnings.append(("notice", f"{path}.sni", SNI_NOTICE))
    return settings, warnings


# ---- TLSContext ----------------------------------------------------------------------------

CONTEXT_KEYS = frozenset({"ambassador_id", "hosts", "secret", "secret_namespacing", "sni",
                          "redirect_cleartext_from", *SETTING_KEYS, *REFUSED})


@dataclass(frozen=True)
class TLSContextSpec:
    hosts: tuple[str, ...]  # lower-cased, without a :port
    secret: str | None  # as written
    secret_namespacing: bool
    settings: TLSSettings
    sni: str = ""  # origination: the server name sent to the upstream ("": none)


def server_name(hostname: str) -> str:
    """What SNI selects for a hostname: lower-cased, without a `:port` (Emissary's Host.sni)."""
    host, sep, port = hostname.rpartition(":")
    return (host if sep and port.isdigit() else hostname).lower()


def parse_tlscontext(obj: RawObject) -> tuple[TLSContextSpec, list[tuple[str, str, str]]]:
    """A TLSContext and what to say about it (severity, field, message). Raises Invalid."""
    spec = obj.spec
    hosts = spec.get("hosts")
    if hosts is None:
        hosts = []
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise Invalid("spec.hosts", "must be a list of hostnames")
    for i, h in enumerate(hosts):
        if not h or any(c.isspace() for c in h):
            raise Invalid(f"spec.hosts[{i}]", f"must be a DNS name or glob, got {h!r}")
    secret = spec.get("secret")
    if secret is not None and (not isinstance(secret, str) or not secret.strip()):
        raise Invalid("spec.secret", "must be a Secret name (name or name.namespace)")
    settings, warnings = parse_settings(spec, "spec", sni_used=True)
    sni = spec.get("sni")
    if sni is None:
        sni = ""
    if not isinstance(sni, str) or any(c.isspace() for c in sni) or len(sni) > 253 or not sni.isascii():
        raise Invalid("spec.sni", f"must be a server name (DNS name), got {sni!r}")
    namespacing = opt_bool(spec, "secret_namespacing", True)
    for key in sorted(set(spec) - CONTEXT_KEYS, key=str):
        warnings.append(("warning", f"spec.{key}", "not a TLSContext field edge knows; ignored"))
    names = tuple(dict.fromkeys(server_name(h) for h in hosts))
    return TLSContextSpec(names, secret.strip() if secret else None, namespacing, settings, sni), warnings
