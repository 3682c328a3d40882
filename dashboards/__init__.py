"""Grafana dashboards as code (DESIGN §7).

- `spec`: what a dashboard is (frozen dataclasses), independent of Grafana's JSON;
- `overview`, `heads`, `items`, `versions`, `health`: the five dashboards; `catalog`
  lists them; `common` holds their shared variables, annotations and SQL pieces;
- `sql`: Grafana's interpolation (template variables, then the PostgreSQL plugin's
  macros), for PostgreSQL and for SQLite stores; `run`: queries run and shaped as
  Grafana's panels read them;
- `grafana`: specs to dashboard JSON (grafana-foundation-sdk); `provision`: the export;
  `push`, `annotate`, `client`: the HTTP API (grafana-client); `role`: the read-only
  PostgreSQL role (`readonly_role.sql`); `report`: panels as PNG (matplotlib);
  `cli`: `attnmon dashboards ...` and `attnmon report`.

Nothing heavy is imported here: the CLI imports the Grafana and plotting libraries only
in the commands that use them.
"""
