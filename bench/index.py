"""``python -m bench.index [N]``: how fast the delivery index is read into its local copy at start-up, and looked up.

N entries (default 200,000) are written to an index topic of three partitions on an embedded broker (``PER_RECORD``
entries a record, as the results writer writes them), then a ``DeliveryIndex`` reads it from its start, twice (each a
fresh copy, as a restart makes), and looks one entry in a thousand up by its delivery id.
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiokafka import AIOKafkaProducer

from daemon.core.model import IndexRecord, IndexRow, encode_index
from daemon.kafka.index import DeliveryIndex
from daemon.tools.embedded import EmbeddedBroker

PER_RECORD = 100  # entries an index record holds: the router writes one for each write of results records


async def main(count: int) -> None:
    async with EmbeddedBroker() as broker:
        await broker.create_topics(["index", "results"], partitions=3)
        options = {"bootstrap_servers": broker.bootstrap}
        producer = AIOKafkaProducer(**options, linger_ms=20, max_batch_size=512 * 1024)
        await producer.start()
        rows: dict[int, list[IndexRow]] = {0: [], 1: [], 2: []}  # results partition -> entries of one record
        for n in range(count):
            entries = rows[n % 3]
            entries.append((n % 3, n // 3, f"msg_{n:032x}", f"ep_{n % 100}", "lead.created", "delivered", 1, "live",
                            1_700_000_000_000 + n, 200, 3.2))  # fmt: skip
            if len(entries) == PER_RECORD or n >= count - 3:
                await producer.send("index", encode_index(IndexRecord(entries=entries)), partition=n % 3)
                rows[n % 3] = []
        await producer.flush()
        await producer.stop()
        for _ in range(2):
            index = DeliveryIndex("index", "results", options)
            started, cpu = time.monotonic(), time.process_time()
            await index.start()
            await index.read_to_end()
            took, used = time.monotonic() - started, time.process_time() - cpu
            each = used / count * 1e6
            print(f"{index.read:,} entries read in {took:.2f} s, {used:.2f} s of CPU ({each:.1f} µs each)")
            started = time.monotonic()
            for n in range(0, count, 1000):
                assert len(await index.attempts(f"msg_{n:032x}", None)) == 1
            print(f"a lookup by delivery id: {(time.monotonic() - started) / len(range(0, count, 1000)) * 1e6:.0f} µs")
            await index.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))
