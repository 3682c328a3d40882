-- A read-only PostgreSQL role for Grafana's attnmon datasource.
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -v role=attnmon_grafana \
--        -v password="$ATTNMON_GRAFANA_DB_PASSWORD" -v schema=public -f readonly_role.sql
--
-- or `attnmon dashboards grant` (dashboards.role.readonly_role_sql renders the same file).
-- Safe to run again: after a migration that adds tables, it grants the new ones; it
-- also resets the password.
--
-- It may SELECT the tables the dashboards read, and nothing else: not the raw sampled
-- requests (attention_events: user histories), not the sketches' payload tables, no
-- INSERT/UPDATE/DELETE, no CREATE. Sessions start read-only and time out, so a heavy
-- dashboard cannot hold the store. These are session defaults: any Grafana user who can
-- send a query (Explore, or /api/ds/query) can SET them back, so the grants are the
-- boundary. psql does not expand :variables inside the DO block,
-- hence the set_config hand-over.

SELECT set_config('attnmon.readonly_role', :'role', false),
       set_config('attnmon.readonly_schema', :'schema', false);

DO $attnmon$
DECLARE
  r text := current_setting('attnmon.readonly_role');
  s text := current_setting('attnmon.readonly_schema');
  t text;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
    EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION', r);
  END IF;
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), r);
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, r);
  FOREACH t IN ARRAY ARRAY[
    'models', 'deployments', 'window_aggregates', 'drift_results', 'collector_health',
    'daemon_state', 'pinned_baselines', 'alerts', 'notifications', 'silences'
  ] LOOP
    -- tables of a later migration are granted when this runs after it
    IF to_regclass(format('%I.%I', s, t)) IS NOT NULL THEN
      EXECUTE format('GRANT SELECT ON %I.%I TO %I', s, t, r);
    END IF;
  END LOOP;
  EXECUTE format('ALTER ROLE %I SET search_path = %I', r, s);
  EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', r);
  EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', r, '30s');
  -- Grafana escapes a quote in a variable's value by doubling it, which is only enough
  -- while a backslash is an ordinary character in '...' (a server or database with
  -- standard_conforming_strings off would read \'' as an escaped quote plus the end)
  EXECUTE format('ALTER ROLE %I SET standard_conforming_strings = on', r);
END
$attnmon$;

ALTER ROLE :"role" WITH PASSWORD :'password';
