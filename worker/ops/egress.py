"""What ``check-config`` says about the egress identity: the key of the shared rate budget.

Providers limit per source IP (docs/providers/index.md §6: EmailMassivo 10 requests/s per IP, Mail
Partner 2000/min per IP, Voice Partner per IP). delivery-worker draws every send from one Redis
budget per provider and ``DELIVERY_EGRESS_IDENTITY``, so the rule for a fleet is: **one identity per
public source IP**. Two groups on different IPs with one identity are safe (they share one IP's
budget, so they send at most the limit together); two groups whose requests leave through the
same public IP under different identities each draw a full budget, and together overrun the
provider (429s).

One worker's settings cannot show what other groups use, so the identity is not derived from
``DELIVERY_LOCAL_ADDRESS``: behind NAT, hosts with different local addresses share one public
IP, and a derived identity would give each its own budget, the unsafe direction. The default
stays one shared identity (``default``: safe, one IP's budget); these notes point out the
settings that are worth a second look.
"""

from __future__ import annotations

import ipaddress

from worker.config import Settings

__all__ = ["DEFAULT_IDENTITY", "egress_notes"]

DEFAULT_IDENTITY = "default"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def egress_notes(settings: Settings) -> list[str]:
    """Warnings about the egress identity and source address (empty when nothing stands out)."""
    identity, address = settings.egress_identity, settings.local_address
    notes: list[str] = []
    if address and identity == DEFAULT_IDENTITY:
        notes.append(
            f"DELIVERY_LOCAL_ADDRESS is {address} but DELIVERY_EGRESS_IDENTITY is the default: "
            "this group shares one rate budget with every group left at the default (safe, "
            "but one IP's budget); to use this address's own budget, name its public IP, "
            f"e.g. DELIVERY_EGRESS_IDENTITY=ip-{address}, in every group that sends from it"
        )
    named_ip = _ip(identity.removeprefix("ip-"))
    if address and named_ip is not None and _ip(address) not in (None, named_ip):
        notes.append(
            f"DELIVERY_EGRESS_IDENTITY names the address {named_ip} but DELIVERY_LOCAL_ADDRESS "
            f"is {address}: if another group uses identity ip-{address} from this address, the "
            "provider sees two budgets from one IP and answers 429"
        )
    if identity != DEFAULT_IDENTITY and not address:
        notes.append(
            f"DELIVERY_EGRESS_IDENTITY is {identity!r} without DELIVERY_LOCAL_ADDRESS: safe only "
            "if no group with another identity sends through this host's public IP"
        )
    return notes
