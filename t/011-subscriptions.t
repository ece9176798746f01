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
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1\}$/,
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
[qr/^\{"subscriptions":\[\{"id":1001,"name":"alice","status":"offline","last_seen":null\},\{"id":1002,"name":"bob","status":"offline","last_seen":null\}\]\}$/,
 qr/^$/,
 qr/^\{"subscriptions":\[\{"id":1001,"name":"alice","status":"offline","last_seen":null\},\{"id":1002,"name":"bob","status":"online","last_seen":(\d{13})(?{ $::bob = $^N })\}\]\}$/,
 qr/^$/,
 qr/^\{"subscriptions":\[\{"id":1001,"name":"alice","status":"offline","last_seen":null\},\{"id":1002,"name":"bob","status":"offline","last_seen":(??{ $::bob })\}\]\}$/]



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
