"""Every phase's parameters are one dataclass: the notebook cell and `--help` are held to it."""

from __future__ import annotations

import dataclasses

import pytest

from mateperf import phases
from mateperf.errors import ParameterError
from mateperf.params import Params, coerce, param


@pytest.mark.parametrize("phase", phases.available_phases())  # live: recorded, no notebook
def test_the_notebook_cell_states_the_dataclass(phase):
    assert phases.notebook_help(phase) == phases.parameter_help(phase)
    assert phases.parameters_source(phase).strip() == phases.parameters_cell(phase).strip()


@pytest.mark.parametrize("phase", phases.names())
def test_the_defaults_are_valid_and_frozen(phase):
    schema = phases.schema(phase)
    p = schema()
    assert dict(p) == phases.defaults(phase)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 1  # type: ignore[misc]
    with pytest.raises(ParameterError, match="unknown parameter 'nope'"):
        schema.from_values({"nope": 1}, what=phase)


@pytest.mark.parametrize(
    ("phase", "values", "message"),
    [
        ("llm", {"trials": 0}, "parameter trials=0 must be at least 1"),
        ("memory", {"messages": 0}, "messages=0 must be at least 1"),
        ("ipc", {"timeout_s": 0.0}, "timeout_s=0.0 must be above 0"),
        ("cpu", {"peer": "unity"}, "peer='unity' must be one of python, csharp"),
        ("gpu", {"profile": "turbo"}, "profile='turbo' must be one of auto"),
        ("final", {"arms": "threads"}, "must include the baseline"),
    ],
)
def test_one_wording_for_a_bad_value_wherever_it_comes_from(phase, values, message):
    with pytest.raises(ParameterError, match=message):
        phases.schema(phase)(**values)
    with pytest.raises(ParameterError, match=message):
        phases.resolve_params(phase, {k: str(v) for k, v in values.items()})


def test_cli_strings_are_cast_to_the_default_type():
    assert coerce("n", "5", 1) == 5 and coerce("x", "2", 1.0) == 2.0
    assert coerce("b", "yes", False) is True and coerce("b", "0", True) is False
    with pytest.raises(ParameterError, match="expected int"):
        coerce("n", "five", 1)
    p = phases.schema("llm")(trials="3", flash_attn="true")
    assert p.trials == 3 and p.flash_attn is True and p["trials"] == 3


def test_a_rule_between_fields_is_checked_once_built():
    @dataclasses.dataclass(frozen=True)
    class Window(Params):
        low: int = param(1, "lower", at_least=0)
        high: int = param(2, "upper")

        def check(self) -> None:
            if self.high < self.low:
                raise ParameterError(f"parameter high={self.high} must be at least low")

    assert Window(low=3, high=4).as_dict() == {"low": 3, "high": 4}
    with pytest.raises(ParameterError, match="high=0 must be at least low"):
        Window(high=0)
    with pytest.raises(ParameterError, match="low=-1 must be at least 0"):
        Window(low=-1)
