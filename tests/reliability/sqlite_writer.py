"""A writer process for test_sqlite_crash.py: creates jobs through the service's own Store (BEGIN IMMEDIATE,
WAL) as fast as it can and prints each job id only after its transaction has committed ("acknowledged").
The test SIGKILLs it at a random moment."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from tuning_service.storage.store import Store


async def main(db: Path, tag: str) -> None:
    store = Store(db)
    await store.open()
    n = 0
    while True:
        n += 1
        row, _ = await store.create_job(
            owner=f"owner-{tag}",
            model="tiny-llama",
            request={"n": n, "tag": tag, "pad": "x" * (n % 7) * 300},
            request_hash=f"{tag}-{n}",
            idempotency_key=f"{tag}-{n}",
            hyperparameters={"epochs": 1},
            num_gpus=0,
            now=time.time(),
        )
        # Records and a status change too: multi-statement transactions, several pages per commit.
        async with store.transaction() as tx:
            await tx.append(row["id"], [("log", time.time(), {"line": "y" * 200})] * 5)
        sys.stdout.write(row["id"] + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
