"""Which truncation ranges hold (aurora_db/truncation.py): a losing candidate's range, below which
a newer epoch chose its floor, is void; every other range holds."""

import pytest

from aurora_db import truncation


def test_a_range_below_which_a_newer_epoch_chose_its_floor_is_void():
    loser, winner = (600, 700, 13), (600, 650, 14)
    assert truncation.live([loser, winner]) == (winner,)
    assert truncation.live([winner, loser]) == (winner,), "whatever the order they were told in"


def test_ranges_of_successive_recoveries_all_hold():
    """Each recovery saw the ranges before it and chose its floor above them."""
    ranges = [(100, 1100, 2), (1100, 2100, 3), (1500, 2600, 4)]
    assert truncation.live(ranges) == tuple(ranges)


def test_an_older_range_with_a_lower_floor_holds_and_a_range_is_kept_once():
    ranges = [(10, 500, 3), (400, 900, 5), (10, 500, 3)]
    assert truncation.live(ranges) == ((10, 500, 3), (400, 900, 5))


def test_wire_form_round_trips_and_old_pairs_have_epoch_zero():
    assert truncation.from_wire([[1, 2, 3], [4, 5]]) == [(1, 2, 3), (4, 5, 0)]
    assert truncation.to_wire([(1, 2, 3)]) == [[1, 2, 3]]
    assert truncation.from_wire(None) == []
    with pytest.raises(ValueError):
        truncation.from_wire([[1]])
    with pytest.raises(ValueError):
        truncation.from_wire([["a", 2, 3]])
