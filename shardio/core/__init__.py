"""Layer 1: the ShardioError tree, options and sizes, schemas, the global index,
JSON files shardio owns, checksums and fork safety (`PerProcess`). Imports no other layer."""

__all__: list[str] = []
