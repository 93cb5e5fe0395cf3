"""Route matching for one table generation (pure: no I/O).

A Router is built once per table generation (regexes compiled, virtual hosts indexed by
listener port) and then only read, so a request costs a dict lookup for the virtual host
and a probe of that host's route index (see RouteIndex).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from edge.model import Cluster, ListenerSpec, Route, RouteTable, Target
from edge.ratelimit.descriptors import RuleIndex
from edge.worker.proxy import HeaderRules, header_rules
from edge.worker.tls import ServerContexts
from edge.worker.xfcc import XfccPolicy


@dataclass(frozen=True, slots=True)
class CompiledTarget:
    target: Target
    regex_rewrite: re.Pattern | None
    headers: HeaderRules
    # the rate-limit descriptors depend on the connection only (no request header in
    # them): a keep-alive connection can reuse the limits it matched
    labels_per_connection: bool = False


class CompiledRoute:
    __slots__ = ("route", "order", "kind", "path", "regex", "method", "host", "host_kind", "host_re",
                 "headers", "query", "targets", "case_sensitive")

    def __init__(self, route: Route, order: int = 0, suppress_envoy: bool = False, sanitize_xfcc: bool = True):
        self.route = route
        self.order = order  # position in the table: the precedence order
        self.kind = route.path_kind
        self.case_sensitive = route.case_sensitive
        self.path = route.path if route.case_sensitive else route.path.lower()
        flags = 0 if route.case_sensitive else re.IGNORECASE
        self.regex = re.compile(route.path, flags) if route.path_kind == "regex" else None
        self.method = route.method.encode() if route.method else None
        self.host = route.host.lower() if route.host else None
        self.host_kind = "any"
        self.host_re = None
        if route.host is not None:
            if route.host_regex:
                self.host_kind, self.host_re = "regex", re.compile(route.host)
            elif "*" in route.host:
                self.host_kind = "glob"
            else:
                self.host_kind = "exact"
        self.headers = tuple((m.name.encode(), m.value, re.compile(m.value) if m.regex else None)
                             for m in route.headers)
        self.query = tuple((m.name, m.value, re.compile(m.value) if m.regex else None) for m in route.query)
        self.targets = tuple(CompiledTarget(t, re.compile(t.regex_rewrite_pattern) if t.regex_rewrite_pattern else None,
                                            header_rules(t, suppress_envoy, sanitize_xfcc), all(a.kind != "request_headers" for g in t.labels
                                                                 for a in g.actions))
                             for t in route.targets)

    def match_path(self, path: str) -> int:
        """Length of the matched path prefix, or -1."""
        p = path if self.case_sensitive else path.lower()
        if self.kind == "prefix":
            return len(self.path) if p.startswith(self.path) else -1
        if self.kind == "exact":
            return len(p) if p == self.path else -1
        # Envoy's safe_regex on a prefix route must match the whole path
        return len(path) if self.regex.fullmatch(path) else -1

    def match_host(self, host: str) -> bool:
        kind = self.host_kind
        if kind == "any":
            return True
        if kind == "exact":
            return host == self.host
        if kind == "glob":
            return glob_match(self.host, host)
        return self.host_re.fullmatch(host) is not None


def glob_match(glob: str, name: str) -> bool:
    if glob == "*":
        return True
    if glob.startswith("*"):
        return name.endswith(glob[1:]) and len(name) > len(glob) - 1
    if glob.endswith("*"):
        return name.startswith(glob[:-1]) and len(name) > len(glob) - 1
    return glob == name


class _VhostIndex:
    """Picks the virtual host for a Host header: exact, then the longest suffix wildcard,
    then the longest prefix wildcard, then '*' (Envoy's order). Wildcards are grouped by
    length, so a lookup costs one dict probe per distinct wildcard length."""

    def __init__(self, vhosts: list[tuple[str, list[CompiledRoute], str]]):
        self.exact: dict[str, RouteIndex] = {}
        suffix: dict[int, dict[str, list[CompiledRoute]]] = {}
        prefix: dict[int, dict[str, list[CompiledRoute]]] = {}
        exact: dict[str, list[CompiledRoute]] = {}
        star: list[CompiledRoute] | None = None
        insecure: dict[str, str] = {}  # hostname -> requestPolicy.insecure.action (the first Host's)
        for hostname, routes, action in vhosts:
            insecure.setdefault(hostname, action)
            if hostname == "*":
                star = routes if star is None else _merge(star, routes)
            elif hostname.startswith("*"):
                group = suffix.setdefault(len(hostname) - 1, {})
                key = hostname[1:]
                group[key] = _merge(group[key], routes) if key in group else routes
            elif hostname.endswith("*"):
                group = prefix.setdefault(len(hostname) - 1, {})
                key = hostname[:-1]
                group[key] = _merge(group[key], routes) if key in group else routes
            else:
                exact[hostname] = _merge(exact[hostname], routes) if hostname in exact else routes
        self.exact = {h: RouteIndex(r, insecure[h]) for h, r in exact.items()}
        self.suffix = [(n, {k: RouteIndex(r, insecure["*" + k]) for k, r in g.items()})
                       for n, g in sorted(suffix.items(), reverse=True)]
        self.prefix = [(n, {k: RouteIndex(r, insecure[k + "*"]) for k, r in g.items()})
                       for n, g in sorted(prefix.items(), reverse=True)]
        self.star = RouteIndex(star, insecure["*"]) if star is not None else None
        self.star_only = not self.exact and not self.suffix and not self.prefix  # no Host names configured

    def lookup(self, host: str) -> RouteIndex | None:
        if self.star_only:
            return self.star
        index = self.exact.get(host)
        if index is not None:
            return index
        n = len(host)
        for length, group in self.suffix:
            if n > length:
                index = group.get(host[-length:])
                if index is not None:
                    return index
        for length, group in self.prefix:
            if n > length:
                index = group.get(host[:length])
                if index is not None:
                    return index
        return self.star


def _merge(a: list[CompiledRoute], b: list[CompiledRoute]) -> list[CompiledRoute]:
    seen = {id(r) for r in a}
    merged = a + [r for r in b if id(r) not in seen]
    merged.sort(key=lambda r: r.order)
    return merged


class RouteIndex:
    """One virtual host's routes in precedence order, indexed so that a request looks
    only at routes whose path could match it: prefix routes by their prefix (one dict
    probe per distinct prefix length), exact routes by their path, regex routes always.
    The cost of a lookup does not grow with the number of routes."""

    def __init__(self, routes: list[CompiledRoute], insecure_action: str = "Route"):
        self.routes = routes
        # what a request that did not arrive securely gets on these routes: "Route",
        # "Redirect" (301 to https) or "Reject" (as if no route matched)
        self.insecure_action = insecure_action
        self.prefix: dict[str, list[int]] = {}
        self.prefix_ci: dict[str, list[int]] = {}
        self.exact: dict[str, list[int]] = {}
        self.exact_ci: dict[str, list[int]] = {}
        self.always: list[int] = []
        for i, r in enumerate(routes):
            if r.kind == "prefix":
                table = self.prefix if r.case_sensitive else self.prefix_ci
            elif r.kind == "exact":
                table = self.exact if r.case_sensitive else self.exact_ci
            else:
                self.always.append(i)
                continue
            table.setdefault(r.path, []).append(i)
        self.prefix_lengths = sorted({len(k) for k in self.prefix})
        self.prefix_ci_lengths = sorted({len(k) for k in self.prefix_ci})
        self.case_insensitive = bool(self.prefix_ci or self.exact_ci)

    def candidates(self, path: str) -> list[int]:
        """Positions of the routes whose path may match, in precedence order. The list
        may be one of the index's own: callers read it and do not change it."""
        found: list[int] | None = None
        sources = 0  # hit lists joined into `found`: more than one needs a sort
        n = len(path)
        prefix = self.prefix
        for length in self.prefix_lengths:
            if length > n:
                break
            hit = prefix.get(path[:length])
            if hit is not None:
                found = hit if found is None else found + hit
                sources += 1
        hit = self.exact.get(path)
        if hit is not None:
            found = hit if found is None else found + hit
            sources += 1
        if self.case_insensitive:
            lower = path.lower()
            for length in self.prefix_ci_lengths:
                if length > n:
                    break
                hit = self.prefix_ci.get(lower[:length])
                if hit is not None:
                    found = hit if found is None else found + hit
                    sources += 1
            hit = self.exact_ci.get(lower)
            if hit is not None:
                found = hit if found is None else found + hit
                sources += 1
        if self.always:
            found = self.always if found is None else found + self.always
            sources += 1
        if found is None:
            return []
        if sources > 1:
            found.sort()  # a list made by the joins above, never one of the index's
        return found


class Router:
    """Read-only lookup structures for one RouteTable."""

    def __init__(self, table: RouteTable, generation: int = 0, tls: ServerContexts | None = None):
        self.table = table
        # SSL contexts by SNI; those of `tls` (the previous table's) are reused where unchanged
        self.tls = ServerContexts(table, tls)
        self.generation = generation
        self.settings = table.settings
        self.server = table.settings.server_name.encode()
        self.max_head = table.settings.max_request_headers_kb * 1024
        self.clusters: dict[str, Cluster] = {c.name: c for c in table.clusters}
        # None without limits: the hot path tests it without a call
        self.rate_limits = RuleIndex(table.rate_limits) if table.rate_limits else None
        suppress = table.settings.suppress_envoy_headers
        # x-forwarded-client-cert: dropped by the header rules (SANITIZE, the default), else
        # rewritten per request by edge.worker.xfcc (`xfcc` says how)
        sanitize = table.settings.forward_client_cert_details == "SANITIZE"
        self.xfcc = None if sanitize else XfccPolicy(table.settings.forward_client_cert_details,
                                                     table.settings.set_current_client_cert_details)
        compiled = [CompiledRoute(r, order, suppress, sanitize) for order, r in enumerate(table.routes)]
        self.listeners: dict[int, ListenerSpec] = {}
        self._vhosts: dict[int, _VhostIndex] = {}
        for listener in table.listeners:
            vhosts = []
            for i in listener.hosts:
                vh = table.virtual_hosts[i]
                vhosts.append((vh.hostname, [compiled[r] for r in vh.routes], vh.insecure_action))
            self.listeners[listener.port] = listener
            self._vhosts[listener.port] = _VhostIndex(vhosts)
        # some Host redirects or rejects insecure requests: plan() asks insecure_action()
        self.insecure_policies = any(vh.insecure_action != "Route" for vh in table.virtual_hosts)

    def with_table(self, table: RouteTable, generation: int) -> Router:
        """A Router for `table`, reusing this one's compiled routes and indexes when only
        clusters (endpoints) or diagnostics changed: an endpoint change does not rebuild
        every route."""
        old = self.table
        if (table.routes != old.routes or table.virtual_hosts != old.virtual_hosts
                or table.listeners != old.listeners or table.settings != old.settings
                or table.rate_limits != old.rate_limits):
            return Router(table, generation, self.tls)
        new = object.__new__(Router)
        new.__dict__.update(self.__dict__)
        new.table = table
        new.generation = generation
        new.clusters = {c.name: c for c in table.clusters}
        if (table.certificates, table.server_tls, table.client_tls) != self.tls.key:  # built here, in the loader thread
            new.tls = ServerContexts(table, self.tls)
        return new

    def insecure_action(self, port: int, host: str) -> str:
        """requestPolicy.insecure.action of the virtual host a Host header selects."""
        index = self._vhosts.get(port)
        vhost = index.lookup(_host_name(host)) if index is not None else None
        return vhost.insecure_action if vhost is not None else "Route"

    def match(self, port: int, host: str, path: str, method: bytes, headers: list, query: str) -> tuple[CompiledRoute, int] | None:
        """The first route that matches, with the matched path length; None for a 404.

        `host` is the Host header lower-cased (port kept unless the caller stripped it);
        virtual hosts are chosen on the name without a port.
        """
        index = self._vhosts.get(port)
        if index is None:
            return None
        colon = host.rfind(":")
        name = host[:colon] if colon >= 0 and not host.endswith("]") else host  # [v6] has no port
        vhost = index.lookup(name)
        if vhost is None:
            return None
        routes = vhost.routes
        header_map = None
        query_map = None
        for i in vhost.candidates(path):
            r = routes[i]
            # the index only offers prefix and exact routes whose path matches
            kind = r.kind
            matched = len(r.path) if kind == "prefix" else len(path) if kind == "exact" else r.match_path(path)
            if matched < 0:
                continue
            if r.method is not None and r.method != method:
                continue
            if r.host_kind != "any" and not r.match_host(host):
                continue
            if r.headers:
                if header_map is None:
                    header_map = _header_map(headers)
                if not _match_all(r.headers, header_map):
                    continue
            if r.query:
                if query_map is None:
                    query_map = {}
                    for k, v in parse_qsl(query, keep_blank_values=True):
                        query_map.setdefault(k, v)
                if not _match_all(r.query, query_map):
                    continue
            return r, matched
        return None


def _host_name(host: str) -> str:
    colon = host.rfind(":")
    return host[:colon] if colon >= 0 and not host.endswith("]") else host  # [v6] has no port


def _header_map(headers: list) -> dict:
    out: dict = {}
    for name, value in headers:
        if name in out:
            out[name] = out[name] + "," + value.decode("latin-1")
        else:
            out[name] = value.decode("latin-1")
    return out


def _match_all(matchers: tuple, values: dict) -> bool:
    for name, value, regex in matchers:
        actual = values.get(name)
        if actual is None:
            return False
        if regex is not None:
            if regex.fullmatch(actual) is None:
                return False
        elif value is not None and actual != value:
            return False
    return True


def pick_target(route: CompiledRoute, roll: int) -> CompiledTarget:
    """The canary target for `roll` in [0, 100)."""
    for t in route.targets:
        if roll < t.target.weight:
            return t
    return route.targets[-1]
