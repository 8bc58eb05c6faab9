"""Every public method of the SDK's message resources is traced or deliberately not, by introspection.

A method the installed SDK gains fails this test until ``spanline/patches/coverage.py`` classifies it; a
"traced" row whose seam autolog does not patch fails too; and the README shows the table as generated."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
from spanline.patches import coverage

import spanline
from spanline import patches


def _public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def _resource_classes() -> dict[str, list[type]]:
    from anthropic.lib.foundry import (
        AsyncBetaFoundryMessages,
        AsyncMessagesFoundry,
        BetaFoundryMessages,
        MessagesFoundry,
    )
    from anthropic.resources.beta.messages import AsyncMessages as AsyncBetaMessages
    from anthropic.resources.beta.messages import Messages as BetaMessages
    from anthropic.resources.beta.messages.batches import AsyncBatches as AsyncBetaBatches
    from anthropic.resources.beta.messages.batches import Batches as BetaBatches
    from anthropic.resources.messages import AsyncMessages, Messages
    from anthropic.resources.messages.batches import AsyncBatches, Batches

    provider_beta = []
    for module in ("anthropic.lib.bedrock._beta_messages", "anthropic.lib.vertex._beta_messages"):
        found = importlib.import_module(module)
        provider_beta += [found.Messages, found.AsyncMessages]
    return {
        "messages": [Messages, AsyncMessages, MessagesFoundry, AsyncMessagesFoundry],
        "messages.batches": [Batches, AsyncBatches],
        "beta.messages": [BetaMessages, AsyncBetaMessages, BetaFoundryMessages, AsyncBetaFoundryMessages,
                          *provider_beta],
        "beta.messages.batches": [BetaBatches, AsyncBetaBatches],
    }


def _wrapper_objects(fake) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for client in (fake.client(), fake.async_client()):
        resources = {
            "messages": client.messages, "messages.batches": client.messages.batches,
            "beta.messages": client.beta.messages, "beta.messages.batches": client.beta.messages.batches,
        }
        for group, resource in resources.items():
            for wrapper in ("with_raw_response", "with_streaming_response"):
                out.setdefault(f"{group}.{wrapper}", []).append(getattr(resource, wrapper))
    return out


def _enumerated(fake) -> dict[str, list[object]]:
    """Every public method name found, keyed as in the coverage table, with the classes or objects it is on."""
    found: dict[str, list[object]] = {}
    for group, classes in _resource_classes().items():
        for cls in classes:
            for name in _public(cls):
                found.setdefault(f"{group}.{name}", []).append(cls)
    for group, objects in _wrapper_objects(fake).items():
        for obj in objects:
            for name in _public(obj):
                found.setdefault(f"{group}.{name}", []).append(obj)
    return found


def test_every_public_method_is_classified(fake):
    found = _enumerated(fake)
    unclassified = sorted(set(found) - set(coverage.COVERAGE))
    assert not unclassified, f"classify these SDK methods in spanline/patches/coverage.py: {unclassified}"
    stale = sorted(set(coverage.COVERAGE) - set(found))
    assert not stale, f"coverage rows for methods the SDK no longer has: {stale}"
    assert {row.status for row in coverage.COVERAGE.values()} <= {
        coverage.TRACED, coverage.UNTRACED, coverage.VIA, coverage.ACCESSOR
    }
    for key, row in coverage.COVERAGE.items():
        assert row.what, f"{key} needs a description or a reason"


def _seam(spec: str) -> tuple[type, str]:
    module, _, path = spec.partition(":")
    cls_name, _, attribute = path.partition(".")
    return getattr(importlib.import_module(module), cls_name), attribute


def _is_patched(owner: type, attribute: str) -> bool:
    # The function in force is spanline's wrapper, wherever in the MRO it lives.
    for cls in inspect.getmro(owner):
        if attribute in cls.__dict__:
            entry = patches._installed.get((cls, attribute))
            return entry is not None and cls.__dict__[attribute] is entry[1]
    return False


@pytest.fixture
def patched(traced):
    return traced


def test_every_traced_method_is_patched(patched, fake):
    found = _enumerated(fake)
    for key, row in coverage.COVERAGE.items():
        if row.status != coverage.TRACED:
            continue
        for spec in row.seams:
            assert _is_patched(*_seam(spec)), f"{key}: {spec} is not patched"
        name = key.rsplit(".", 1)[-1]
        for owner in found[key]:
            if isinstance(owner, type):
                if not row.seams:
                    assert _is_patched(owner, name), f"{key} on {owner.__module__}.{owner.__qualname__}"
            else:  # a with_raw_response / with_streaming_response object: it wraps the resource's method
                bound = getattr(owner, name).__wrapped__
                function = getattr(bound, "__func__", bound)
                assert any(function is wrapper for _, wrapper in patches._installed.values()), key


def test_the_untraced_methods_stay_untouched_and_autolog_undoes_it_all(fake):
    from anthropic.resources.messages.batches import Batches

    spanline.autolog()
    try:
        patched = dict(patches._installed)
        assert (Batches, "retrieve") not in patched and (Batches, "list") not in patched
    finally:
        spanline.autolog(disable=True)
    assert not patches._installed
    # Every function is back, the very object the SDK shipped.
    for (owner, attribute), (original, _wrapper) in patched.items():
        name = getattr(owner, "__qualname__", type(owner).__qualname__)
        if original is patches._ABSENT:  # an instance attribute over its class's method (MLflow's runtime context)
            assert attribute not in vars(owner), f"{name}.{attribute}"
        else:
            assert owner.__dict__[attribute] is original, f"{name}.{attribute}"


def test_readme_shows_the_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert coverage.markdown_table() in readme, "regenerate: python -c 'from spanline.patches import coverage; " \
        "print(coverage.markdown_table())'"
