"""Field types shared by every config record: the agent's and each protocol's.

A bus record of a protocol package and the agent's own sections say
``id: Identifier`` or ``host: Host`` the same way, with the same rules and
the same messages for a technician.
"""

from __future__ import annotations

from typing import Annotated

from drivers.core.records import Parse, Rule

# Ids end up in MQTT topics and file names: no '/', '+', '#', spaces.
Identifier = Annotated[str, Rule(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
                                 explain="use letters, digits, '_', '.' or '-' (it becomes part of MQTT topics)")]
Port = Annotated[int, Rule(ge=1, le=65535)]
NonEmpty = Annotated[str, Rule(min_length=1)]
# MQTT forbids U+0000 in a string and advises against the other control
# characters; a NUL would also cut the name short in C brokers' logs and ACLs.
PrintableText = Annotated[str, Rule(pattern=r"[^\x00-\x1f\x7f-\x9f]+",
                                    explain="no control characters (NUL, tab, line break ...); "
                                            "is the value quoted right?")]


def parse_host(value: object) -> str:
    """A host name or address as a socket takes it. A URL (``mqtt://broker``)
    or ``host:port`` would pass as text and fail only at run time, so it is
    refused here, naming the host part to write instead."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a host name or IP address (got {value!r})")
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    authority = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    host, port = authority, ""
    if authority.startswith("[") and "]" in authority:  # [::1]:1883
        host, _, tail = authority[1:].partition("]")
        port = tail.removeprefix(":")
    elif authority.count(":") == 1:  # host:port; more colons are a bare IPv6 address
        host, _, port = authority.partition(":")
    if not (sep or port or "/" in rest or "@" in rest or any(c.isspace() for c in text)):
        return text
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{text!r} is not a host name or IP address")
    what = "a URL" if sep else ("host:port" if port else "not a host name")
    hints = [f"give the host alone (did you mean {host!r}?)"]
    if port:
        hints.append(f"the port goes in `port: {port}`")
    if scheme.lower() in ("mqtts", "ssl", "tls", "wss", "https"):
        hints.append("TLS is switched on with a `tls:` section")
    raise ValueError(f"{text!r} is {what}: " + "; ".join(hints))


Host = Annotated[str, Parse(parse_host, {"type": "string", "minLength": 1, "pattern": r"^[^\s/@]+$",
                                         "description": "a host name or IP address, without scheme or port"})]
