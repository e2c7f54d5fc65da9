-- keygate schema v1 (Postgres). Twin: migrations/sqlite/20261123000001_keys.sql.
-- Append-only: never edit this file once released; add a new version instead.

-- A key's metadata. Its secrets live in key_secrets (one current secret, plus
-- previous ones until their rotation grace period ends).
CREATE TABLE keys (
    -- COLLATE "C": ids order byte-wise, as in SQLite, whatever the database
    -- locale. Every column holding a key id uses it, so joins, foreign-key
    -- checks and the (…, key_id) indexes agree on one collation.
    id            TEXT COLLATE "C" PRIMARY KEY,     -- key_<ulid>, sorts by creation
    name          TEXT NOT NULL,
    owner         TEXT,
    scopes        JSONB NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(scopes) = 'array'),
    plan          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'revoked')),
    expires_at    TIMESTAMPTZ,                      -- NULL = never
    prefix        TEXT NOT NULL,                    -- current secret's prefix
    short_prefix  TEXT NOT NULL,                    -- current secret's short prefix
    source        TEXT NOT NULL CHECK (source IN ('generated', 'imported')),
    metadata      JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    last_used_at  TIMESTAMPTZ,
    request_count BIGINT NOT NULL DEFAULT 0 CHECK (request_count >= 0)
);
CREATE INDEX keys_owner_id ON keys (owner, id);
CREATE INDEX keys_status_id ON keys (status, id);

-- Every secret that may authenticate a key, found by its short prefix.
CREATE TABLE key_secrets (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id       TEXT COLLATE "C" NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    prefix       TEXT NOT NULL,
    short_prefix TEXT NOT NULL,
    hash         TEXT NOT NULL,                     -- argon2id PHC string
    source       TEXT NOT NULL CHECK (source IN ('generated', 'imported')),
    valid_until  TIMESTAMPTZ,                       -- end of rotation grace; NULL = current
    created_at   TIMESTAMPTZ NOT NULL
);
-- INCLUDE makes the hot-path lookup by short prefix index-only.
CREATE INDEX key_secrets_short_prefix ON key_secrets (short_prefix)
    INCLUDE (key_id, prefix, hash, source, valid_until);
CREATE INDEX key_secrets_key_id ON key_secrets (key_id);
-- Generated short prefixes are unique (imported keys may share one).
CREATE UNIQUE INDEX key_secrets_generated_short_prefix
    ON key_secrets (short_prefix) WHERE source = 'generated';
-- A key has exactly one current secret; rotation demotes the previous one.
CREATE UNIQUE INDEX key_secrets_one_current
    ON key_secrets (key_id) WHERE valid_until IS NULL;

-- Append-only audit trail; seq is the store's change sequence. Identity
-- values are handed out at INSERT and can commit out of order, so writers
-- take a transaction-scoped advisory lock just before inserting here (see
-- src/store/postgres.rs): seq order is then commit order, and a reader
-- following `seq > last seen` never skips a row that commits late.
-- A sequence value is never reused; rolled-back writes leave gaps.
CREATE TABLE audit_log (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id  TEXT COLLATE "C" NOT NULL,              -- no foreign key: the trail outlives keys
    actor   TEXT NOT NULL,                          -- 'cli' or 'admin:<token id>'
    action  TEXT NOT NULL,                          -- created, imported, updated, disabled, enabled, revoked, rotated
    details JSONB NOT NULL DEFAULT '{}'::jsonb,     -- never secrets
    at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_log_key_id ON audit_log (key_id, seq);
CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
-- TRUNCATE fires no row triggers; refuse it too.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Usage counters by outcome (flushed in batches by the gateways).
CREATE TABLE key_usage (
    key_id  TEXT COLLATE "C" NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    outcome TEXT NOT NULL,                          -- SPEC code or 'ok'
    count   BIGINT NOT NULL DEFAULT 0 CHECK (count >= 0),
    PRIMARY KEY (key_id, outcome)
);
