"""What the event catalogue's validation costs per event, in process: ``Catalogue.problem`` (what the dispatch calls
once per event that matched an endpoint) for a type without a validating schema, and for Agora's ``lead.created``
event against a five-field schema, valid and invalid. The event is decoded once beforehand (the dispatch decodes it
anyway for conditions and bodies).

    python -m bench.catalogue [--events 20000]

Times are this process's CPU time, the best of five runs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from daemon.core.catalogue import Catalogue
from daemon.core.config import EventTypeConfig

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "lead_id"],
    "properties": {"event": {"type": "string"}, "lead_id": {"type": "integer"}, "campaign_id": {"type": "integer"},
                   "contact_id": {"type": "integer"}, "timestamp": {"type": "string"}},
}  # fmt: skip
EVENT: dict[str, Any] = {"event": "lead.created", "campaign_id": 7, "lead_id": 1234, "contact_id": 5678,
                         "timestamp": "2026-06-12T20:00:00Z"}  # fmt: skip


def per_event(catalogue: Catalogue, event_type: str, event: dict[str, Any], count: int) -> float:
    """µs of CPU per call, the best of five runs of ``count``."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(count):
            catalogue.problem(event_type, lambda: event)
        best = min(best, time.process_time() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    catalogue = Catalogue([EventTypeConfig(name="lead.created", schema=SCHEMA, validate=True),
                           EventTypeConfig(name="lead.noted", schema=SCHEMA)])  # fmt: skip
    rows = [
        ("a type without a validating schema", "lead.noted", EVENT),
        ("lead.created, valid", "lead.created", EVENT),
        ("lead.created, invalid (lead_id a string)", "lead.created", {**EVENT, "lead_id": "1234"}),
    ]
    print("| event | µs per event |\n|---|---|")
    for name, event_type, event in rows:
        print(f"| {name} | {per_event(catalogue, event_type, event, args.events):.2f} |")


if __name__ == "__main__":
    main()
