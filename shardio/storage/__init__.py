"""Layer 3: backends (`adapters`), the sharded directory (`layout`, `manifest`),
remote shards, `ShardWriter` and the read path (`DatasetReader`, integrity, open limits).
Never imports torch."""

__all__: list[str] = []
