"""Guarding generators and coroutines one step at a time.

Grad mode and inference mode are thread-local in torch, not local to a generator or a
task. A ``with`` held open across a ``yield`` would leave the mode on in the consumer
between ``next()`` calls, and one held across an ``await`` would leave it on in every
other task the event loop runs meanwhile (while ``@torch.inference_mode()`` on an
``async def`` applies nothing at all inside the coroutine). So each resume of the body is
wrapped on its own: enter the mode, run to the next ``yield``/``await``, leave it, as
torch's ``_wrap_generator`` does for generators.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from torch import nn

from ._net import NetCall
from ._target import Step, Target
from ._telemetry import Measure

__all__ = ["async_generator_call", "coroutine_call", "generator_call"]

# The bodies gradguard is driving, held weakly: a body often holds its owner (a generator
# kept as `self.it = self.gen()` holds `self`), so a strong reference from here would keep
# both alive for good. A body collected in a reference cycle is finalized by the collector,
# maybe before its wrapper, whose close would have run the body's cleanup guarded. But the
# collector clears weak references, calling their callbacks, before it calls any
# finalizer: the callback enters the body's mode and switches its modules, and both are
# left when the collection ends (a gc callback), so the cleanup runs guarded either way.
_running: dict[weakref.ref[Any], tuple[Target, list[nn.Module]]] = {}
_dying: list[tuple[Target, Step]] = []


def _track(body: Any, target: Target, modules: list[nn.Module]) -> weakref.ref[Any] | None:
    try:
        ref = weakref.ref(body, _collected)
    except TypeError:  # an async generator's asend(): its generator is tracked itself
        return None
    if _after_collection not in gc.callbacks:
        gc.callbacks.append(_after_collection)
    _running[ref] = (target, modules)
    return ref


def _untrack(ref: weakref.ref[Any] | None) -> None:
    if ref is not None:
        _running.pop(ref, None)
    if not _running and not _dying and _after_collection in gc.callbacks:
        gc.callbacks.remove(_after_collection)  # no global callback left while not needed


_collecting = [False]  # between the collector's "start" and "stop" callbacks


def _collected(ref: weakref.ref[Any]) -> None:
    found = _running.pop(ref, None)
    # Only the collector calls this before the body's finalizer; a body freed by its
    # reference count was finalized already, by its wrapper, with nothing to do here.
    if found is None or not _collecting[0]:
        return
    target, modules = found
    try:
        _dying.append((target, target.enter(modules)))
    except Exception:  # never raise in the collector: the cleanup runs unguarded
        return


def _after_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _collecting[0] = True
        return
    _collecting[0] = False
    while _dying:
        target, step = _dying[-1]
        try:
            try:
                target.leave(step)
            finally:
                target.leave(step)  # again: idempotent, finishes an interrupted leave
        except Exception:  # a train() override failing: the others are still left
            pass
        _dying.pop()
    if not _running and _after_collection in gc.callbacks:
        gc.callbacks.remove(_after_collection)


def _start(
    target: Target,
    modules: list[nn.Module],
    measure: Measure | None,
    make: Callable[[], Any],
    send: str,
    net: NetCall | None,
) -> tuple[Any, Any]:
    """Create the body and run its first step; once more under no_grad if auto falls back.

    Returns the body and what its first step produced. The retry is safe here: nothing
    has reached the caller yet.
    """
    for attempt in (1, 2):
        body = make()
        inference = target.inference
        step: Step | None = None
        try:
            try:
                step = target.enter(modules, measure, net)
                return body, getattr(body, send)(None)
            except RuntimeError as error:
                if not inference or attempt == 2:
                    raise
                if target.fall_back(error, measure=measure) != "retry":
                    raise
            finally:
                if step is not None:
                    target.leave(step)
        finally:
            if step is not None:
                target.leave(step)  # again: finishes a leave an interrupt stopped
    raise AssertionError("unreachable")  # pragma: no cover


def _late_fall_back(target: Target, error: BaseException, inference: bool, measure: Any) -> None:
    if inference:  # too late to run it again, but the next call uses no_grad
        target.fall_back(error, can_retry=False, measure=measure)


def generator_call(
    target: Target,
    wrapped: Callable[..., Generator[Any, Any, Any]],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Generator[Any, Any, Any]:
    """Run a generator with the mode on only while its body runs."""
    modules, measure, call, watch, net = target.begin(instance, args, kwargs)
    failure: BaseException | None = None
    result = None
    try:
        try:
            gen, response = _start(
                target, modules, measure, lambda: wrapped(*args, **kwargs), "send", net
            )
        except StopIteration as stop:
            result = stop.value
            return result
        inference = target.inference
        ref = _track(gen, target, modules)
        try:
            result = yield from _resume(target, modules, measure, gen, response, call, net)
        except RuntimeError as error:
            _late_fall_back(target, error, inference, measure)
            raise
        finally:
            _untrack(ref)
        return result
    except BaseException as error:
        failure = None if isinstance(error, GeneratorExit) else error  # closed early: fine
        raise
    finally:
        target.end(measure, failure, result, watch, net)


def _resume(
    target: Target,
    modules: list[nn.Module],
    measure: Measure | None,
    gen: Generator[Any, Any, Any],
    response: Any,
    call: int,
    net: NetCall | None,
) -> Generator[Any, Any, Any]:
    enter, leave, deliver = target.enter, target.leave, target.deliver
    while True:
        try:
            request = yield deliver(response, call)
        except GeneratorExit:  # closed early, or collected: its cleanup runs guarded too
            target.run_step(modules, measure, gen.close, net)
            raise
        except BaseException as thrown:
            advance: Callable[[Any], Any] = gen.throw
            value = thrown
        else:
            advance, value = gen.send, request
        step: Step | None = None
        try:
            try:
                step = enter(modules, measure, net)
                response = advance(value)
            except StopIteration as stop:
                return stop.value
            finally:
                if step is not None:
                    leave(step)
        finally:
            if step is not None:
                leave(step)  # again: finishes a leave an interrupt stopped


class _Stepped:
    """Await ``inner`` (a coroutine, or an async generator's asend/athrow/aclose) with the
    target's mode entered around each of its steps and left while it is suspended."""

    __slots__ = ("_inner", "_measure", "_modules", "_net", "_target")

    def __init__(
        self,
        target: Target,
        modules: list[nn.Module],
        measure: Measure | None,
        inner: Any,
        net: NetCall | None = None,
    ) -> None:
        self._target = target
        self._modules = modules
        self._measure = measure
        self._inner = inner
        self._net = net

    def __await__(self) -> Generator[Any, Any, Any]:
        inner, modules, measure, net = self._inner, self._modules, self._measure, self._net
        enter, leave = self._target.enter, self._target.leave
        value: Any = None
        thrown: BaseException | None = None
        ref = _track(inner, self._target, modules)
        try:
            while True:
                step: Step | None = None
                try:
                    try:
                        step = enter(modules, measure, net)
                        yielded = inner.send(value) if thrown is None else inner.throw(thrown)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        if step is not None:
                            leave(step)
                finally:
                    if step is not None:
                        leave(step)  # again: finishes a leave an interrupt stopped
                try:
                    value, thrown = (yield yielded), None
                except GeneratorExit:
                    self._target.run_step(modules, measure, inner.close, net)
                    raise
                except BaseException as error:  # cancellation included: the body sees it
                    value, thrown = None, error
        finally:
            _untrack(ref)


async def coroutine_call(
    target: Target,
    wrapped: Callable[..., Any],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Await a coroutine with the mode on only while its body runs."""
    modules, measure, call, watch, net = target.begin(instance, args, kwargs)
    inference = target.inference
    try:
        try:
            result = await _Stepped(target, modules, measure, wrapped(*args, **kwargs), net)
        except RuntimeError as error:
            if not inference or target.fall_back(error, measure=measure) != "retry":
                raise
            result = await _Stepped(target, modules, measure, wrapped(*args, **kwargs), net)
        result = target.deliver(result, call)
    except BaseException as error:
        target.end(measure, error, None, watch, net)
        raise
    target.end(measure, None, result, watch, net)
    return result


async def async_generator_call(
    target: Target,
    wrapped: Callable[..., AsyncGenerator[Any, Any]],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncGenerator[Any, Any]:
    """Iterate an async generator with the mode on only while its body runs."""
    modules, measure, call, watch, net = target.begin(instance, args, kwargs)
    failure: BaseException | None = None
    agen = wrapped(*args, **kwargs)
    inference = target.inference
    ref = _track(agen, target, modules)
    try:
        try:
            response = await _Stepped(target, modules, measure, agen.asend(None), net)
        except StopAsyncIteration:
            return
        except RuntimeError as error:
            if not inference or target.fall_back(error, measure=measure) != "retry":
                raise
            _untrack(ref)
            agen = wrapped(*args, **kwargs)  # nothing reached the caller yet: start again
            ref = _track(agen, target, modules)
            try:
                response = await _Stepped(target, modules, measure, agen.asend(None), net)
            except StopAsyncIteration:
                return
        inference = target.inference
        try:
            while True:
                try:
                    request = yield target.deliver(response, call)
                except GeneratorExit:
                    await _Stepped(target, modules, measure, agen.aclose(), net)
                    raise
                except BaseException as thrown:
                    awaitable = agen.athrow(thrown)
                else:
                    awaitable = agen.asend(request)
                try:
                    response = await _Stepped(target, modules, measure, awaitable, net)
                except StopAsyncIteration:
                    return
        except RuntimeError as error:
            _late_fall_back(target, error, inference, measure)
            raise
    except BaseException as error:
        failure = None if isinstance(error, GeneratorExit) else error  # closed early: fine
        raise
    finally:
        _untrack(ref)
        target.end(measure, failure, None, watch, net)
