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

import functools
import gc
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from torch import nn

from ._net import NetCall
from ._target import Step, Target
from ._telemetry import Measure

__all__ = ["async_generator_call", "bodies", "coroutine_call", "generator_call"]


class _Bodies:
    """The bodies (generators, coroutines) gradguard is driving, held weakly.

    A body often holds its owner (a generator kept as ``self.it = self.gen()`` holds
    ``self``), so a strong reference from here would keep both alive for good. A body
    collected in a reference cycle is finalized by the collector, maybe before its
    wrapper, whose close would have run the body's cleanup guarded. But the collector
    clears weak references, calling their callbacks, before it calls any finalizer: the
    callback enters the body's mode and switches its modules, and both are left when the
    collection ends (a ``gc.callbacks`` entry), so the cleanup runs guarded either way.

    An interrupt that lands in a collector callback is reported and dropped by Python
    (``Exception ignored``), which gives the callback no second run. So the end of a
    collection has two callbacks doing the same idempotent work: one interrupt
    stops at most one of them. They are never taken out of ``gc.callbacks`` from inside
    a callback (the collector walks that list by index, and a removal would make it skip
    the application's next callback), but from ordinary code: when the last body ends
    (after a collection that found the last body, when the next guarded body ends).
    """

    __slots__ = ("_callbacks", "collecting", "dying", "running")

    def __init__(self) -> None:
        self.running: dict[weakref.ref[Any], tuple[Target, list[nn.Module]]] = {}
        self.dying: list[tuple[Target, Step]] = []  # entered by ``collected``, left at the end
        self.collecting = False  # between the collector's "start" and "stop" callbacks
        self._callbacks = (self.after_collection, functools.partial(self.after_collection))

    def track(self, body: Any, target: Target, modules: list[nn.Module]) -> weakref.ref[Any] | None:
        """Track ``body`` weakly until ``untrack``; return the reference to pass there."""
        try:
            ref = weakref.ref(body, self.collected)
        except TypeError:  # an async generator's asend(): its generator is tracked itself
            return None
        self._install()
        self.running[ref] = (target, modules)
        return ref

    def untrack(self, ref: weakref.ref[Any] | None) -> None:
        """The body of ``ref`` ended (or was closed) with its wrapper."""
        if ref is not None:
            self.running.pop(ref, None)
        if not self.running and not self.dying:
            self._uninstall()  # no global callback left while not needed

    def collected(self, ref: weakref.ref[Any]) -> None:
        """Weak-reference callback: the collector is about to finalize a body."""
        found = self.running.pop(ref, None)
        # Only the collector calls this before the body's finalizer; a body freed by its
        # reference count was finalized already, by its wrapper, with nothing to do here.
        if found is None or not self.collecting:
            return
        target, modules = found
        try:
            self.dying.append((target, target.enter(modules)))
        except Exception:  # never raise in the collector: the cleanup runs unguarded
            return

    def after_collection(self, phase: str, info: dict[str, Any]) -> None:
        """``gc.callbacks`` entry: leave what ``collected`` entered once the collection ends."""
        if phase == "start":
            self.collecting = True
            return
        self.collecting = False
        dying = self.dying
        while dying:
            target, step = dying[-1]
            try:
                try:
                    target.leave(step)
                finally:
                    target.leave(step)  # again: idempotent, finishes an interrupted leave
            except Exception:  # a train() override failing: the others are still left
                pass
            dying.pop()

    def reset(self) -> None:
        """Leave what a collection entered, forget every body, take the callbacks out (tests)."""
        self.after_collection("stop", {})
        self.running.clear()
        self._uninstall()

    def _install(self) -> None:
        callbacks = gc.callbacks
        for callback in self._callbacks:
            if not any(c is callback for c in callbacks):
                callbacks.append(callback)

    def _uninstall(self) -> None:
        callbacks = gc.callbacks
        for callback in self._callbacks:
            for index, c in enumerate(callbacks):
                if c is callback:
                    del callbacks[index]
                    break


bodies = _Bodies()


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
    modules, measure, call, look, net = target.begin(instance, args, kwargs)
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
        ref = bodies.track(gen, target, modules)
        try:
            result = yield from _resume(target, modules, measure, gen, response, call, net)
        except RuntimeError as error:
            _late_fall_back(target, error, inference, measure)
            raise
        finally:
            bodies.untrack(ref)
        return result
    except BaseException as error:
        failure = None if isinstance(error, GeneratorExit) else error  # closed early: fine
        raise
    finally:
        target.end(measure, failure, result, look, net)


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
        ref = bodies.track(inner, self._target, modules)
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
            bodies.untrack(ref)


async def coroutine_call(
    target: Target,
    wrapped: Callable[..., Any],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Await a coroutine with the mode on only while its body runs."""
    modules, measure, call, look, net = target.begin(instance, args, kwargs)
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
        target.end(measure, error, None, look, net)
        raise
    target.end(measure, None, result, look, net)
    return result


async def async_generator_call(
    target: Target,
    wrapped: Callable[..., AsyncGenerator[Any, Any]],
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncGenerator[Any, Any]:
    """Iterate an async generator with the mode on only while its body runs."""
    modules, measure, call, look, net = target.begin(instance, args, kwargs)
    failure: BaseException | None = None
    agen = wrapped(*args, **kwargs)
    inference = target.inference
    ref = bodies.track(agen, target, modules)
    try:
        try:
            response = await _Stepped(target, modules, measure, agen.asend(None), net)
        except StopAsyncIteration:
            return
        except RuntimeError as error:
            if not inference or target.fall_back(error, measure=measure) != "retry":
                raise
            bodies.untrack(ref)
            agen = wrapped(*args, **kwargs)  # nothing reached the caller yet: start again
            ref = bodies.track(agen, target, modules)
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
        bodies.untrack(ref)
        target.end(measure, failure, None, look, net)
