"""Moved to :mod:`spanline.testing`; this module re-exports it for the imports not yet moved.

``tests/test_writer.py`` (which another branch is changing) and older user code import the fake from here, with
three of its former private names. The redesign step removes this module once no import is left.
"""

from spanline.testing import FAKE_API_KEY, FAKE_BASE_URL, MAX_RECORDED_REQUESTS, FakeAnthropicAPI, FakeServer
from spanline.testing.routes import route as _route
from spanline.testing.wire import SSEStream as _SSEStream
from spanline.testing.wire import bedrock_frame as _bedrock_frame
from spanline.testing.wire import stream_events as _stream_events

__all__ = [
    "FAKE_API_KEY",
    "FAKE_BASE_URL",
    "MAX_RECORDED_REQUESTS",
    "FakeAnthropicAPI",
    "FakeServer",
    "_SSEStream",
    "_bedrock_frame",
    "_route",
    "_stream_events",
]
