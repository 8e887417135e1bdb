"""Sans-I/O decisions of storage healing (storage_node/gossip.py): what to pull from which peer,
and when a node that started empty has learned enough of the volume to serve.

Aurora 2017, 3.3: 'gossip with peers to fill gaps'; 2.1: a read quorum of 3 of 6 always
overlaps the write quorum of 4 that made an epoch or a truncation durable."""

from storage_node.gossip import JoinDecision, Pull, SegmentView, decide_join, plan_pulls, views_from_status


def view(scl: int, base: int = 0, damaged: bool = False) -> SegmentView:
    return SegmentView(scl, base, damaged)


# --- plan_pulls -------------------------------------------------------------------------------


def test_pulls_only_what_a_peer_held_a_round_ago():
    """Records the writer is still delivering to both are not fetched twice."""
    mine = {0: view(10)}
    before = {"b": {0: view(30)}}
    now = {"b": {0: view(80)}}
    assert plan_pulls(mine, now, before, mine) == [Pull(0, "b", after_lsn=10, upto_lsn=30, image=False)]


def test_a_peer_seen_for_the_first_time_is_not_pulled_from():
    mine = {0: view(10)}
    assert plan_pulls(mine, {"b": {0: view(80)}}, {}, mine) == []
    assert plan_pulls(mine, {"b": {0: view(80)}}, {"b": {1: view(80)}}, mine) == [], "nor for a PG it did not hold"


def test_a_peer_that_held_no_more_than_we_hold_is_not_pulled_from():
    mine = {0: view(30), 1: view(5)}
    before = {"b": {0: view(30), 1: view(4)}}
    now = {"b": {0: view(90), 1: view(90)}}
    assert plan_pulls(mine, now, before, mine) == []


def test_the_peer_that_held_the_most_is_chosen_one_pull_per_pg():
    mine = {0: view(10), 1: view(0)}
    before = {"b": {0: view(40), 1: view(7)}, "c": {0: view(60), 1: view(9)}, "d": {0: view(50), 1: view(12)}}
    now = {"b": {0: view(70), 1: view(20)}, "c": {0: view(61), 1: view(20)}, "d": {0: view(55), 1: view(11)}}
    assert plan_pulls(mine, now, before, mine) == [Pull(0, "c", 10, 60, image=False), Pull(1, "d", 0, 11, image=False)]


def test_a_peer_that_went_back_since_is_trusted_only_up_to_what_it_holds_now():
    """A truncation on the peer: the round-ago SCL is no longer there to pull."""
    mine = {0: view(10)}
    assert plan_pulls(mine, {"b": {0: view(25)}}, {"b": {0: view(60)}}, mine) == [Pull(0, "b", 10, 25, image=False)]


def test_a_pg_this_node_lacks_is_pulled_from_zero():
    assert plan_pulls({}, {"b": {3: view(40)}}, {"b": {3: view(40)}}, {}) == [Pull(3, "b", 0, 40, image=False)]


def test_a_damaged_peer_is_never_pulled_from():
    mine = {0: view(10)}
    before = {"b": {0: view(60)}, "c": {0: view(30)}}
    now = {"b": {0: view(60, damaged=True)}, "c": {0: view(30)}}
    assert plan_pulls(mine, now, before, mine) == [Pull(0, "c", 10, 30, image=False)]


def test_a_peer_whose_base_is_above_our_scl_sends_its_image_first():
    """It collected the records we lack: only its page image has them."""
    before = {"b": {0: view(60, base=50)}}
    now = {"b": {0: view(70, base=55)}}
    assert plan_pulls({0: view(40)}, now, before, {0: view(40)}) == [Pull(0, "b", 40, 60, image=True)]
    assert plan_pulls({0: view(55)}, now, before, {0: view(55)}) == [Pull(0, "b", 55, 60, image=False)], "base at our SCL: records do"


def test_a_damaged_segment_copies_an_image_even_from_a_peer_no_further_ahead():
    before = {"b": {0: view(40, base=30)}, "c": {0: view(20, base=20)}}
    now = {"b": {0: view(40, base=30)}, "c": {0: view(20, base=20)}}
    assert plan_pulls({0: view(40, base=10, damaged=True)}, now, before, {0: view(40, base=10, damaged=True)}) == [Pull(0, "b", 40, 40, image=True)]
    assert plan_pulls({0: view(45, base=10, damaged=True)}, now, before, {0: view(45, base=10, damaged=True)}) == [], "no peer holds what we hold"


def test_a_segment_that_moved_since_the_last_round_is_left_to_the_writer():
    """On a busy machine a segment the writer still feeds may lag its peers by more than a round:
    fetching the same records from a peer as well would only add work."""
    before = {"b": {0: view(60)}}
    now = {"b": {0: view(90)}}
    assert plan_pulls({0: view(40)}, now, before, {0: view(20)}) == []
    assert plan_pulls({0: view(40)}, now, before, {0: view(40)}) == [Pull(0, "b", 40, 60, image=False)]


def test_views_from_status_reads_a_status_reply():
    reply = {"ok": True, "segments": {0: {"scl": 40, "base": 30, "records": 3, "damaged": False},
                                      "7": {"scl": 9, "base": 0, "damaged": True}, 2: {"scl": 5, "base": 5}}}
    assert views_from_status(reply) == {0: view(40, 30), 7: view(9, 0, True), 2: view(5, 5)}
    assert views_from_status({"ok": True}) == {} and views_from_status({"segments": None}) == {}


# --- decide_join ------------------------------------------------------------------------------


def status(epoch: int, pgs: dict | None = None, truncations=(), writer=None, rebuilding=False) -> dict:
    return {"ok": True, "epoch": epoch, "pgs": pgs or {}, "truncations": [list(t) for t in truncations],
            "writer": writer, "rebuilding": rebuilding}


def test_join_waits_for_three_peers_that_know_the_volume():
    replies = {"b": status(4, {0: 10}), "c": status(4, {0: 10})}
    assert decide_join(replies, 5) == JoinDecision(False)
    replies["d"] = status(3, {0: 8}, rebuilding=True)  # emptied itself: it knows nothing
    assert decide_join(replies, 5) == JoinDecision(False)
    replies["e"] = status(4, {0: 10})
    assert decide_join(replies, 5).done


def test_join_takes_the_newest_epoch_its_writer_and_every_truncation_range():
    """Any write quorum overlaps these three: the newest epoch and every durable range are among them."""
    replies = {
        "b": status(4, {0: 90}, truncations=[(10, 1010, 2)], writer="w4:1"),
        "c": status(6, {0: 80}, truncations=[(10, 1010, 2), (500, 1500, 6)], writer="w6:1"),
        "d": status(5, {0: 70}, truncations=[(300, 1300, 5), (400, 1600, 4)], writer="w5:1"),
        "e": status(0, rebuilding=True, truncations=[(1, 99, 0)]),  # an emptied peer's word counts for nothing
    }
    decision = decide_join(replies, 5)
    assert decision.done and decision.epoch == 6 and decision.writer == "w6:1"
    # (400, 1600] of epoch 4 is void: epoch 5's recovery chose a floor below it, so never saw it.
    assert sorted(decision.truncations) == [(10, 1010, 2), (300, 1300, 5), (500, 1500, 6)]


def test_a_read_quorum_of_empty_epoch_zero_peers_is_a_new_volume():
    """Had a writer ever run, a write quorum (4) would hold its epoch: 3 empty peers rule that out.
    At first start every node is empty and joining, so rebuilding peers count here."""
    empty = {p: status(0, rebuilding=True) for p in "bcd"}
    assert decide_join(empty, 5) == JoinDecision(True, 0, None, ())
    assert decide_join({p: status(0) for p in "bc"}, 5) == JoinDecision(False), "two are not a read quorum"
    mixed = {**{p: status(0, rebuilding=True) for p in "bc"}, "d": status(0, {0: 12})}
    assert decide_join(mixed, 5) == JoinDecision(False), "one peer holds data: the volume is not new"
    older = {**{p: status(0, rebuilding=True) for p in "bc"}, "d": status(2)}
    assert decide_join(older, 5) == JoinDecision(False), "one peer saw epoch 2: a writer ran"


def test_a_smaller_cluster_needs_every_peer_it_has():
    assert decide_join({"b": status(3, {0: 1})}, 2) == JoinDecision(False)
    decision = decide_join({"b": status(3, {0: 1}), "c": status(2, {0: 1})}, 2)
    assert decision.done and decision.epoch == 3
