"""How a storage link cuts its queue of sealed records into append_many requests (NodeLink._take_request)."""

import random
import types

from aurora_db.constants import BATCH_RECORDS_MAX
from compute_node.storage_client import NodeLink


def test_requests_keep_each_pgs_order_stay_under_the_batch_limit_and_name_a_pg_once():
    rng = random.Random(7)
    for _ in range(100):
        link = NodeLink(types.SimpleNamespace(), "a1", "127.0.0.1", 1)
        link.connected.set()
        sent: dict[int, list] = {}
        for n in range(rng.randrange(1, 30)):
            pg = rng.randrange(6)
            sealed = [(pg, n, i) for i in range(rng.choice([1, 3, 50, 300, BATCH_RECORDS_MAX + 7]))]
            link.enqueue(pg, sealed)
            sent.setdefault(pg, []).extend(sealed)
        requests = []
        while link._queue:
            requests.append(link._take_request())
        assert link._queued_records == 0
        for request in requests:
            assert 0 < sum(len(records) for _, records in request) <= BATCH_RECORDS_MAX
            pgs = [pg for pg, _ in request]
            assert len(pgs) == len(set(pgs))
        for pg, records in sent.items():
            assert [r for request in requests for p, batch in request if p == pg for r in batch] == records
        assert all(sum(len(r) for _, r in request) == BATCH_RECORDS_MAX for request in requests[:-1])  # full
