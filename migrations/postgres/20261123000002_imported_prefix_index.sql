-- keygate schema v2 (Postgres). Twin: migrations/sqlite/20261123000002_imported_prefix_index.sql.
-- Append-only: never edit this file once released; add a new version instead.

-- Gateways list the prefixes of imported keys at start and after every
-- import (SELECT DISTINCT prefix ... WHERE source = 'imported'). Without an
-- index that reads every secret: a full scan of a million rows at each
-- start. Imported keys are few, so a partial index keeps it small.
CREATE INDEX key_secrets_imported_prefix ON key_secrets (prefix) WHERE source = 'imported';
