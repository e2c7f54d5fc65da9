-- keygate schema v2 (SQLite). Twin: migrations/postgres/20261123000002_lookup_indexes.sql.
-- Append-only: never edit this file once released; add a new version instead.

-- Gateways list the prefixes of imported keys at start and after every
-- import (SELECT DISTINCT prefix ... WHERE source = 'imported'). Without an
-- index that reads every secret: a full scan of a million rows at each
-- start. Imported keys are few, so a partial index keeps it small.
CREATE INDEX key_secrets_imported_prefix ON key_secrets (prefix) WHERE source = 'imported';

-- (The Postgres twin also rebuilds key_secrets_short_prefix with the id in
-- its key; here the index on short_prefix already carries the rowid, which
-- is the id.)
