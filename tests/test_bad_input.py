"""Bad input fails early, with a message that says what was wrong and what to do."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

import gradguard


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"mode": "fast"}, ValueError, "one of 'auto', 'inference', 'no_grad'; got 'fast'"),
        ({"mdoe": "auto"}, TypeError, "unknown option 'mdoe'; did you mean 'mode'\\?"),
        (
            {"colour": 1},
            TypeError,
            "unknown option 'colour'\\. Valid options: eval, log, memory, mode",
        ),
        ({"outputs": "copy"}, ValueError, "outputs must be one of 'keep', 'clone'; got 'copy'"),
        ({"eval": "yes"}, TypeError, "eval must be True or False; got 'yes'"),
        ({"retry": 1}, TypeError, "retry must be True or False"),
        ({"name": ""}, TypeError, "name must be a non-empty string"),
        ({"modules": 3}, TypeError, "modules must be 'auto', an nn.Module"),
        ({"modules": [nn.Linear(1, 1), 3]}, TypeError, "got 3 \\(int\\)"),
    ],
)
@pytest.mark.parametrize("entry", ["infer", "guard", "scope"])
def test_bad_options_fail_at_decoration_guard_or_scope_time(
    entry: str, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        if entry == "infer":
            gradguard.infer(**options)
        elif entry == "guard":
            gradguard.guard(nn.Linear(1, 1), **options)
        else:
            gradguard.scope(**options)


def test_bare_decorator_checks_options_before_seeing_the_function() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        gradguard.infer(lambda: None, mode="fast")  # type: ignore[call-overload]


@pytest.mark.parametrize("thing", [3, "predict", None.__class__])
def test_infer_rejects_non_callables_and_classes(thing: Any) -> None:
    with pytest.raises(TypeError, match=r"infer\(\) (decorates|cannot decorate)"):
        gradguard.infer(thing)


def test_infer_rejects_a_class_and_says_what_to_do() -> None:
    with pytest.raises(TypeError, match="Decorate the methods that run inference"):
        gradguard.infer(nn.Linear)


def test_modules_name_that_is_no_parameter_fails_at_decoration() -> None:
    with pytest.raises(ValueError, match=r"has no parameter 'model' \(its parameters: x\)"):

        @gradguard.infer(modules=["model"])
        def f(x: int) -> int:
            return x


def test_modules_name_of_missing_attribute_fails_at_call_with_fix() -> None:
    class Holder:
        @gradguard.infer(modules=["encoder"])
        def run(self) -> None:
            pass

    with pytest.raises(AttributeError, match="Holder has no attribute 'encoder'"):
        Holder().run()


def test_modules_name_bound_to_a_non_module_says_so() -> None:
    @gradguard.infer(modules=["model"])
    def f(model: Any) -> None:
        pass

    with pytest.raises(TypeError, match=r"argument 'model' is a str, not an nn.Module"):
        f("oops")


def test_describe_of_something_unguarded() -> None:
    with pytest.raises(TypeError, match=r"describe\(\) takes a function decorated"):
        gradguard.describe(len)
