"""Which SDK classes carry the message methods, what their spans are called, and which provider served a call.

Resolved once per class and cached in dicts, so the caller's path pays one dict lookup for each: the span
name by resource class, the event's ``surface`` (converter, and the provider as ``@name``) by client class.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# The SDK's client classes name their platform in ``_otel_platform`` (None for Anthropic's own API). MLflow's
# cost lookup (litellm / its bundled table) knows some platforms under other names: use those.
_PROVIDER_BY_PLATFORM = {None: "anthropic", "bedrock": "bedrock", "vertex": "vertex_ai", "foundry": "azure_ai"}


def provider_of(client_cls: type) -> str:
    """The provider that serves a client class's calls, as ``mlflow.llm.provider`` names it."""
    platform = getattr(client_cls, "_otel_platform", None)
    if platform is None and not hasattr(client_cls, "_otel_platform"):
        # SDK 1.x has no _otel_platform: its provider clients live in anthropic.lib.<platform>.
        parts = client_cls.__module__.split(".")
        if parts[:2] == ["anthropic", "lib"] and len(parts) > 2:
            platform = parts[2]
    return _PROVIDER_BY_PLATFORM.get(platform, platform if isinstance(platform, str) else "anthropic")


class SpanNames(dict):
    """Span names of one method by resource class, made on first use: MLflow's ``Messages.create`` and
    ``AsyncMessages.create``; a beta resource is named ``beta.Messages.create``, so the two are told apart."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method

    def __missing__(self, cls: type) -> str:
        beta = (".beta." in cls.__module__ or "._beta" in cls.__module__) and "Beta" not in cls.__name__
        name = self[cls] = f"{'beta.' if beta else ''}{cls.__name__}.{self.method}"
        return name


class Surfaces(dict):
    """The ``ApiCall.surface`` of one converter by client class: the converter's name, and ``@provider`` when
    the client is not Anthropic's own (``"messages"``, ``"messages@bedrock"``). The worker splits it."""

    def __init__(self, surface: str) -> None:
        super().__init__()
        self.surface = surface

    def __missing__(self, client_cls: type) -> str:
        provider = provider_of(client_cls)
        value = self[client_cls] = self.surface if provider == "anthropic" else f"{self.surface}@{provider}"
        return value


def mlflow_traces(function: Any) -> bool:
    """Whether ``mlflow.anthropic.autolog()`` traces this SDK function too (it patches the first-party
    ``Messages.create`` and ``AsyncMessages.create`` only); for the rest spanline records even then."""
    return function.__module__ == "anthropic.resources.messages.messages" and function.__name__ == "create"


def message_classes() -> Iterator[tuple[type, type]]:
    """(sync, async) resource classes whose ``create`` / ``parse`` / ``count_tokens`` send one Messages request.

    Bedrock's and Vertex's beta resources copy the first-party beta functions into their own classes at import,
    so patching the first-party class alone would miss them."""
    from anthropic.resources.beta.messages import AsyncMessages as AsyncBetaMessages
    from anthropic.resources.beta.messages import Messages as BetaMessages
    from anthropic.resources.messages import AsyncMessages, Messages

    yield Messages, AsyncMessages
    yield BetaMessages, AsyncBetaMessages
    for module in ("anthropic.lib.bedrock._beta_messages", "anthropic.lib.vertex._beta_messages"):
        found = _optional(module)
        if found is not None:
            yield found.Messages, found.AsyncMessages


def _optional(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:  # an SDK without that provider
        return None
