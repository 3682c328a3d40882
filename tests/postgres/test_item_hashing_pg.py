"""hash_item_ids on a real PostgreSQL: the store tests of tests/test_item_hashing.py (no
raw item id in any column of any table; hashed top-K = plain top-K with hashed keys;
two collectors compacting into the same keys; the ProcessCollector's worker;
forget-items, and tests/test_forget_items.py's), run against it."""

from __future__ import annotations

import pytest
from test_forget_items import (  # noqa: F401
    test_a_model_the_store_does_not_know_is_an_error_not_nothing_to_forget,
    test_a_payload_that_cannot_be_read_is_counted_and_the_rest_forgotten,
    test_raw_events_are_cleared_a_chunk_a_transaction,
    test_the_top_items_of_drift_results_are_forgotten_too,
)
from test_item_hashing import (  # noqa: F401
    plain_url,
    test_forget_items_refuses_a_time_in_the_future,
    test_forget_items_removes_the_ids_stored_before_hashing_was_turned_on,
    test_no_raw_item_id_in_any_table_and_the_top_k_is_the_plain_one_hashed,
    test_the_process_collector_hashes_in_its_worker_before_anything_is_written,
    test_two_collectors_with_one_key_compact_into_the_same_hashed_keys,
)


@pytest.fixture
def store_url(pg_clean_url):
    return pg_clean_url
