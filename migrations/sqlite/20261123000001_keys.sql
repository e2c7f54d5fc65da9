-- keygate schema v1 (SQLite). Twin: migrations/postgres/20261123000001_keys.sql.
-- Append-only: never edit this file once released; add a new version instead.
--
-- Conventions the store relies on:
-- * Timestamps are RFC 3339 UTC text with exactly six fractional digits
--   (2026-11-23T12:00:00.000000Z), so comparing them as text compares instants.
-- * scopes, metadata and audit details are JSON text.
-- * STRICT tables: a value of the wrong type is an error, not a silent cast.

-- A key's metadata. Its secrets live in key_secrets (one current secret, plus
-- previous ones until their rotation grace period ends).
CREATE TABLE keys (
    id            TEXT PRIMARY KEY,                 -- key_<ulid>, sorts by creation
    name          TEXT NOT NULL,
    owner         TEXT,
    scopes        TEXT NOT NULL DEFAULT '[]'        -- JSON array of strings
                  CHECK (json_valid(scopes) AND json_type(scopes) = 'array'),
    plan          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'revoked')),
    expires_at    TEXT,                             -- NULL = never
    prefix        TEXT NOT NULL,                    -- current secret's prefix
    short_prefix  TEXT NOT NULL,                    -- current secret's short prefix
    source        TEXT NOT NULL CHECK (source IN ('generated', 'imported')),
    metadata      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    last_used_at  TEXT,
    request_count INTEGER NOT NULL DEFAULT 0 CHECK (request_count >= 0)
) STRICT;
CREATE INDEX keys_owner_id ON keys (owner, id);
CREATE INDEX keys_status_id ON keys (status, id);

-- Every secret that may authenticate a key, found by its short prefix.
CREATE TABLE key_secrets (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id       TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    prefix       TEXT NOT NULL,
    short_prefix TEXT NOT NULL,
    hash         TEXT NOT NULL,                     -- argon2id PHC string
    source       TEXT NOT NULL CHECK (source IN ('generated', 'imported')),
    valid_until  TEXT,                              -- end of rotation grace; NULL = current
    created_at   TEXT NOT NULL
) STRICT;
CREATE INDEX key_secrets_short_prefix ON key_secrets (short_prefix);
CREATE INDEX key_secrets_key_id ON key_secrets (key_id);
-- Generated short prefixes are unique (imported keys may share one).
CREATE UNIQUE INDEX key_secrets_generated_short_prefix
    ON key_secrets (short_prefix) WHERE source = 'generated';
-- A key has exactly one current secret; rotation demotes the previous one.
CREATE UNIQUE INDEX key_secrets_one_current
    ON key_secrets (key_id) WHERE valid_until IS NULL;

-- Append-only audit trail; seq is the store's change sequence. AUTOINCREMENT
-- so a sequence number is never reused, even after the newest row is lost.
CREATE TABLE audit_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id  TEXT NOT NULL,                          -- no foreign key: the trail outlives keys
    actor   TEXT NOT NULL,                          -- 'cli' or 'admin:<token id>'
    action  TEXT NOT NULL,                          -- created, imported, updated, disabled, enabled, revoked, rotated
    details TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details)), -- never secrets
    at      TEXT NOT NULL
) STRICT;
CREATE INDEX audit_log_key_id ON audit_log (key_id, seq);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- Usage counters by outcome (flushed in batches by the gateways).
CREATE TABLE key_usage (
    key_id  TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    outcome TEXT NOT NULL,                          -- SPEC code or 'ok'
    count   INTEGER NOT NULL DEFAULT 0 CHECK (count >= 0),
    PRIMARY KEY (key_id, outcome)
) STRICT;
