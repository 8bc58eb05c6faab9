"""SDK patches: one module per SDK surface, each turning calls into events.

This module keeps the registry of what was replaced, as ``(owner, attribute, original)``, in spanline
itself rather than as marker attributes on SDK classes, so ``autolog(disable=True)`` can put back the
exact original objects (``is``-identical) and leave the SDK as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("spanline")

# (owner, attribute) -> (original, wrapper). The owner's __dict__ entry is what gets replaced. An owner is a
# class, or an object whose methods are shadowed by instance attributes (MLflow's runtime context).
_installed: dict[tuple[Any, str], tuple[Any, Any]] = {}
_ABSENT = object()  # the instance had no attribute of its own: disabling deletes spanline's


def patch(owner: type, attribute: str, make_wrapper: Callable[[Any], Any]) -> None:
    """Replace ``owner.attribute`` with ``make_wrapper(original)``, once.

    If another library has since put its own function there (MLflow's autolog restores what it found
    when it is disabled), spanline patches again on top of what is there now."""
    key = (owner, attribute)
    if key in _installed and owner.__dict__.get(attribute) is _installed[key][1]:
        return
    original = owner.__dict__[attribute]
    wrapper = make_wrapper(original)
    setattr(owner, attribute, wrapper)
    _installed[key] = (original, wrapper)


def patch_instance(owner: object, attribute: str, value: Any) -> None:
    """Set ``owner.attribute`` (an instance attribute, over its class's method) to ``value``, registered so that
    ``unpatch_all`` puts back what the instance had: nothing of its own, its class's method then shows again."""
    key = (owner, attribute)
    original = _installed[key][0] if key in _installed else owner.__dict__.get(attribute, _ABSENT)
    setattr(owner, attribute, value)
    _installed[key] = (original, value)


def original(owner: type, attribute: str) -> Any:
    """The function spanline replaced at ``owner.attribute`` (what is there now, if spanline has not)."""
    entry = _installed.get((owner, attribute))
    return entry[0] if entry is not None else owner.__dict__[attribute]


def unpatch_all() -> list[str]:
    """Restore every original. Where someone else has replaced or wrapped spanline's function since,
    restoring would remove theirs: that one is left as it is (inert while recording is off) and named."""
    left = []
    for (owner, attribute), (original, wrapper) in list(_installed.items()):
        if owner.__dict__.get(attribute) is wrapper:
            if original is _ABSENT:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)
        else:
            left.append(f"{getattr(owner, '__qualname__', type(owner).__qualname__)}.{attribute}")
        del _installed[(owner, attribute)]
    return left

