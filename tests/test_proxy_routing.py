"""The proxy's routing core (proxy/routing.py), with no sockets: health results and ticks in,
decisions out. DESIGN.md 6: "The proxy performs failover: it detects a dead writer by health checks,
promotes the reader with the highest applied LSN, and points the writer endpoint at it."
"""

from __future__ import annotations

import pytest

from proxy.routing import (CloseConnections, Demote, Endpoint, FailoverAbandoned, FailoverFinished, FailoverKind,
                           FailoverRefused, FailoverStarted, Health, NoCandidate, Promote, PromotionFailed, Router,
                           RoutingConfig, WriterMoved)

CONFIG = RoutingConfig(failure_threshold=3, health_interval_ms=100, replica_lag_ms_max=50)


def writer(node_id: str, epoch: int = 1) -> dict:
    return {"ok": True, "node_id": node_id, "role": "writer", "epoch": epoch, "vdl": 100}


def reader(node_id: str, *, applied_lsn: int | None = 100, lag_ms: float | None = 1.0, tier: int | None = 1,
           epoch: int = 1) -> dict:
    return {"ok": True, "node_id": node_id, "role": "reader", "epoch": epoch, "applied_lsn": applied_lsn,
            "replica_lag_ms": lag_ms, "replica_lag_lsn": 0, "promotion_tier": tier}


def of_type(actions, kind) -> list:
    return [action for action in actions if isinstance(action, kind)]


def healthy_cluster(readers: dict[str, dict] | None = None, now_ms: float = 0) -> Router:
    """db1 the writer (epoch 1), and the given readers (default db2 and db3), all up."""
    readers = readers if readers is not None else {"db2": reader("db2"), "db3": reader("db3")}
    router = Router(["db1", *readers], CONFIG, now_ms)
    router.on_check("db1", writer("db1"), now_ms)
    for node_id, status in readers.items():
        router.on_check(node_id, status, now_ms)
    assert router.writer == "db1"
    return router


def kill(router: Router, node_id: str, now_ms: float) -> list:
    """failure_threshold failed checks in a row; the actions of the last one."""
    actions = []
    for _ in range(CONFIG.failure_threshold):
        actions = router.on_check(node_id, None, now_ms)
    assert router.nodes[node_id].health is Health.DOWN
    return actions


# ---------------------------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------------------------

def test_a_node_is_down_only_after_the_threshold_of_consecutive_failures_and_up_after_one_success():
    router = healthy_cluster()
    router.on_check("db2", None, 10)
    router.on_check("db2", None, 20)
    assert router.nodes["db2"].health is Health.UP, "two failures are below the threshold"
    router.on_check("db2", reader("db2"), 30)
    router.on_check("db2", None, 40)
    router.on_check("db2", None, 50)
    assert router.nodes["db2"].health is Health.UP, "a success in between starts the count again"
    router.on_check("db2", None, 60)
    assert router.nodes["db2"].health is Health.DOWN
    router.on_check("db2", reader("db2"), 70)
    assert router.nodes["db2"].health is Health.UP and router.nodes["db2"].failures == 0


def test_an_error_reply_or_another_node_answering_counts_as_a_failed_check():
    router = healthy_cluster()
    for _ in range(CONFIG.failure_threshold):
        router.on_check("db2", {"ok": False, "error": "busy"}, 10)
    assert router.nodes["db2"].health is Health.DOWN
    for _ in range(CONFIG.failure_threshold):
        router.on_check("db3", reader("db9"), 10)  # a different process now holds db3's port
    assert router.nodes["db3"].health is Health.DOWN
    for _ in range(CONFIG.failure_threshold):
        router.on_check("db1", {**writer("db1"), "epoch": "seven"}, 10)
    assert router.nodes["db1"].health is Health.DOWN, "a reply the router cannot read is no answer"


def test_a_node_that_never_answered_is_not_routed_to():
    router = Router(["db1", "db2"], CONFIG, 0)
    assert router.open_connection(Endpoint.WRITER) is None and router.open_connection(Endpoint.READER) is None
    assert router.nodes["db1"].health is Health.UNKNOWN


# ---------------------------------------------------------------------------------------------
# The writer endpoint
# ---------------------------------------------------------------------------------------------

def test_the_writer_endpoint_follows_the_up_writer_with_the_highest_epoch():
    router = Router(["db1", "db2", "db3"], CONFIG, 0)
    assert of_type(router.on_check("db2", writer("db2", epoch=4), 0), WriterMoved) == [WriterMoved(None, "db2")]
    router.on_check("db1", writer("db1", epoch=3), 0)  # a stale writer, not yet fenced
    assert router.writer == "db2"
    assert router.open_connection(Endpoint.WRITER) == "db2"
    actions = router.on_check("db3", writer("db3", epoch=5), 10)
    assert router.writer == "db3"
    assert CloseConnections("db2", Endpoint.WRITER) in actions, "the old writer's connections would fail anyway"


def test_a_writer_with_an_older_epoch_is_told_to_demote_once():
    router = healthy_cluster()
    actions = router.on_check("db2", writer("db2", epoch=2), 10)
    assert router.writer == "db2" and of_type(actions, Demote) == [Demote("db1")]
    assert of_type(router.on_check("db1", writer("db1", epoch=1), 30), Demote) == [], "told once"
    router.on_check("db1", reader("db1", epoch=2), 40)
    assert router.demote_sent == set()


# ---------------------------------------------------------------------------------------------
# Failover
# ---------------------------------------------------------------------------------------------

def test_a_dead_writer_is_replaced_by_the_reader_with_the_lowest_tier_then_the_highest_lsn():
    router = healthy_cluster({"db2": reader("db2", applied_lsn=500, tier=2), "db3": reader("db3", applied_lsn=90),
                              "db4": reader("db4", applied_lsn=95), "db5": reader("db5", applied_lsn=None)})
    assert router.candidates() == ["db4", "db3", "db5", "db2"]
    actions = kill(router, "db1", 1000)
    assert of_type(actions, FailoverStarted) == [FailoverStarted(FailoverKind.AUTOMATIC, "db1", "writer db1 is down")]
    assert of_type(actions, Promote) == [Promote("db4")]
    assert router.promoting == "db4"


def test_candidates_with_equal_tier_and_lsn_are_taken_by_node_id():
    router = healthy_cluster({"db3": reader("db3"), "db2": reader("db2"), "db4": reader("db4", tier=None)})
    assert router.candidates() == ["db2", "db3", "db4"], "a missing tier counts as the default, 1"
    assert of_type(kill(router, "db1", 1000), Promote) == [Promote("db2")]


def test_while_a_promotion_is_in_flight_nothing_else_is_promoted():
    router = healthy_cluster()
    assert of_type(kill(router, "db1", 1000), Promote) == [Promote("db2")]
    for now_ms in range(1100, 5000, 100):
        assert of_type(router.tick(now_ms), Promote) == []
        assert of_type(router.on_check("db3", reader("db3"), now_ms), Promote) == []
    router.on_check("db2", {**reader("db2"), "role": "promoting"}, 5000)
    router.on_promoted("db2", {"ok": True, "role": "writer", "epoch": 2}, 5100)
    assert of_type(router.tick(5200), Promote) == []


def test_a_node_on_its_way_to_writer_holds_off_a_promotion():
    """A restarted writer reports "recovering" before "writer": promoting a reader meanwhile would
    only make two nodes fight over the volume."""
    router = healthy_cluster()
    kill(router, "db1", 1000)
    router.on_promoted("db2", {"ok": False, "error": "failed"}, 1100)
    router.on_check("db1", {**writer("db1"), "role": "recovering"}, 1200)
    assert of_type(router.tick(1300), Promote) == []
    assert of_type(router.on_check("db1", writer("db1", epoch=2), 1400), FailoverAbandoned), "db1 is back"
    assert router.writer == "db1" and router.failover is None


def test_a_successful_promotion_moves_the_writer_endpoint_and_records_the_failover():
    router = healthy_cluster()
    assert router.open_connection(Endpoint.WRITER) == "db1"
    kill(router, "db1", 1000)
    assert router.writer is None and router.open_connection(Endpoint.WRITER) is None
    actions = router.on_promoted("db2", {"ok": True, "role": "writer", "epoch": 2}, 2500)
    assert router.writer == "db2" and router.open_connection(Endpoint.WRITER) == "db2"
    assert CloseConnections("db1", Endpoint.WRITER) in actions
    finished = of_type(actions, FailoverFinished)
    assert len(finished) == 1
    record = finished[0].record
    assert (record.kind, record.old_writer, record.new_writer, record.duration_ms) == (
        FailoverKind.AUTOMATIC, "db1", "db2", 1500), "from detection to the new writer"
    assert record.outage_ms == 2500, "from db1's last answer (at 0) to the new writer"
    assert router.failovers == [record] and router.failover is None
    assert router.snapshot()["failovers"][0]["duration_ms"] == 1500


def test_a_failed_promotion_is_retried_with_the_next_candidate_on_a_later_tick():
    router = healthy_cluster({"db2": reader("db2", applied_lsn=300), "db3": reader("db3", applied_lsn=200)})
    assert of_type(kill(router, "db1", 1000), Promote) == [Promote("db2")]
    actions = router.on_promoted("db2", {"ok": False, "error": "recovery_failed", "message": "no quorum"}, 1100)
    assert of_type(actions, PromotionFailed) == [PromotionFailed("db2", "recovery_failed: no quorum")]
    assert of_type(actions, Promote) == [], "not in the same breath"
    assert of_type(router.tick(1200), Promote) == [Promote("db3")]
    router.on_promoted("db3", None, 1300)  # no reply at all
    assert of_type(router.tick(1400), Promote) == [Promote("db2")], "every candidate failed once: start over"
    router.on_promoted("db2", {"ok": True, "role": "writer", "epoch": 2}, 1500)
    assert router.writer == "db2"
    assert router.failovers[-1].failed_candidates == ["db2", "db3"]


def test_no_candidate_is_reported_once_and_the_writer_coming_back_ends_the_failover():
    router = healthy_cluster({"db2": reader("db2")})
    kill(router, "db2", 0)
    actions = kill(router, "db1", 1000)
    assert of_type(actions, NoCandidate) == [NoCandidate("db1")]
    assert of_type(router.tick(1100), NoCandidate) == []
    actions = router.on_check("db1", writer("db1", epoch=2), 1200)
    assert router.writer == "db1" and of_type(actions, FailoverAbandoned)
    assert of_type(actions, CloseConnections) == [], "the writer endpoint did not move"


def test_with_no_writer_known_a_failover_waits_the_threshold_in_time():
    router = Router(["db1", "db2"], CONFIG, 0)
    router.on_check("db2", reader("db2"), 0)
    router.on_check("db1", {**writer("db1"), "role": "fenced"}, 0)
    assert of_type(router.tick(CONFIG.writer_grace_ms - 1), Promote) == []
    actions = router.tick(CONFIG.writer_grace_ms)
    assert of_type(actions, Promote) == [Promote("db2")]
    assert "no node reported role writer" in of_type(actions, FailoverStarted)[0].reason


# ---------------------------------------------------------------------------------------------
# The reader endpoint
# ---------------------------------------------------------------------------------------------

def test_readers_within_the_lag_limit_share_the_reader_endpoint_evenly():
    router = healthy_cluster({"db2": reader("db2"), "db3": reader("db3"), "db4": reader("db4", lag_ms=51),
                              "db5": reader("db5", lag_ms=None)})
    assert router.reader_pool() == ["db2", "db3"], "over the limit, or lag unknown: left out"
    picks = [router.open_connection(Endpoint.READER) for _ in range(4)]
    assert picks == ["db2", "db3", "db2", "db3"]
    router.close_connection("db2", Endpoint.READER)
    router.close_connection("db2", Endpoint.READER)
    assert router.open_connection(Endpoint.READER) == "db2", "fewest open connections first"
    assert router.open_connection(Endpoint.READER) == "db2"
    assert router.open_connection(Endpoint.READER, exclude={"db2"}) == "db3"


def test_round_robin_breaks_ties_between_readers_with_equal_connections():
    router = healthy_cluster({"db2": reader("db2"), "db3": reader("db3"), "db4": reader("db4")})
    picks = []
    for _ in range(6):
        node_id = router.open_connection(Endpoint.READER)
        picks.append(node_id)
        router.close_connection(node_id, Endpoint.READER)  # short connections: counts stay equal
    assert picks == ["db2", "db3", "db4", "db2", "db3", "db4"]


def test_the_reader_endpoint_falls_back_to_the_writer_and_then_to_nothing():
    router = healthy_cluster({"db2": reader("db2", lag_ms=500)})
    assert router.reader_pool() == []
    assert router.open_connection(Endpoint.READER) == "db1"
    assert router.snapshot()["readers"] == ["db1"] and router.snapshot()["reader_fallback_to_writer"]
    router.on_check("db2", reader("db2", lag_ms=2), 10)
    assert router.open_connection(Endpoint.READER) == "db2", "back within the limit"
    kill(router, "db2", 20)
    kill(router, "db1", 30)
    assert router.open_connection(Endpoint.READER) is None
    assert router.nodes["db1"].connections == {Endpoint.WRITER: 0, Endpoint.READER: 1}


# ---------------------------------------------------------------------------------------------
# Planned switchover
# ---------------------------------------------------------------------------------------------

def test_a_planned_switchover_promotes_first_and_demotes_the_old_writer_after():
    router = healthy_cluster({"db2": reader("db2", applied_lsn=90), "db3": reader("db3", applied_lsn=100)})
    router.open_connection(Endpoint.WRITER)
    actions = router.switch_over(None, 1000)
    assert of_type(actions, Promote) == [Promote("db3")], "the default target is the best candidate"
    assert router.writer == "db1", "the old writer keeps serving until the new one is ready"
    actions = router.on_promoted("db3", {"ok": True, "role": "writer", "epoch": 2}, 1800)
    assert router.writer == "db3"
    assert CloseConnections("db1", Endpoint.WRITER) in actions
    assert of_type(actions, Demote) == [Demote("db1")] and not of_type(actions, FailoverFinished)
    assert of_type(router.on_check("db1", writer("db1", epoch=1), 1900), Demote) == [], "demoted once"
    actions = router.on_demoted("db1", {"ok": True}, 2000)
    record = of_type(actions, FailoverFinished)[0].record
    assert (record.kind, record.old_writer, record.new_writer, record.duration_ms, record.demote_ok) == (
        FailoverKind.PLANNED, "db1", "db3", 1000, True)
    assert router.nodes["db1"].role == "reader" and "db1" not in router.reader_pool(), "lag unknown until checked"
    assert of_type(router.switch_over("db1", 2100), Promote) == [Promote("db1")], "and back, at once"


def test_a_planned_switchover_to_a_named_reader():
    router = healthy_cluster()
    assert of_type(router.switch_over("db3", 0), Promote) == [Promote("db3")]


@pytest.mark.parametrize("target, message", [("db1", "already the writer"), ("db9", "no compute node"),
                                             ("db3", "not healthy"), ("db4", "is writer, not a reader")])
def test_a_switchover_to_a_node_that_cannot_take_over_is_refused(target, message):
    router = healthy_cluster({"db2": reader("db2"), "db3": reader("db3"), "db4": reader("db4")})
    kill(router, "db3", 10)
    router.on_check("db4", writer("db4", epoch=0), 10)  # a stale writer, not yet demoted
    with pytest.raises(FailoverRefused, match=message):
        router.switch_over(target, 20)
    assert router.promoting is None and router.failover is None


def test_only_one_failover_at_a_time_and_none_without_a_candidate():
    router = healthy_cluster()
    router.switch_over("db2", 0)
    with pytest.raises(FailoverRefused, match="already in progress"):
        router.switch_over("db3", 10)
    lonely = healthy_cluster({})
    with pytest.raises(FailoverRefused, match="no healthy reader"):
        lonely.switch_over(None, 0)


def test_a_failed_planned_promotion_leaves_the_old_writer_in_place():
    router = healthy_cluster()
    router.switch_over("db2", 0)
    actions = router.on_promoted("db2", {"ok": False, "error": "busy", "message": "try later"}, 100)
    assert of_type(actions, FailoverAbandoned)[0].kind is FailoverKind.PLANNED
    assert of_type(actions, Demote) == [] and router.writer == "db1" and router.failover is None
    assert of_type(router.tick(200), Promote) == [], "the writer is fine: nothing automatic follows"
