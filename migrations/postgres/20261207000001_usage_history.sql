-- keygate schema v4 (Postgres). Twin: migrations/sqlite/20261207000001_usage_history.sql.
-- Append-only: never edit this file once released; add a new version instead.

-- Usage history (SPEC §13): requests per key, per time bucket and outcome
-- ('ok' or a SPEC code), in three tiers told apart by their width in seconds:
-- 60 (minute), 3600 (hour) and 86400 (day). bucket is the bucket's start in
-- seconds since the Unix epoch, a multiple of its width (UTC-aligned).
--
-- Every usage flush adds its counts to all three tiers in one transaction
-- (count = count + excluded.count), so the hour and day tiers are the sums
-- of the minutes without a rollup job: replicas flushing at once add up,
-- none can roll a bucket up twice or miss one, and a tier's pruning
-- (DELETE of buckets older than usage.retention.<tier>) is idempotent.
CREATE TABLE usage_buckets (
    key_id  TEXT COLLATE "C" NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    width   INTEGER NOT NULL CHECK (width IN (60, 3600, 86400)),
    bucket  BIGINT NOT NULL CHECK (bucket % width = 0),
    outcome TEXT COLLATE "C" NOT NULL,
    count   BIGINT NOT NULL CHECK (count >= 0),
    PRIMARY KEY (key_id, width, bucket, outcome)
);
-- Pruning and the busiest-keys ranking read one tier by time.
CREATE INDEX usage_buckets_width_bucket ON usage_buckets (width, bucket);

-- The same per owner, written by the same flush from the key's owner at
-- that moment: an owner's history answers from its own rows instead of
-- summing thousands of keys', and outlives the owner's deleted keys.
CREATE TABLE owner_usage_buckets (
    owner   TEXT COLLATE "C" NOT NULL,
    width   INTEGER NOT NULL CHECK (width IN (60, 3600, 86400)),
    bucket  BIGINT NOT NULL CHECK (bucket % width = 0),
    outcome TEXT COLLATE "C" NOT NULL,
    count   BIGINT NOT NULL CHECK (count >= 0),
    PRIMARY KEY (owner, width, bucket, outcome)
);
CREATE INDEX owner_usage_buckets_width_bucket ON owner_usage_buckets (width, bucket);
