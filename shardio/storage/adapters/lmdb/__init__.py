"""The LMDB backend: reader and writer."""

__all__: list[str] = []
