"""The raw mmap backend: reader and writer."""

__all__: list[str] = []
