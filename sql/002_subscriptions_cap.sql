--
-- 002_subscriptions_cap.sql: PUT /v1/subscriptions/{id} under the cap of
-- presence_subscriptions_max, race-free.
--
-- One subscriber's subscribes run one at a time: the subscriber's users
-- row is locked first.  In a VOLATILE function each statement reads a
-- fresh snapshot (READ COMMITTED), so the count after the lock sees what
-- the subscribe before it committed; in one plain statement it would not
-- (its snapshot predates the lock), and two PUTs racing at cap - 1 would
-- both go in.
--
-- No row: no such target (404).  created: 1 new (201), 0 it existed (200),
-- -1 the cap is reached (409), -2 the subscriber is no user (404).
--
-- last_seen: the target's, ms since the epoch (null: never seen), for a
-- target the presence table no longer holds.
--
-- Idempotent, as 001: CREATE OR REPLACE (dropped first when an earlier
-- version returned fewer columns).
--

DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc
               WHERE proname = 'presence_subscribe'
                 AND pg_get_function_result(oid) NOT LIKE '%last_seen%')
    THEN
        DROP FUNCTION presence_subscribe(int, int, int);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION presence_subscribe(subscriber int, target int,
                                              cap int)
    RETURNS TABLE (id int, name varchar, created int, last_seen bigint)
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
BEGIN
    SELECT u.user_id, u.user_name,
           (extract(epoch FROM u.last_seen) * 1000)::bigint
        INTO id, name, last_seen
        FROM users u WHERE u.user_id = target;

    IF NOT FOUND THEN
        RETURN;
    END IF;

    PERFORM 1 FROM users u WHERE u.user_id = subscriber FOR UPDATE;

    IF NOT FOUND THEN
        created := -2;

    ELSIF EXISTS (SELECT 1 FROM users_subscribers s
                  WHERE s.user_id = subscriber AND s.user_id_t = target)
    THEN
        created := 0;

    ELSIF (SELECT count(*) FROM users_subscribers s
           WHERE s.user_id = subscriber) >= cap
    THEN
        created := -1;

    ELSE
        INSERT INTO users_subscribers (user_id, user_id_t)
            VALUES (subscriber, target);
        created := 1;
    END IF;

    RETURN NEXT;
END
$$;
