"""Who may talk FastAGI to serve: a peer allowlist (setting agi_allow), pure.

FastAGI has no authentication: whoever reaches the port can reserve money (`route`) or
settle a call with a made-up talk time (`hangup`). So serve answers only its Asterisk
servers: loopback by default, else exactly the addresses and networks listed in agi_allow
(list 127.0.0.1 too for an Asterisk, or doctor, on serve's own host). A refused peer is
closed before a byte is read, and logged once per episode (RefusalLog).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
REFUSAL_EPISODE_GAP_S = 600.0  # a peer refused again after this much quiet is a new episode (logged)
REFUSED_PEERS_MAX = 4096  # peers remembered for the once-per-episode log; the oldest is forgotten
# Answers remembered (per allowlist and peer address): every FastAGI connection asks, from a
# handful of Asterisk addresses, and parsing the address each time was 3% of serve's CPU per
# request (py-spy, lookups only).
ALLOWS_CACHED_MAX = 1024


class PeerListError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PeerAllowlist:
    networks: tuple[Network, ...] = LOOPBACK

    @classmethod
    def parse(cls, text: str) -> PeerAllowlist:
        """'10.0.0.5, 192.168.1.0/24, 2001:db8::/32' (comma or space separated); empty: loopback."""
        nets: list[Network] = []
        for item in text.replace(",", " ").split():
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise PeerListError(
                    f"{item!r} is not an IP address or network (like 10.0.0.5 or 10.0.0.0/24)"
                )
        return cls(tuple(nets)) if nets else cls()

    @property
    def loopback_only(self) -> bool:
        return self.networks == LOOPBACK

    def allows(self, host: object) -> bool:
        """host: the peer's address as the socket reports it (an IPv4-mapped IPv6 address is
        the IPv4 address it carries); anything that is not an IP address is refused."""
        return _allows(self.networks, str(host))


@functools.lru_cache(maxsize=ALLOWS_CACHED_MAX)
def _allows(networks: tuple[Network, ...], host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


class RefusalLog:
    """Decides which refusals are logged: a peer's first, then again only after it has been
    quiet for REFUSAL_EPISODE_GAP_S (a new episode). Bounded: REFUSED_PEERS_MAX peers."""

    def __init__(self) -> None:
        self._last: OrderedDict[str, float] = OrderedDict()  # peer -> last refusal, s
        self.refused = 0  # refusals since start

    def note(self, host: str, now_s: float) -> bool:
        """Record a refusal of host at now_s; True when it starts an episode (log it)."""
        self.refused += 1
        last = self._last.pop(host, None)
        self._last[host] = now_s
        if len(self._last) > REFUSED_PEERS_MAX:
            self._last.popitem(last=False)
        return last is None or now_s - last >= REFUSAL_EPISODE_GAP_S
