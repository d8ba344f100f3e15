-- The cloud's persistent state. Kept to SQL that PostgreSQL accepts as well, except
-- where marked: a PostgreSQL store gets its own migrations directory with the types
-- noted in the comments.
--
-- Encodings (identical in both databases, so a dump moves between them):
--   node ids        32 lower-case hex characters (PostgreSQL: TEXT, or BYTEA later)
--   addresses       canonical text (`100.64.0.1`, `fd12:3456:789a::1`) (PostgreSQL: TEXT)
--   times           Unix seconds (BIGINT)

CREATE TABLE devices (
    device_id     TEXT    NOT NULL PRIMARY KEY,
    node_id       TEXT    NOT NULL UNIQUE,
    fqdn          TEXT    NOT NULL UNIQUE,
    -- Argon2id PHC string; never the password.
    password_hash TEXT    NOT NULL,
    -- Assigned at the first login and never changed; NULL until then. UNIQUE allows
    -- any number of NULLs in both databases.
    vip4          TEXT    UNIQUE,
    vip6          TEXT    UNIQUE,
    created_at    BIGINT  NOT NULL,
    last_login    BIGINT
);

-- Node ids of removed devices. `id` is the cursor services poll with; it must never be
-- reused, even after old rows are pruned, or a watcher holding a cursor would miss a
-- revocation: hence AUTOINCREMENT (PostgreSQL: BIGSERIAL / GENERATED ALWAYS AS IDENTITY).
CREATE TABLE revocations (
    id         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    node_id    TEXT    NOT NULL,
    revoked_at BIGINT  NOT NULL
);

CREATE INDEX revocations_revoked_at ON revocations (revoked_at);

-- Values several instances must agree on (the generated ULA prefix).
CREATE TABLE settings (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per address pool (keyed by its text, e.g. `100.64.0.0/10`): the slot (host
-- offset inside the pool) the next search for a free address starts at. Allocation
-- locks the database (SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE on
-- this row), so concurrent logins in any number of instances never collide; the
-- UNIQUE constraints on devices.vip4/vip6 are the last line of defence.
CREATE TABLE address_pools (
    pool      TEXT   NOT NULL PRIMARY KEY,
    next_slot BIGINT NOT NULL
);
