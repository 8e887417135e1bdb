"""How the writer cuts a boxcar of records into append_many requests (storage_client.requests_of)."""

import random

from aurora_db.constants import BATCH_RECORDS_MAX
from compute_node.storage_client import requests_of


def test_requests_keep_each_pgs_order_stay_under_the_batch_limit_and_name_a_pg_once():
    rng = random.Random(7)
    for _ in range(200):
        by_pg = {pg: [(pg, i) for i in range(rng.choice([1, 3, 50, BATCH_RECORDS_MAX, 2 * BATCH_RECORDS_MAX + 1]))]
                 for pg in rng.sample(range(20), rng.randrange(1, 8))}
        requests = requests_of(by_pg)
        for request in requests:
            assert 0 < sum(len(records) for _, records in request) <= BATCH_RECORDS_MAX
            pgs = [pg for pg, _ in request]
            assert len(pgs) == len(set(pgs))
        for pg, records in by_pg.items():
            assert [r for request in requests for p, batch in request if p == pg for r in batch] == records
        assert len(requests) == -(-sum(map(len, by_pg.values())) // BATCH_RECORDS_MAX)  # no request wasted
