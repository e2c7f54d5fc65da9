-- keygate schema v5 (SQLite). Twin: migrations/postgres/20261207000002_dashboard_sessions.sql.
-- Append-only: never edit this file once released; add a new version instead.

-- Dashboard sessions (SPEC §14): an operator signed in to the console with
-- an admin token (kind 'console', subject = the token's public id), and
-- later a customer in the portal (kind 'portal', subject = the owner, what
-- the entry link allowed in grant_json). In the store, so every replica
-- knows a session and signing out ends it everywhere. Only a BLAKE3 digest
-- of the cookie's session id is kept, never the id. Timestamps follow v1's
-- convention.
CREATE TABLE dashboard_sessions (
    id_digest  BLOB PRIMARY KEY CHECK (length(id_digest) = 32),
    kind       TEXT NOT NULL CHECK (kind IN ('console', 'portal')),
    subject    TEXT NOT NULL,
    grant_json TEXT NOT NULL CHECK (json_valid(grant_json) AND json_type(grant_json) = 'object'),
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
) STRICT;
-- The cleanup of expired sessions reads by expiry (rows never change).
CREATE INDEX dashboard_sessions_expires_at ON dashboard_sessions (expires_at);
