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
# Surfaces this SDK version lacks, each named once in the log (see ``install_surface``).
missing_surfaces: dict[str, str] = {}


class MissingSeam(LookupError):
    """The installed SDK has no function (or class) where spanline patches one: an older or newer SDK."""


def install_surface(surface: str, install: Callable[[], None]) -> bool:
    """Run one surface's ``install``; if the installed SDK lacks one of its seams, leave that surface as the SDK
    made it (whatever part of it was patched is put back) and say so once, naming the surface and the SDK's
    version. Every other surface is still traced: an older SDK without, say, the tool runner's private
    methods must not cost its users the tracing of plain calls."""
    before = set(_installed)
    try:
        install()
    except (ImportError, MissingSeam) as missing:
        for key in set(_installed) - before:
            _restore(key)
        if surface not in missing_surfaces:
            from importlib.metadata import version

            missing_surfaces[surface] = str(missing)
            logger.warning(
                "spanline: %s is not traced: anthropic %s has no %s; every other call is traced.",
                surface, version("anthropic"), missing,
            )
        return False
    return True


def patch(owner: type, attribute: str, make_wrapper: Callable[[Any], Any]) -> None:
    """Replace ``owner.attribute`` with ``make_wrapper(original)``, once.

    If another library has since put its own function there (MLflow's autolog restores what it found
    when it is disabled), spanline patches again on top of what is there now."""
    key = (owner, attribute)
    if key in _installed and owner.__dict__.get(attribute) is _installed[key][1]:
        return
    if attribute not in owner.__dict__:
        raise MissingSeam(f"{owner.__module__}.{owner.__qualname__}.{attribute}")
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
    for owner, attribute in list(_installed):
        if not _restore((owner, attribute)):
            left.append(f"{getattr(owner, '__qualname__', type(owner).__qualname__)}.{attribute}")
    return left


def _restore(key: tuple[Any, str]) -> bool:
    """Put back what ``key`` held before spanline, unless someone replaced spanline's function since (then it
    is left, inert while recording is off). Either way ``key`` leaves the registry. True when restored."""
    owner, attribute = key
    original, wrapper = _installed.pop(key)
    if owner.__dict__.get(attribute) is not wrapper:
        return False
    if original is _ABSENT:
        delattr(owner, attribute)
    else:
        setattr(owner, attribute, original)
    return True

