-- transactional: false
-- A list filtered by category and season at once had no index giving its order: Postgres read the user's rows of
-- one filter through its index, dropped those of other seasons and sorted the rest (tests/test_query_plans.py).
-- CONCURRENTLY, so building it on a large items table does not block uploads and edits meanwhile; hence outside
-- a transaction. A build that failed leaves an invalid index: drop it and run the migration again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS items_user_category_season_created
    ON items (user_id, category, season, created_at DESC, id DESC);
