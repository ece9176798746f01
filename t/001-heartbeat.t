# Heartbeats make a user online; silence past the timeout makes it offline,
# last seen at its last heartbeat.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a heartbeat makes the caller online
--- config
    # api
--- request eval
["POST /v1/heartbeat", "GET /v1/status/7"]
--- more_headers eval
bearer(7)
--- error_code eval
[204, 200]
--- response_body_like eval
[qr/^$/, qr/^\{"id":7,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/]
--- response_headers eval
["", "Content-Type: application/json"]



=== TEST 2: a user never seen is offline, last seen null, seq 0
--- config
    # api
--- request
GET /v1/status/8
--- more_headers eval
bearer(8)
--- error_code: 200
--- response_body chomp
{"id":8,"status":"offline","last_seen":null,"seq":0}



=== TEST 3: silence past the timeout: offline, last_seen = last heartbeat
The second heartbeat's time is captured from the status answer and must be
the offline user's last_seen.
--- config
    # api
--- request eval
["POST /v1/heartbeat", pause(0.2), "POST /v1/heartbeat", "GET /v1/status/7",
 pause(1.2), "GET /v1/status/7"]
--- more_headers eval
bearer(7)
--- error_code eval
[204, 204, 204, 200, 204, 200]
--- response_body_like eval
[qr/^$/, qr/^$/, qr/^$/,
 qr/^\{"id":7,"status":"online","last_seen":(\d{13})(?{ $::seen = $^N }),"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/^$/,
 qr/^\{"id":7,"status":"offline","last_seen":(??{ $::seen }),"seq":2\}$/]



=== TEST 4: heartbeats within the timeout keep the user online, seq unchanged
--- config
    # api
--- request eval
["POST /v1/heartbeat", pause(0.3), "POST /v1/heartbeat", pause(0.3),
 "POST /v1/heartbeat", pause(0.3), "POST /v1/heartbeat", "GET /v1/status/7"]
--- more_headers eval
bearer(7)
--- error_code eval
[204, 204, 204, 204, 204, 204, 204, 200]
--- response_body_like eval
[qr/^$/, qr/^$/, qr/^$/, qr/^$/, qr/^$/, qr/^$/, qr/^$/,
 qr/^\{"id":7,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/]



=== TEST 5: coming back after a timeout is a new change: seq 3
--- config
    # api
--- request eval
["POST /v1/heartbeat", pause(1.2), "POST /v1/heartbeat", "GET /v1/status/7"]
--- more_headers eval
bearer(7)
--- error_code eval
[204, 204, 204, 200]
--- response_body_like eval
[qr/^$/, qr/^$/, qr/^$/,
 qr/^\{"id":7,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["default"\]\}$/]



=== TEST 6: the heartbeat body is ignored, not parsed
--- config
    # api
--- request
POST /v1/heartbeat
this is { not json
--- more_headers eval
bearer(9)
--- error_code: 204
--- response_body:



=== TEST 7: GET /v1/status?ids= answers in request order, self included
--- config
    # api
--- request eval
["POST /v1/heartbeat", "GET /v1/status?ids=3,7,7,2147483647"]
--- more_headers eval
bearer(7)
--- error_code eval
[204, 200]
--- response_body_like eval
[qr/^$/, qr/^\{"statuses":\[\{"id":3,"error":"not_subscribed"\},\{"id":7,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\},\{"id":7,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\},\{"id":2147483647,"error":"not_subscribed"\}\]\}$/]



=== TEST 8: another user's status is 403 not_subscribed (until subscriptions)
--- config
    # api
--- request
GET /v1/status/8
--- more_headers eval
bearer(7)
--- error_code: 403
--- response_body chomp
{"error":{"code":"not_subscribed","message":"subscribe to this user to see its status"}}



=== TEST 9: the default timeout is 30 s: a second later the user is online
--- http_config
    presence_zone name=presence size=4m;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
--- config
    # api
--- request eval
["POST /v1/heartbeat", pause(1.2), "GET /v1/status/7"]
--- more_headers eval
bearer(7)
--- error_code eval
[204, 204, 200]
--- response_body_like eval
[qr/^$/, qr/^$/, qr/"status":"online"/]
