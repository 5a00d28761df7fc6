"""The looks at a call's modules: what inference tensors the call left in them.

Registrations are claimed exactly (``_registrations``). On calls 1, 2, 4, 8… every
parameter, buffer and tensor-valued plain attribute (one level into dicts and lists) is
also compared, before and after the call, with the last look at the same model: that
catches ``.half()``/``.to()``, which register nothing, and caches kept in attributes.

Parameters and buffers are a certain failure once the model trains: they are reported
at the call's end. A tensor in a plain attribute fails only if training uses it (a cache
that training never touches is no leak), so it is only remembered by name, for the note
on torch's error if that comes.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

from torch import nn

from .._errors import LeakError
from .._eval import unproxied
from ._levels import level, remembering
from ._registrations import FoundById, claim, inference_tensors, landed, prefix
from ._registry import Origin, sentinel
from ._reports import internal_error, report_resident

__all__ = ["Looks", "look_after", "look_before", "looks"]

_Module = nn.Module


class Looks:
    """What the last look saw in each model: id(root) -> (root, ids of its tensors)."""

    __slots__ = ("baselines", "lock")

    def __init__(self) -> None:
        self.baselines: dict[int, tuple[weakref.ref[nn.Module], set[int]]] = {}
        # Reentrant: ``forget`` is a weak reference's callback, which the collector may run
        # while this very thread holds the lock (an allocation inside ``compare``).
        self.lock = threading.RLock()

    def forget(self, key: int, ref: weakref.ref[nn.Module]) -> None:
        with self.lock:
            entry = self.baselines.get(key)
            if entry is not None and entry[0] is ref:
                del self.baselines[key]

    def compare(self, root: nn.Module, after: set[int]) -> set[int] | None:
        """Record ``after`` as the last look at ``root``; return what the look before saw
        (``None`` for a model seen for the first time)."""
        key = id(root)
        known: set[int] | None = None
        with self.lock:
            baseline = self.baselines.get(key)
            if baseline is not None and baseline[0]() is root:
                known = baseline[1]
                ref = baseline[0]
            else:
                ref = weakref.ref(root, functools.partial(self.forget, key))
            self.baselines[key] = (ref, after)
        return known

    def add(self, roots: list[nn.Module], ids: FoundById) -> None:
        """What a claim found is known: the next look must not report it again."""
        with self.lock:
            for root in roots:
                baseline = self.baselines.get(id(root))
                if baseline is not None and baseline[0]() is root:
                    baseline[1].update(ids)

    def reset(self) -> None:
        with self.lock:
            self.baselines.clear()


looks = Looks()


def look_before(roots: list[nn.Module]) -> dict[int, set[int]] | None:
    """At the start of a looked-at call (1, 2, 4, 8…): the ids of each model's inference
    tensors (ids only: the look must not keep a replaced cache alive).

    ``None`` when leaks are not watched (or the look failed).
    """
    try:
        if not remembering():
            return None
        return {id(root): set(inference_tensors(root, attributes=True)) for root in roots}
    except Exception as error:
        internal_error(error)
        return None


def result_modules(result: Any) -> list[nn.Module]:
    """The modules a call returned: the result itself, or one level into its containers."""
    result = unproxied(result)
    if isinstance(result, _Module):
        return [result]
    if isinstance(result, dict):
        values: Any = result.values()
    elif isinstance(result, (list, tuple)):
        values = result
    else:
        return []
    return [m for m in map(unproxied, values) if isinstance(m, _Module)]


def look_after(
    roots: list[nn.Module],
    target: str,
    call: int,
    mark: int,
    before: dict[int, set[int]] | None,
    *,
    warn: bool,
    result: Any = None,
) -> bool:
    """Report the new inference tensors a call left in its modules, in modules it built,
    or in modules it returned; never raise, except ``LeakError`` under
    ``action="raise"`` (and a ``LeakWarning`` made an error by a warnings filter).
    Returns whether it warned.

    Each parameter or buffer found is a ``gradguard.leak`` event, and a warning when
    ``warn`` (once per target: a cache rebuilt for every longer input says nothing new).
    """
    try:
        current, action = level()
        if current == "off":
            return False
        given = bool(roots)
        found: FoundById = {}
        built: FoundById = {}
        if landed.seq != mark:
            returned = [m for m in result_modules(result) if all(m is not r for r in roots)]
            found, built = claim([*roots, *returned], mark)
        earlier: FoundById = {}
        if before is not None:
            for root in roots:
                seen = before.get(id(root), set())
                after = inference_tensors(root, prefix(roots, root), attributes=True)
                known = looks.compare(root, set(after))
                if known is None:
                    known = set()  # a model new to this look: what it held is not the call's
                else:
                    earlier.update((k, v) for k, v in after.items() if k in seen and k not in known)
                # Tensors already there before the call (a loaded module swapped in, say)
                # are not the call's, whatever registered them.
                for k in [k for k in found if k in seen or k in known]:
                    del found[k]
                found.update((k, v) for k, v in after.items() if k not in seen)
        else:
            looks.add(roots, found)
        warned = False
        for values, since in ((found, call), (earlier, call // 2 + 1), (built, call)):
            if not values or (values is earlier and since > call - 1):
                continue  # no call of this target ran since the last look: not its doing
            until = call - 1 if values is earlier else 0
            owned = []
            for item in values.values():
                origin = Origin(target, since, item.describe(), until)
                if item.kind == "attribute":
                    sentinel.note(item.tensor, origin)  # named in torch's error, if it comes
                else:
                    sentinel.note_resident(item.tensor, origin)
                    owned.append(item.describe())
            if owned:
                made_here = values is built or (not given and values is found)
                report_resident(
                    Origin(target, since, "", until), owned, action, warn=warn, built=made_here
                )
                warned = warned or warn
        return warned
    except (LeakError, Warning):
        raise  # what the user asked for: action="raise", or warnings made errors
    except Exception as error:  # the call's result matters more than this look
        internal_error(error)
        return False
