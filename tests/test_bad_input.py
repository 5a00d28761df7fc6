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
    if entry == "guard":  # guard() also takes methods=, so its list names it
        match = match.replace("memory, mode", "memory, methods, mode")
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


# --- misspelt names, and forms borrowed from torch.no_grad() ------------------------------


def test_guard_suggests_methods_for_a_misspelt_keyword_and_lists_it() -> None:
    with pytest.raises(TypeError) as info:
        gradguard.guard(nn.Linear(2, 2), methds=("forward",))  # type: ignore[call-arg]
    message = str(info.value)
    assert "guard() got an unknown option 'methds'; did you mean 'methods'?" in message
    assert "Valid options: eval, log, memory, methods, mode" in message


def test_configure_suggests_the_closest_setting_for_a_misspelt_one() -> None:
    with pytest.raises(TypeError, match=r"unknown option 'consle'; did you mean 'console'\?"):
        gradguard.configure(consle=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"unknown option 'zzz'\. Valid options: "):
        gradguard.configure(zzz=True)  # type: ignore[call-arg]


def test_guard_methods_suggests_only_methods_the_module_has() -> None:
    with pytest.raises(ValueError, match="Linear has no method 'nope'") as info:
        gradguard.guard(nn.Linear(2, 2), methods=("nope",))
    assert "generate" not in str(info.value)
    assert "'reset_parameters'" in str(info.value)
    with pytest.raises(ValueError, match="Linear has no method 'generate'") as info:
        gradguard.guard(nn.Linear(2, 2), methods=("generate",))
    assert "did you mean" not in str(info.value)  # nn.Module's own methods are no near miss

    class Generator(nn.Module):
        def forward(self, x: Any) -> Any:
            return x

        def generate(self, x: Any) -> Any:
            return x

    with pytest.raises(ValueError, match=r"no method 'genrate'; did you mean 'generate'\?"):
        gradguard.guard(Generator(), methods=("genrate",))


def test_scope_used_as_a_decorator_says_to_use_with_or_infer() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"scope\(\) is for a `with` block") as info:

        @gradguard.scope(model)
        def f() -> None:
            pass

    assert "@gradguard.infer" in str(info.value)


@pytest.mark.parametrize("options", [{}, {"mode": "no_grad"}])
def test_infer_used_as_a_block_says_to_use_scope(options: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=r"infer\(\) decorates a function") as info:  # noqa: SIM117
        with gradguard.infer(**options):  # type: ignore[attr-defined]
            pass
    assert "with gradguard.scope(model):" in str(info.value)


async def _enter_infer_async() -> None:
    async with gradguard.infer():  # type: ignore[attr-defined]
        pass


def test_infer_used_as_an_async_block_says_to_use_scope() -> None:
    import asyncio

    with pytest.raises(TypeError, match=r"infer\(\) decorates a function"):
        asyncio.run(_enter_infer_async())


def test_infer_with_options_still_decorates() -> None:
    model = nn.Linear(2, 2)
    decorator = gradguard.infer(mode="no_grad", name="called")

    @decorator
    def f(x: Any) -> Any:
        return model(x)

    out = f(__import__("torch").ones(1, 2))
    assert not out.requires_grad
    assert gradguard.describe(f).name == "called"


def test_guard_used_as_a_block_says_what_guard_does() -> None:
    guarded = gradguard.guard(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"guard\(\) wraps a module") as info:  # noqa: SIM117
        with guarded:  # type: ignore[attr-defined]
            pass
    assert "with gradguard.scope(model):" in str(info.value)


def test_a_guarded_module_that_is_a_context_manager_still_is_one() -> None:
    class Session(nn.Linear):
        entered = 0

        def __enter__(self) -> Session:
            self.entered += 1
            return self

        def __exit__(self, *exc_info: object) -> None:
            self.entered -= 1

    session = Session(2, 2)
    with gradguard.guard(session) as inside:
        assert inside is session
        assert session.entered == 1
    assert session.entered == 0
