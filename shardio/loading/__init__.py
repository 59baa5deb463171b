"""Layer 4, the torch-facing pieces: `ShardedDataset`, batches, samplers, `Loader`,
the DataLoader worker lookup and `Prefetcher`."""

__all__: list[str] = []
