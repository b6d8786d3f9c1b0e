"""The shared argument checks: what they accept, what they return, and the message that lists the valid values."""

import numpy as np
import pytest
import torch

from equinb.validation import check_choice, check_flag, check_setting


def test_a_choice_is_returned_as_given_or_in_lower_case() -> None:
    assert check_choice("sum", ("none", "sum"), "normalisation") == "sum"
    assert check_choice(" Rot90 ", ("rot90",), "group", any_case=True) == "rot90"
    with pytest.raises(ValueError, match="unknown group 'Rot90'; valid: 'rot90'$"):
        check_choice("Rot90", ("rot90",), "group")  # case counts unless any_case
    assert check_choice("rn50", ("RN50", "ViT-B/32"), "backbone", any_case=True) == "RN50"  # as valid spells it
    assert check_choice("RN50", ("RN50",), "backbone", any_case=True) == "RN50"


@pytest.mark.parametrize("value", ["l2", None, 3, ["sum"]])
def test_a_bad_choice_lists_every_valid_value_and_the_note(value) -> None:
    with pytest.raises(ValueError) as err:
        check_choice(value, iter(("none", "softmax", "sum")), "normalisation", note=" (a note)")
    assert str(err.value) == f"unknown normalisation {value!r}; valid: 'none', 'softmax', 'sum' (a note)"


def test_a_setting_names_itself_with_its_value() -> None:
    check_setting("profile", "small", ("small", "paper"))
    for value in ("huge", 1, None):
        with pytest.raises(ValueError, match=rf"^profile={value!r} is not valid; choose one of 'small', 'paper'$"):
            check_setting("profile", value, ("small", "paper"))


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (1, True), (0, False),
                                             (np.bool_(True), True), (torch.tensor(False), False)])
def test_a_flag_takes_what_equals_a_bool(value, expected: bool) -> None:
    out = check_flag(value, "trunk_eval")
    assert out is expected


@pytest.mark.parametrize("value", ["False", "True", 2, 0.5, None, torch.tensor([True, False])])
def test_a_flag_refuses_text_and_other_values(value) -> None:
    with pytest.raises(TypeError, match="trunk_eval must be True or False"):
        check_flag(value, "trunk_eval")
