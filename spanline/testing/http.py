"""The HTTP library the installed Anthropic SDK talks through, under one name.

anthropic 2.x uses ``httpx2``; 1.x uses ``httpx``, whose API ``httpx2`` keeps. The fake's transports and the tests
build requests, responses and clients with it, so they run against either SDK line.
"""

try:
    import httpx2
except ImportError:  # anthropic 1.x
    import httpx as httpx2  # type: ignore[no-redef]

__all__ = ["httpx2"]
