"""The server's request checks, free of any web framework (unit-testable on their own).

* :func:`key_matches` — Bearer key check in constant time;
* :func:`json_depth_ok` — refuse deeply nested JSON before ``json.loads`` recurses;
* :func:`host_allowed` / :func:`origin_allowed` — DNS-rebinding and cross-site guards;
* :func:`allowed_patch_file` — a patch ``url`` must name a file under an allow-listed folder;
* :class:`Scrubber` — error texts never disclose server paths.
"""

from __future__ import annotations

import hmac
import os
import re
from pathlib import Path

__all__ = ["key_matches", "json_depth_ok", "host_allowed", "origin_allowed",
           "allowed_patch_file", "Scrubber", "safe_name", "GuardError"]


class GuardError(Exception):
    """A request refused by a check: the HTTP status and a message safe to send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def key_matches(header: str | None, key: str) -> bool:
    """True when ``header`` is ``Bearer <key>`` (compared in constant time)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer "):].strip().encode("utf-8")
    return hmac.compare_digest(given, key.encode("utf-8"))


def json_depth_ok(raw: bytes, max_depth: int) -> bool:
    """False when ``raw`` nests arrays/objects deeper than ``max_depth`` (strings skipped).

    A linear scan, so a 1 MiB body of ``[`` is refused without recursing."""
    depth = 0
    in_str = False
    esc = False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:          # backslash
                esc = True
            elif b == 0x22:          # quote
                in_str = False
            continue
        if b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):      # [ {
            depth += 1
            if depth > max_depth:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def _strip_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):                       # [::1]:8080
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    """The ``Host`` header names this server (a loopback name, the bound address, or an
    ``--allow-host`` name); anything else is a DNS-rebinding attempt."""
    if not host_header:
        return False
    name = _strip_port(host_header)
    return name in allowed or "*" in allowed


def allowed_hosts(bind_host: str, extra: list[str] | None = None) -> frozenset[str]:
    names = {n.strip("[]") for n in _LOOPBACK_NAMES}
    if bind_host not in ("0.0.0.0", "::", ""):
        names.add(bind_host.strip("[]").lower())
    names.update(h.lower() for h in extra or ())
    return frozenset(names)


def origin_allowed(origin: str | None, hosts: frozenset[str], origins: frozenset[str]) -> bool:
    """No ``Origin`` (curl, Python clients) passes; a browser's must be one the user allowed
    (``--allow-origin``) or this server itself."""
    if origin is None:
        return True
    if origin in origins or "*" in origins:
        return True
    m = re.match(r"^https?://([^/]+)$", origin.strip())
    return m is not None and _strip_port(m.group(1)) in hosts


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_name(name: str) -> bool:
    """A patch / session name usable as a file name: no separators, no ``..``, no NUL."""
    return bool(_NAME_RE.match(name)) and ".." not in name


def allowed_patch_file(url: str, allow_dirs: list[Path]) -> Path:
    """The file a patch ``url`` names, when it lies under one of ``allow_dirs``.

    ``file://`` or a plain path; no network schemes (there is no network). The path is
    resolved (symlinks and ``..`` followed) before the check."""
    if not isinstance(url, str) or not url or "\x00" in url:
        raise GuardError(400, '"url" must be a non-empty string')
    text = url
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) or text.startswith("hf://"):
        raise GuardError(403, "patch urls name a file on the server; this server does not "
                              "fetch from the network (send the patch inline as \"patch\")")
    if not allow_dirs:
        raise GuardError(403, "this server loads no patch files by url (start it with "
                              "--patch-dir DIR to allow a folder); send the patch inline")
    p = Path(text)
    if not p.is_absolute():
        raise GuardError(403, "a patch url must be an absolute path under an allowed folder")
    real = Path(os.path.realpath(p))
    for d in allow_dirs:
        root = Path(os.path.realpath(d))
        if real == root or root in real.parents:
            if not real.is_file():
                raise GuardError(404, "no such patch file under the allowed folder")
            return real
    raise GuardError(403, "the patch url is outside the folders this server may read")


class Scrubber:
    """Replaces server paths in a message with short placeholders (``<vindex>``, ``<path>``)."""

    def __init__(self, named: dict[str, str | os.PathLike]):
        pairs = []
        for label, path in named.items():
            for form in {str(path), os.path.realpath(path)}:
                if form and form not in ("/", "."):
                    pairs.append((form, label))
        pairs.sort(key=lambda kv: -len(kv[0]))       # longest first
        self._pairs = pairs

    def __call__(self, text: str) -> str:
        for form, label in self._pairs:
            text = text.replace(form, label)
        # any other absolute path on this machine (its first folder exists here): keep the
        # last component only; URL paths such as /v1/{model_id}/walk are left alone
        def repl(m: re.Match[str]) -> str:
            first = m.group(0).split("/", 2)[1]
            if not first or first == "v1" or not os.path.isdir("/" + first):
                return m.group(0)
            return "<path>/" + m.group(1)
        return re.sub(r"(?<![\w<])/(?:[^\s'\"/:]+/)+([^\s'\"/:]*)", repl, text)
