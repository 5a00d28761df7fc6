"""The owner of torch's global module hooks: one hook while any watcher needs it, none after."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from gradguard import _hooks
from gradguard._hooks import GlobalHook


@pytest.fixture
def owner() -> Iterator[GlobalHook]:
    hook = GlobalHook(nn.modules.module.register_module_forward_pre_hook)
    yield hook
    hook.reset()


def _global_pre_hooks() -> int:
    return len(nn.modules.module._global_forward_pre_hooks)


def test_no_hook_is_in_torch_until_a_watcher_is_added(owner: GlobalHook) -> None:
    before = _global_pre_hooks()
    assert not owner.installed()
    owner.add("leaks", lambda module, args: None)
    assert owner.installed()
    assert _global_pre_hooks() == before + 1


def test_one_hook_in_torch_however_many_watchers(owner: GlobalHook) -> None:
    before = _global_pre_hooks()
    owner.add("leaks", lambda module, args: None)
    owner.add("scan", lambda module, args: None)
    owner.add("eval", lambda module, args: None)
    assert _global_pre_hooks() == before + 1


def test_watchers_run_in_the_fixed_order_whatever_order_they_came_in(owner: GlobalHook) -> None:
    seen: list[str] = []

    def watcher(name: str) -> Any:
        return lambda module, args: seen.append(name)

    owner.add("scan", watcher("scan"))
    owner.add("leaks", watcher("leaks"))
    owner.add("eval", watcher("eval"))
    nn.Identity()(torch.ones(1))
    assert seen == ["eval", "leaks", "scan"]


def test_the_hook_leaves_torch_when_the_last_watcher_goes(owner: GlobalHook) -> None:
    before = _global_pre_hooks()
    seen: list[str] = []
    owner.add("leaks", lambda module, args: seen.append("leaks"))
    owner.add("scan", lambda module, args: seen.append("scan"))
    owner.discard("leaks")
    nn.Identity()(torch.ones(1))
    assert seen == ["scan"]
    owner.discard("scan")
    owner.discard("scan")  # twice is fine
    assert not owner.installed()
    assert _global_pre_hooks() == before
    nn.Identity()(torch.ones(1))
    assert seen == ["scan"]


def test_added_again_after_removal_it_runs_again(owner: GlobalHook) -> None:
    seen: list[int] = []
    owner.add("leaks", lambda module, args: seen.append(1))
    owner.discard("leaks")
    owner.add("leaks", lambda module, args: seen.append(2))
    nn.Identity()(torch.ones(1))
    assert seen == [2]


def test_an_unknown_watcher_name_is_refused_with_the_known_ones(owner: GlobalHook) -> None:
    with pytest.raises(ValueError, match="unknown watcher 'lint'; known: eval, leaks, scan"):
        owner.add("lint", lambda module, args: None)


def test_an_always_called_hook_leaves_no_entry_behind_in_torchs_second_dict() -> None:
    """torch lists an ``always_call`` hook in a second dict, which it reads to decide
    whether any global hook is in (and then warns when a compiled module is called)."""
    from torch.nn.modules import module as torch_module

    owner = _hooks.forward_hooks_always
    before = dict(torch_module._global_forward_hooks_always_called)
    owner.add("leaks", lambda *args: None)
    try:
        assert len(torch_module._global_forward_hooks_always_called) == len(before) + 1
    finally:
        owner.discard("leaks")
    assert dict(torch_module._global_forward_hooks_always_called) == before
    assert not torch_module._has_any_global_hook()
    owner.add("leaks", lambda *args: None)  # back in: listed in both again
    try:
        assert len(torch_module._global_forward_hooks_always_called) == len(before) + 1
        assert torch_module._has_any_global_hook()
    finally:
        owner.discard("leaks")
    assert dict(torch_module._global_forward_hooks_always_called) == before
