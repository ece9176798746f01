--
-- 001_schema.sql: users and subscriptions of the presence service.
--
-- The seed's two tables, with their column names unchanged:
--   users              one row per user; status and last_seen are written
--                      behind by the module, in batches (API.md, stores)
--   users_subscribers  user_id subscribes to user_id_t
--
-- Idempotent: applied with psql, in file order, on every deploy; every
-- statement is CREATE ... IF NOT EXISTS, so running it twice is harmless.
--

CREATE EXTENSION IF NOT EXISTS pg_trgm;


CREATE TABLE IF NOT EXISTS users (
    user_id       serial        PRIMARY KEY,
    user_name     varchar(255)  NOT NULL,
    status        varchar(16)   NOT NULL DEFAULT 'offline'
                  CONSTRAINT users_status_check
                  CHECK (status IN ('online', 'offline')),
    last_seen     timestamptz   NULL,
    created_date  timestamptz   NOT NULL DEFAULT now(),
    last_u_date   timestamptz   NOT NULL DEFAULT now()
);

-- names are unique case-insensitively: a taken name is 409 (SQLSTATE 23505)
CREATE UNIQUE INDEX IF NOT EXISTS users_user_name_lower_key
    ON users (lower(user_name));

-- GET /v1/users?q=: lower(user_name) LIKE '%' || lower(q) || '%'
CREATE INDEX IF NOT EXISTS users_user_name_trgm_idx
    ON users USING gin (lower(user_name) gin_trgm_ops);


CREATE TABLE IF NOT EXISTS users_subscribers (
    user_id    int  NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    user_id_t  int  NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,

    PRIMARY KEY (user_id, user_id_t),
    CONSTRAINT users_subscribers_not_self CHECK (user_id <> user_id_t)
);

-- who subscribes to user_id_t (the primary key serves "whom does X follow")
CREATE INDEX IF NOT EXISTS users_subscribers_user_id_t_idx
    ON users_subscribers (user_id_t, user_id);
