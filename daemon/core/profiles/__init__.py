"""Delivery profiles: each platform's webhook contract, one declaration per module, registered here. Pure.

To add a platform: a module beside these declaring its ``Profile`` (``daemon.core.profiles.base``), and one
line in ``_ALL``. Config validation, rendering, signing and the retry rules all read the declaration.
"""

from __future__ import annotations

from typing import Final

from daemon.core.profiles.agora import AGORA
from daemon.core.profiles.base import (
    HOP_BY_HOP,
    TRANSPORT_HEADERS,
    Expansion,
    Profile,
    Signer,
    Signing,
    Skip,
    Unsigned,
    first_present,
    hop_by_hop,
    pattern_matches,
    skip_for,
)
from daemon.core.profiles.campaign import CAMPAIGN
from daemon.core.profiles.convocore import CONVOCORE
from daemon.core.profiles.crm import CRM
from daemon.core.profiles.leadterra import LEADTERRA
from daemon.core.profiles.standard import RAW, STANDARD_WEBHOOKS, SVIX_SCHEDULE
from daemon.core.profiles.template import Template, iso_seconds

_ALL: Final = (STANDARD_WEBHOOKS, RAW, AGORA, LEADTERRA, CONVOCORE, CAMPAIGN, CRM)

PROFILES: Final[dict[str, Profile]] = {p.name: p for p in _ALL}
DEFAULT: Final = STANDARD_WEBHOOKS.name

# Profiles that resolve config of their own into endpoints (each once).
EXPANSIONS: Final[tuple[Expansion, ...]] = tuple(p.expansion for p in _ALL if p.expansion is not None)

__all__ = [
    "DEFAULT",
    "EXPANSIONS",
    "HOP_BY_HOP",
    "PROFILES",
    "SVIX_SCHEDULE",
    "TRANSPORT_HEADERS",
    "Profile",
    "Signer",
    "Signing",
    "Skip",
    "Template",
    "Unsigned",
    "first_present",
    "hop_by_hop",
    "iso_seconds",
    "pattern_matches",
    "skip_for",
]
