--
-- 003_search.sql: no search scans the whole users table (issue 10, item 4).
--
-- GET /v1/users?q= orders by lower(user_name) in code point order (names
-- are unique lowercased: no ties).
--
-- A q of 1 or 2 characters is a prefix match (the module's own
-- statement), a range of the index below read in order: it stops after
-- LIMIT rows.
--   lower(user_name) COLLATE "C" LIKE lower(q) || '%'
--
-- A longer q is presence_search_contains(), which decides by the q
-- itself, with pg_trgm's own idea of a word character (alnum in the
-- database's ctype):
-- - with 3 of them in a row, a substring match through the trigram index
--   of 001: at most "scan" of the matching rows are taken from the index
--   (no order), and the first "n" of those by name are the answer.
--   Sorting every match (ORDER BY name LIMIT n over 100,000 matches reads
--   and sorts them all), or walking the name index and filtering (reads
--   the whole index when the matches are few or late in the order), is
--   what this avoids.  When more than "scan" users match, the answer is
--   the first by name of "scan" of them: a longer q narrows it.
-- - else ("!!!", "a b", emoji) the trigram index would have nothing to
--   look up and read all of itself: a prefix match, a range of the index
--   above.
-- Seq scans are off inside the function, so that a common q cannot be
-- planned as a scan of the table either.
--
-- Idempotent, like 001.
--

CREATE INDEX IF NOT EXISTS users_user_name_lower_c_idx
    ON users ((lower(user_name) COLLATE "C"));


CREATE OR REPLACE FUNCTION presence_search_contains(q text, caller int,
                                                    n int, scan int)
RETURNS TABLE (user_id int, user_name varchar, subscribed boolean,
               last_seen_ms bigint)
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    lq  text := lower(q);
BEGIN
    IF lq ~ '[[:alnum:]]{3}' THEN
        RETURN QUERY
        SELECT c.user_id, c.user_name,
               EXISTS (SELECT 1 FROM users_subscribers s
                       WHERE s.user_id = caller
                       AND s.user_id_t = c.user_id),
               (extract(epoch from c.last_seen) * 1000)::bigint
        FROM (SELECT u.user_id, u.user_name, u.last_seen FROM users u
              WHERE lower(u.user_name) LIKE
                    '%' || replace(replace(replace(lq, '\', '\\'),
                                           '%', '\%'), '_', '\_') || '%'
              LIMIT scan) c
        ORDER BY lower(c.user_name) COLLATE "C"
        LIMIT n;

    ELSE
        -- code point U+10FFFF closes the range of names starting with lq
        RETURN QUERY
        SELECT u.user_id, u.user_name,
               EXISTS (SELECT 1 FROM users_subscribers s
                       WHERE s.user_id = caller
                       AND s.user_id_t = u.user_id),
               (extract(epoch from u.last_seen) * 1000)::bigint
        FROM users u
        WHERE lower(u.user_name) COLLATE "C" >= lq COLLATE "C"
          AND lower(u.user_name) COLLATE "C"
              < (lq || chr(1114111)) COLLATE "C"
          AND starts_with(lower(u.user_name), lq)
        ORDER BY lower(u.user_name) COLLATE "C"
        LIMIT n;
    END IF;
END
$$;
