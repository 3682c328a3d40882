"""Which spill folder a store URL names (collectors.spill.store_folder): two stores must
never share one, or one store's batches are replayed into the other; one store spelled
two ways should share one, or a batch waits for a spelling that may not come back."""

from __future__ import annotations

from collectors.spill import store_folder


def test_stores_in_two_schemas_of_one_database_have_folders_of_their_own():
    """A store is a database and a schema (the daemon's lead is one per schema; the tests
    give each store a schema of its own): staging and production in one database."""
    base = "postgresql+psycopg://attnmon@db.example/attnmon"
    staging = store_folder(f"{base}?options=-csearch_path%3Dstaging")
    assert staging != store_folder(f"{base}?options=-csearch_path%3Dproduction")
    assert staging != store_folder(base)  # (the role's default search_path: public)
    # the same schema, however the options spell it and whatever else they set
    assert staging == store_folder(f"{base}?options=-c%20search_path%3Dstaging%20-c%20statement_timeout%3D5000")
    assert staging == store_folder(f"{base}?options=--search_path%3Dstaging")
