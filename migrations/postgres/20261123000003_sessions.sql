-- keygate schema v3 (Postgres). Twin: migrations/sqlite/20261123000003_sessions.sql.
-- Append-only: never edit this file once released; add a new version instead.

-- Token-exchange sessions (SPEC §8, src/token/session.rs): one row per key
-- and client session id behind a family of access and refresh tokens. Only
-- digests of refresh tokens are kept, never a token.
--
-- Writes that change which tokens a gateway admits (insert, replacement,
-- revocation) append an audit_log row in the same transaction, under the
-- audit lock and with pg_notify, so they ride the change feed like key
-- changes. audit_log.action has no CHECK (v1), so the new actions
-- (session_created, session_replaced, session_revoked) and the actor
-- spelling 'key:<key id>' (a client of the token exchange) need no change
-- to that table.
CREATE TABLE sessions (
    -- COLLATE "C" as for every key id column (see v1): byte-wise order and
    -- one collation for the foreign key and the index.
    id                 TEXT COLLATE "C" PRIMARY KEY, -- ses_<ulid>, the tokens' sid claim
    key_id             TEXT COLLATE "C" NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    client_session     TEXT COLLATE "C",            -- the client's session_id; NULL = the key's default session
    scopes             JSONB NOT NULL CHECK (jsonb_typeof(scopes) = 'array'),
    created_at         TIMESTAMPTZ NOT NULL,
    expires_at         TIMESTAMPTZ NOT NULL,        -- the current refresh token's expiry
    revoked_at         TIMESTAMPTZ,                 -- NULL = not revoked
    revoked_reason     TEXT CHECK (revoked_reason IN ('admin', 'refresh_reuse')),
    family_digest      BYTEA NOT NULL CHECK (octet_length(family_digest) = 32), -- BLAKE3, see src/token/refresh.rs
    refresh_digest     BYTEA NOT NULL CHECK (octet_length(refresh_digest) = 32),
    refresh_generation BIGINT NOT NULL CHECK (refresh_generation >= 0),
    access_jti         TEXT NOT NULL,               -- the current access token's jti, iat and exp
    access_issued_at   TIMESTAMPTZ NOT NULL,
    access_expires_at  TIMESTAMPTZ NOT NULL,
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);

-- One session per key and client session id, NULL counting as one value
-- (the key's default session) that is distinct from every string, '' too:
-- the index keys on (is it NULL, the text or ''), so NULL -> (true, '') and
-- '' -> (false, ''). Expressions rather than UNIQUE NULLS NOT DISTINCT,
-- which would need Postgres 15, and so the SQLite twin has the same shape.
-- Leading with key_id, it is also the index on key_id (login lookups, the
-- cascade from keys); a separate one would only add write cost.
CREATE UNIQUE INDEX sessions_key_client
    ON sessions (key_id, (client_session IS NULL), (COALESCE(client_session, '')));

-- No index on expires_at: rotations rewrite it on every refresh (an index
-- on it would also rule out HOT updates), while the cleanup that would use
-- it runs rarely and may scan.
