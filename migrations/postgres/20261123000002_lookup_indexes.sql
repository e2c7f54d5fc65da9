-- keygate schema v2 (Postgres). Twin: migrations/sqlite/20261123000002_lookup_indexes.sql.
-- Append-only: never edit this file once released; add a new version instead.

-- Gateways list the prefixes of imported keys at start and after every
-- import (SELECT DISTINCT prefix ... WHERE source = 'imported'). Without an
-- index that reads every secret: a full scan of a million rows at each
-- start. Imported keys are few, so a partial index keeps it small.
CREATE INDEX key_secrets_imported_prefix ON key_secrets (prefix) WHERE source = 'imported';

-- The hot-path lookup orders a short prefix's secrets by id: with id in the
-- key (not only the INCLUDE list) it reads the index alone, no heap and no
-- sort. (SQLite's index on short_prefix already carries the rowid, which is
-- the id, so its twin has nothing to change here.)
DROP INDEX key_secrets_short_prefix;
CREATE INDEX key_secrets_short_prefix ON key_secrets (short_prefix, id)
    INCLUDE (key_id, prefix, hash, source, valid_until);
