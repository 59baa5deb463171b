"""The Zarr v3 backend: reader and writer, and the chunk
bounds that keep decompression within what a chunk declares."""

__all__: list[str] = []
