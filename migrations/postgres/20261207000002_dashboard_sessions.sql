-- keygate schema v5 (Postgres). Twin: migrations/sqlite/20261207000002_dashboard_sessions.sql.
-- Append-only: never edit this file once released; add a new version instead.

-- Dashboard sessions (SPEC §14): an operator signed in to the console with
-- an admin token (kind 'console', subject = the token's public id), and
-- later a customer in the portal (kind 'portal', subject = the owner, what
-- the entry link allowed in grant_json). In the store, so every replica
-- knows a session and signing out ends it everywhere. Only a BLAKE3 digest
-- of the cookie's session id is kept, never the id. Timestamps follow v1's
-- convention.
CREATE TABLE dashboard_sessions (
    id_digest  BYTEA PRIMARY KEY CHECK (octet_length(id_digest) = 32),
    kind       TEXT COLLATE "C" NOT NULL CHECK (kind IN ('console', 'portal')),
    subject    TEXT COLLATE "C" NOT NULL,
    grant_json JSONB NOT NULL CHECK (jsonb_typeof(grant_json) = 'object'),
    csrf       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
-- The cleanup of expired sessions reads by expiry (rows never change).
CREATE INDEX dashboard_sessions_expires_at ON dashboard_sessions (expires_at);
