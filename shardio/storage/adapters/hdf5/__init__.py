"""The HDF5 backend: reader and writer, discovery of datasets in foreign files,
filters, and the conversion source."""

__all__: list[str] = []
