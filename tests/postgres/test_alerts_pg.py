"""The alerting store code on a real PostgreSQL: the outbox and health tests of
tests/test_alerts_outbox.py, tests/test_alerts_health.py, tests/test_alerts_ended.py and
the store-level ones of tests/test_alerts_delivery_faults.py, run against it."""

from __future__ import annotations

import pytest
from test_alerts_delivery_faults import (  # noqa: F401
    test_a_deliverer_that_read_the_rows_before_another_claimed_them_backs_off,
    test_a_group_being_sent_is_left_alone_by_a_second_deliverer,
    test_a_group_with_a_row_in_flight_waits_so_resolved_never_overtakes_firing,
    test_a_late_outcome_survives_a_store_error_while_recording_it,
    test_a_record_does_not_overwrite_a_claim_taken_over_meanwhile,
    test_a_send_that_ends_after_its_deadline_is_recorded_once_and_not_sent_again,
    test_a_sender_killed_mid_send_is_sent_again_once_its_claim_ends,
    test_delivery_stops_between_groups_once_the_lead_is_lost,
)
from test_alerts_ended import (  # noqa: F401
    test_an_incident_with_a_series_that_ended_unfixed_is_not_resolved_by_the_rest,
)
from test_alerts_health import (  # noqa: F401
    test_no_data_after_the_rollup_still_reads_the_last_minute_with_data,
    test_no_data_fires_after_ten_minutes_and_resolves_when_data_is_back,
    test_notifications_failing_fires_per_receiver_and_resolves,
    test_rejecting_collectors_fire_after_for_with_the_reasons,
)
from test_alerts_outbox import (  # noqa: F401
    test_a_firing_sent_when_a_long_silence_ends_gets_its_retries,
    test_a_receiver_failing_n_times_then_succeeding_gets_it_once,
    test_a_receiver_routed_away_while_an_alert_fires_still_gets_its_resolve,
    test_a_restart_loses_nothing_and_repeats_only_under_the_same_dedup_key,
    test_a_route_edited_while_an_alert_fires_still_resolves_its_incident,
    test_alertmanager_receivers_get_firing_alerts_re_sent,
    test_dedup_keys_follow_group_incidents_and_context_keeps_a_group_firing,
    test_max_age_or_a_permanent_error_marks_failed_with_the_error_and_no_secret,
    test_one_deploy_shifting_40_series_is_one_notification_per_receiver,
    test_prune_keeps_what_still_fires,
    test_routing_by_severity_and_labels_with_continue,
    test_silences_stop_notifications_not_evaluation_and_expire,
    test_two_cycles_of_the_same_window_at_once_evaluate_it_once,
)


@pytest.fixture
def store_url(pg_clean_url):
    return pg_clean_url
