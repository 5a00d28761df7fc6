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

from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from torch import nn

from ._net import NetCall
from ._target import Step, Target
from ._telemetry import Measure

__all__ = ["async_generator_call", "coroutine_call", "generator_call"]

# The bodies gradguard is driving. Held here, a body is never garbage itself: when its
# wrapper is collected (in a reference cycle, say), the wrapper's close runs first and
# closes the body under the mode; collected on its own, the body's cleanup would run
# unguarded.
_running: set[Any] = set()


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
        _running.add(gen)
        try:
            result = yield from _resume(target, modules, measure, gen, response, call, net)
        except RuntimeError as error:
            _late_fall_back(target, error, inference, measure)
            raise
        finally:
            _running.discard(gen)
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
        _running.add(inner)
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
            _running.discard(inner)


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
    _running.add(agen)
    try:
        try:
            response = await _Stepped(target, modules, measure, agen.asend(None), net)
        except StopAsyncIteration:
            return
        except RuntimeError as error:
            if not inference or target.fall_back(error, measure=measure) != "retry":
                raise
            _running.discard(agen)
            agen = wrapped(*args, **kwargs)  # nothing reached the caller yet: start again
            _running.add(agen)
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
        _running.discard(agen)
        target.end(measure, failure, None, watch, net)
