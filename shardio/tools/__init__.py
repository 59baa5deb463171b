"""Layer 6: the tools built on the library: bench, diagnose, the command line,
the reference model and the conformance harness (`testing`)."""

__all__: list[str] = []
