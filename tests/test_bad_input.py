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


@pytest.mark.parametrize("methods", [5, None, [1], ("generate", 2.0)])
def test_guard_methods_that_are_not_names_say_what_methods_takes(methods: Any) -> None:
    with pytest.raises(TypeError, match=r"guard\(methods=\.\.\.\) takes the names of module"):
        gradguard.guard(nn.Linear(1, 1), methods=methods)


@pytest.mark.parametrize("seed", [1.5, True, "1.5", "zero", [1]])
def test_configure_seed_must_be_an_integer_and_is_never_truncated(seed: Any) -> None:
    with pytest.raises(ValueError, match=r"seed must be an integer or None"):
        gradguard.configure(seed=seed)
    assert gradguard.configure(seed="12").seed == 12
    assert gradguard.configure(seed=None).seed is None


def test_bad_rank_variable_is_named_in_the_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("RANK", "zero")
    gradguard.configure(log_file=str(tmp_path / "calls-{rank}.jsonl"))

    @gradguard.infer
    def f() -> None:
        pass

    with pytest.warns(gradguard.TelemetryWarning, match=r"RANK environment variable .* 'zero'"):
        f()
        gradguard.flush()  # events are written in batches: the file is opened here
    gradguard.configure(log_file=None)


def test_net_option_rejects_a_bad_value() -> None:
    with pytest.raises(ValueError, match=r"net must be one of 'spaced', 'always', 'off'; got 'on'"):
        gradguard.infer(net="on")  # type: ignore[call-overload]
