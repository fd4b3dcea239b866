-- Initial schema: users, items, jobs (the outbox of background work), capsules.

CREATE TABLE users (
    id               bigint PRIMARY KEY,              -- the Telegram user id
    display_name     text NOT NULL DEFAULT '',
    username         text,
    profile          jsonb NOT NULL DEFAULT '{}'::jsonb,
    wardrobe_version bigint NOT NULL DEFAULT 1,       -- bumped by every write; versions cache keys
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE items (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status       text NOT NULL DEFAULT 'processing'
                 CHECK (status IN ('processing', 'ready', 'failed')),
    category     text,
    colors       jsonb NOT NULL DEFAULT '[]'::jsonb,
    season       text,
    style        text,
    pattern      text,
    material     text,
    formality    smallint,
    brand        text,
    notes        text,
    image_key    text NOT NULL,
    cutout_key   text,
    user_fields  text[] NOT NULL DEFAULT '{}',        -- fields the user set: the AI never overwrites them
    analysis     jsonb,                               -- the last analysis as returned (with its source)
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Keyset pagination, newest first, plain and per filter.
CREATE INDEX items_user_created ON items (user_id, created_at DESC, id DESC);
CREATE INDEX items_user_category_created ON items (user_id, category, created_at DESC, id DESC);
CREATE INDEX items_user_season_created ON items (user_id, season, created_at DESC, id DESC);

CREATE TABLE capsules (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'ready', 'failed')),
    occasion         text,
    season           text,
    size             smallint NOT NULL DEFAULT 3,
    name             text,
    description      text,
    outfits          jsonb NOT NULL DEFAULT '[]'::jsonb,
    source           text,
    wardrobe_version bigint,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX capsules_user_created ON capsules (user_id, created_at DESC, id DESC);

CREATE TABLE jobs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('process_item', 'build_capsule')),
    stage         text NOT NULL,                      -- which queue's step is next: 'cutout', 'analyze', 'capsule'
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    item_id       uuid REFERENCES items (id) ON DELETE CASCADE,
    capsule_id    uuid REFERENCES capsules (id) ON DELETE CASCADE,
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 5,
    error         text,
    result        jsonb,
    request_id    text,
    run_after     timestamptz NOT NULL DEFAULT clock_timestamp(),  -- not before (backoff, rate limits)
    enqueued_at   timestamptz,                        -- NULL: committed but never handed to Redis
    locked_until  timestamptz,                        -- the lease of the worker running it
    started_at    timestamptz,
    finished_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX jobs_user ON jobs (user_id, created_at DESC);
CREATE INDEX jobs_item ON jobs (item_id);
-- The reaper's scans: only unfinished jobs are indexed.
CREATE INDEX jobs_unfinished ON jobs (state, run_after) WHERE state IN ('queued', 'running');
