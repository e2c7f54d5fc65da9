-- keygate schema v3 (SQLite). Twin: migrations/postgres/20261123000003_sessions.sql.
-- Append-only: never edit this file once released; add a new version instead.

-- Token-exchange sessions (SPEC §8, src/token/session.rs): one row per key
-- and client session id behind a family of access and refresh tokens. Only
-- digests of refresh tokens are kept, never a token. Timestamps follow v1's
-- convention (RFC 3339 UTC text, six fractional digits).
--
-- Writes that change which tokens a gateway admits (insert, replacement,
-- revocation) append an audit_log row in the same transaction, so they ride
-- the change feed like key changes. audit_log.action has no CHECK (v1), so
-- the new actions (session_created, session_replaced, session_revoked) and
-- the actor spelling 'key:<key id>' (a client of the token exchange) need
-- no change to that table.
CREATE TABLE sessions (
    id                 TEXT PRIMARY KEY,            -- ses_<ulid>, the tokens' sid claim
    key_id             TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    client_session     TEXT,                        -- the client's session_id; NULL = the key's default session
    scopes             TEXT NOT NULL                -- JSON array of strings, as keys.scopes
                       CHECK (json_valid(scopes) AND json_type(scopes) = 'array'),
    created_at         TEXT NOT NULL,
    expires_at         TEXT NOT NULL,               -- the current refresh token's expiry
    revoked_at         TEXT,                        -- NULL = not revoked
    revoked_reason     TEXT CHECK (revoked_reason IN ('admin', 'refresh_reuse')),
    family_digest      BLOB NOT NULL CHECK (length(family_digest) = 32),  -- BLAKE3, see src/token/refresh.rs
    refresh_digest     BLOB NOT NULL CHECK (length(refresh_digest) = 32),
    refresh_generation INTEGER NOT NULL CHECK (refresh_generation >= 0),
    access_jti         TEXT NOT NULL,               -- the current access token's jti, iat and exp
    access_issued_at   TEXT NOT NULL,
    access_expires_at  TEXT NOT NULL,
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
) STRICT;

-- One session per key and client session id, NULL counting as one value
-- (the key's default session) that is distinct from every string, '' too:
-- the index keys on (is it NULL, the text or ''), so NULL -> (1, '') and
-- '' -> (0, ''). The Postgres twin uses the same expressions. Leading with
-- key_id, it is also the index on key_id (login lookups, the cascade from
-- keys); a separate one would only add write cost.
CREATE UNIQUE INDEX sessions_key_client
    ON sessions (key_id, client_session IS NULL, COALESCE(client_session, ''));

-- No index on expires_at: rotations rewrite it on every refresh, while the
-- cleanup that would use it runs rarely and may scan.
