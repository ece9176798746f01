# A full zone refuses new users with 503 and keeps those it has; users gone
# offline (and written to every store) make room for new ones.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a three-user zone takes three users
--- http_config
    presence_zone name=presence size=1m max_users=3;
    presence_heartbeat_timeout 60s;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
--- config
    # api
--- request eval
["POST /v1/heartbeat", "POST /v1/heartbeat", "POST /v1/heartbeat"]
--- more_headers eval
[bearer(1), bearer(2), bearer(3)]
--- error_code eval
[204, 204, 204]



=== TEST 2: (same nginx) the fourth user is refused with 503 and a log line
--- request
POST /v1/heartbeat
--- more_headers eval
bearer(4)
--- error_code: 503
--- response_body_like eval
error_like("unavailable")
--- error_log
presence zone "presence" is full (3 users), user 4 refused
--- no_error_log
[alert]
[crit]



=== TEST 3: (same nginx) it cannot go invisible either; the others are all there
--- request eval
["PUT /v1/status\n{\"status\":\"offline\"}", "POST /v1/heartbeat",
 "GET /v1/status/1", "GET /v1/status/2", "GET /v1/status/3",
 "GET /v1/status/4", "GET /metrics"]
--- more_headers eval
[bearer(4), bearer(1), bearer(1), bearer(2), bearer(3), bearer(4), ""]
--- error_code eval
[503, 204, 200, 200, 200, 200, 200]
--- response_body_like eval
[error_like("unavailable"), qr/^$/,
 qr/^\{"id":1,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/^\{"id":2,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/^\{"id":3,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/^\{"id":4,"status":"offline","last_seen":null,"seq":0\}$/,
 qr/\npresence_online_users 3\n.*\npresence_tracked_users 3\n.*presence_capacity_users 3\n.*\npresence_zone_full_total 2\n/s]
--- no_error_log
[alert]
[crit]



=== TEST 4: users gone offline make room: a full zone takes new users
--- http_config
    presence_zone name=presence size=1m max_users=3;
    presence_heartbeat_timeout 500ms;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
--- config
    # api
--- request eval
["POST /v1/heartbeat", "POST /v1/heartbeat", "POST /v1/heartbeat",
 pause(1),
 "POST /v1/heartbeat", "POST /v1/heartbeat", "POST /v1/heartbeat",
 "GET /v1/status/4", "GET /v1/status/6", "GET /metrics"]
--- more_headers eval
[bearer(1), bearer(2), bearer(3), "", bearer(4), bearer(5), bearer(6),
 bearer(4), bearer(6), ""]
--- error_code eval
[204, 204, 204, 204, 204, 204, 204, 200, 200, 200]
--- response_body_like eval
[qr/^$/, qr/^$/, qr/^$/, qr/^$/, qr/^$/, qr/^$/, qr/^$/,
 qr/^\{"id":4,"status":"online","last_seen":\d{13},"seq":\d*[13579],"activity":"active","devices":\["default"\]\}$/,
 qr/^\{"id":6,"status":"online","last_seen":\d{13},"seq":\d*[13579],"activity":"active","devices":\["default"\]\}$/,
 qr/\npresence_online_users 3\n.*\npresence_tracked_users 3\n.*\npresence_zone_full_total 0\n.*\npresence_reclaimed_total 3\n/s]
--- no_error_log
[error]
[alert]
[crit]
