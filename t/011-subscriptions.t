# Subscriptions open a user's status; the buddy list; the status gate.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: 403 before subscribing, 200 after, 403 again after unsubscribing
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']]);
--- request eval
["POST /v1/heartbeat", "GET /v1/status/1001", "PUT /v1/subscriptions/1001",
 "GET /v1/status/1001", "PUT /v1/subscriptions/1001",
 "DELETE /v1/subscriptions/1001", "GET /v1/status/1001",
 "DELETE /v1/subscriptions/1001"]
--- more_headers eval
[bearer(1001), (bearer(1002)) x 7]
--- error_code eval
[204, 403, 201, 200, 200, 204, 403, 204]
--- response_body_like eval
[qr/^$/, qr/"code":"not_subscribed"/,
 qr/^\{"id":1001,"name":"alice","status":"online","last_seen":\d{13}\}$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/^\{"id":1001,"name":"alice","status":"online","last_seen":\d{13}\}$/,
 qr/^$/, qr/"code":"not_subscribed"/, qr/^$/]



=== TEST 2: subscribing to oneself is 400, to nobody 404, bad ids 400
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice']]);
--- request eval
["PUT /v1/subscriptions/1001", "PUT /v1/subscriptions/1002",
 "PUT /v1/subscriptions/abc", "POST /v1/subscriptions/1002",
 "POST /v1/subscriptions"]
--- more_headers eval
bearer(1001)
--- error_code eval
[400, 404, 400, 405, 405]
--- response_body_like eval
[qr/"code":"bad_request"/, qr/"code":"not_found"/, qr/"code":"bad_request"/,
 qr/"code":"method_not_allowed"/, qr/"code":"method_not_allowed"/]



=== TEST 3: the buddy list shows live status
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1003, 1001], [1003, 1002]]);
--- request eval
["GET /v1/subscriptions", "POST /v1/heartbeat", "GET /v1/subscriptions",
 PresenceTest::pause(1.2), "GET /v1/subscriptions"]
--- more_headers eval
[bearer(1003), bearer(1002), bearer(1003), "", bearer(1003)]
--- error_code eval
[200, 204, 200, 204, 200]
--- response_body_like eval
[qr/^\{"subscriptions":\[\{"id":1001,"name":"alice","status":"offline","last_seen":null\},\{"id":1002,"name":"bob","status":"offline","last_seen":null\}\],"next":null\}$/,
 qr/^$/,
 qr/^\{"subscriptions":\[\{"id":1001,"name":"alice","status":"offline","last_seen":null\},\{"id":1002,"name":"bob","status":"online","last_seen":(\d{13})(?{ $::bob = $^N })\}\],"next":null\}$/,
 qr/^$/,
 qr/^\{"subscriptions":\[\{"id":1001,"name":"alice","status":"offline","last_seen":null\},\{"id":1002,"name":"bob","status":"offline","last_seen":(??{ $::bob })\}\],"next":null\}$/]



=== TEST 4: GET /v1/status?ids= tells subscribed, not subscribed and unknown apart
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1003, 1001]]);
--- request eval
["GET /v1/status?ids=1001,1002,9999,1003", "GET /v1/status/9999",
 "GET /v1/status/1002", "GET /v1/status/1001"]
--- more_headers eval
bearer(1003)
--- error_code eval
[200, 404, 403, 200]
--- response_body eval
['{"statuses":[{"id":1001,"status":"offline","last_seen":null,"seq":0},{"id":1002,"error":"not_subscribed"},{"id":9999,"error":"not_found"},{"id":1003,"status":"offline","last_seen":null,"seq":0}]}',
 '{"error":{"code":"not_found","message":"no such user"}}',
 '{"error":{"code":"not_subscribed","message":"subscribe to this user to see its status"}}',
 '{"id":1001,"status":"offline","last_seen":null,"seq":0}']



=== TEST 5: the gate is cached: with the database gone, known subscriptions still answer
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
--- request eval
["POST /v1/heartbeat", "GET /v1/status/1001"]
--- more_headers eval
[bearer(1001), bearer(1002)]
--- error_code eval
[204, 200]



=== TEST 6: (same nginx) PostgreSQL stopped: cached gate and heartbeats work, the rest is 503
--- init
pg_stop();
--- request eval
["GET /v1/status/1001", "GET /v1/status?ids=1001", "POST /v1/heartbeat",
 "PUT /v1/subscriptions/1001", "GET /v1/users/1001", "POST /v1/users\n{\"name\":\"x\"}",
 "GET /v1/subscriptions"]
--- more_headers eval
[bearer(1002), bearer(1002), bearer(1002), bearer(1003), bearer(1002), "",
 bearer(1002)]
--- error_code eval
[200, 200, 204, 503, 503, 503, 503]
--- response_body_like eval
[qr/"status":"online"/, qr/"status":"online"/, qr/^$/,
 (qr/^\{"error":\{"code":"unavailable","message":"database unavailable"\}\}$/) x 4]
--- no_error_log
[alert]
[crit]



=== TEST 7: (same nginx) PostgreSQL back: requests succeed again without a restart
--- init
pg_start();
select undef, undef, undef, 6;
--- request eval
["GET /v1/users/1001", "POST /v1/users\n{\"name\":\"back\"}"]
--- more_headers eval
[bearer(1002), ""]
--- error_code eval
[200, 201]
--- no_error_log
[alert]
[crit]



=== TEST 8: presence_subscriptions_max: one more is 409, an existing one stays 200 at the cap
--- http_config eval
$PresenceTest::PG_CONFIG . "presence_subscriptions_max 3;\n"
--- config
    # pg api
--- init
pg_reset(users => [map { [$_, "u$_"] } 1001 .. 1006],
         subs => [[1001, 1002], [1001, 1003]]);
--- request eval
["PUT /v1/subscriptions/1004", "PUT /v1/subscriptions/1005",
 "PUT /v1/subscriptions/1004", "PUT /v1/subscriptions/1002",
 "GET /v1/status/1005", "DELETE /v1/subscriptions/1003",
 "PUT /v1/subscriptions/1005", "PUT /v1/subscriptions/1006",
 "PUT /v1/subscriptions/1001"]
--- more_headers eval
[(bearer(1001)) x 8, bearer(1006)]
--- error_code eval
[201, 409, 200, 200, 403, 204, 201, 409, 201]
--- response_body_like eval
[qr/^\{"id":1004,"name":"u1004"/, error_like('conflict'),
 qr/^\{"id":1004,"name":"u1004"/, qr/^\{"id":1002,"name":"u1002"/,
 error_like('not_subscribed'), qr/^$/, qr/^\{"id":1005,"name":"u1005"/,
 error_like('conflict'), qr/^\{"id":1001,"name":"u1001"/]



=== TEST 9: GET /v1/subscriptions: bad limit or cursor is 400, the last page's next is null
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
--- request eval
["GET /v1/subscriptions?limit=0", "GET /v1/subscriptions?limit=1001",
 "GET /v1/subscriptions?limit=x", "GET /v1/subscriptions?limit=",
 "GET /v1/subscriptions?cursor=%%%", "GET /v1/subscriptions?cursor=AAAA",
 "GET /v1/subscriptions?cursor=", "GET /v1/subscriptions?cursor=AAAAAAAAAAAAAAAA",
 "GET /v1/subscriptions?cursor=MTAwMQMTAwMQMTAwMQ", "GET /v1/subscriptions?limit=1000",
 "GET /v1/subscriptions?limit=1", "GET /v1/subscriptions",
 "GET /v1/subscriptions?cursor=MTAwMQ&limit=5"]
--- more_headers eval
bearer(1002)
--- error_code eval
[400, 400, 400, 400, 400, 400, 400, 400, 400, 200, 200, 200, 200]
--- response_body_like eval
[(error_like('bad_request')) x 9,
 (qr/^\{"subscriptions":\[\{"id":1001,"name":"alice","status":"offline","last_seen":(?:null|\d{13})\}\],"next":null\}$/) x 3,
 qr/^\{"subscriptions":\[\],"next":null\}$/]



=== TEST 10: a set over the cap is read from PostgreSQL and evicts no cached set
--- http_config
presence_zone name=presence size=4m;
presence_heartbeat_timeout 500ms;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_cache_zone name=subs size=1m;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=3s;
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1001, 1002]]);
psql("INSERT INTO users (user_id, user_name) "
     . "SELECT g, 'big' || g FROM generate_series(200001, 400000) g;\n"
     . "INSERT INTO users_subscribers (user_id, user_id_t) "
     . "SELECT 1003, g FROM generate_series(200001, 400000) g;\n");
--- request eval
["GET /v1/status/1002"]
--- more_headers eval
[bearer(1001)]
--- error_code eval
[200]



=== TEST 11: (same nginx) the cached set answers after a 200,000-entry set was loaded
--- init
psql("DELETE FROM users_subscribers WHERE user_id = 1001;\n");
--- request eval
["GET /v1/status/1002", "GET /v1/status?ids=200001,400000,1002,1001",
 "GET /v1/status/1002", "GET /v1/status/399999", "GET /v1/status/1002"]
--- more_headers eval
[bearer(1001), bearer(1003), bearer(1001), bearer(1003), bearer(1001)]
--- error_code eval
[200, 200, 200, 200, 200]
--- response_body_like eval
[qr/^\{"id":1002,/,
 qr/^\{"statuses":\[\{"id":200001,"status":"offline".*\{"id":400000,"status":"offline".*\{"id":1002,"error":"not_subscribed"\},\{"id":1001,"error":"not_subscribed"\}\]\}$/,
 qr/^\{"id":1002,/, qr/^\{"id":399999,/, qr/^\{"id":1002,/]



=== TEST 12: a set that does not fit the cache's zone is not cached and evicts nothing
--- http_config
presence_zone name=presence size=4m;
presence_heartbeat_timeout 500ms;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_cache_zone name=subs size=1m;
presence_subscriptions_max 300000;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=3s;
--- config
    # pg api
--- init
psql("INSERT INTO users_subscribers (user_id, user_id_t) VALUES (1001, 1002);\n");
--- request eval
["GET /v1/status/1002", "GET /v1/status?ids=200001,400000,1002",
 "GET /v1/status/1002"]
--- more_headers eval
[bearer(1001), bearer(1003), bearer(1001)]
--- error_code eval
[200, 200, 200]
--- response_body_like eval
[qr/^\{"id":1002,/,
 qr/^\{"statuses":\[\{"id":200001,"status":"offline".*\{"id":400000,"status":"offline".*\{"id":1002,"error":"not_subscribed"\}\]\}$/,
 qr/^\{"id":1002,/]



=== TEST 13: (same nginx) the small set stayed cached; the large one is read each time
--- init
psql("DELETE FROM users_subscribers WHERE user_id = 1001;\n"
     . "DELETE FROM users_subscribers WHERE user_id = 1003 AND user_id_t = 200001;\n");
--- request eval
["GET /v1/status/1002", "GET /v1/status/200001", "GET /v1/status/200002"]
--- more_headers eval
[bearer(1001), bearer(1003), bearer(1003)]
--- error_code eval
[200, 403, 200]



=== TEST 14: presence_subscriptions_max out of range refuses to start
--- http_config
presence_zone name=presence size=4m;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_subscriptions_max 0;
--- config
    # api
--- must_die
--- error_log
"presence_subscriptions_max" must be between 1 and 1000000



=== TEST 15: a cached set read in the last quarter of its TTL is loaded again ahead
--- http_config
presence_zone name=presence size=4m;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_cache_zone name=subs size=1m;
presence_subscriptions_ttl 4s;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=3s;
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1001, 1002]]);
--- request
GET /v1/status/1002
--- more_headers eval
bearer(1001)
--- error_code: 200



=== TEST 16: (same nginx) it answers meanwhile; once loaded ahead, as PostgreSQL has it, before the TTL is over
--- init
# a row made straight in PostgreSQL: the cached set does not have it
psql("INSERT INTO users_subscribers (user_id, user_id_t) VALUES (1001, 1003);\n");
--- request eval
# at 3.3 s the set answers and is loaded ahead; at 3.6 s (its TTL, 4 s,
# not over: without the load ahead, still 403) the new row counts
["GET /v1/status/1003", PresenceTest::pause(3.2), "GET /v1/status/1002",
 PresenceTest::pause(0.3), "GET /v1/status/1003", "GET /metrics"]
--- more_headers eval
[bearer(1001), "", bearer(1001), "", bearer(1001), ""]
--- error_code eval
[403, 204, 200, 204, 200, 200]
--- response_body_like eval
[qr/"not_subscribed"/, qr/^$/, qr/^\{"id":1002,/, qr/^$/, qr/^\{"id":1003,/,
 qr/presence_subs_misses_total 1\n.*presence_subs_ahead_total 1\n/s]
