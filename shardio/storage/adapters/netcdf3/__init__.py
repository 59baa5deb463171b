"""The netCDF3 backend (read-only, through scipy)."""

__all__: list[str] = []
