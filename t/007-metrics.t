# /metrics counts heartbeats, transitions and online users, and times the
# sweeper's ticks.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a fresh zone
--- config
    # api
--- request
GET /metrics
--- error_code: 200
--- response_headers
Content-Type: text/plain; version=0.0.4
--- response_body_like
^# HELP presence_online_users .*
presence_online_users 0
.*presence_tracked_users 0
.*presence_heartbeats_total 0
.*presence_transitions_total\{to="online"\} 0
presence_transitions_total\{to="offline"\} 0
.*presence_events_published_total 0
.*presence_zone_full_total 0
.*presence_sweep_ticks_total \d+
.*presence_sweep_seconds_total \d+\.\d{9}
.*presence_sweep_max_seconds \d+\.\d{9}



=== TEST 2: heartbeats, a timeout, invisible and back
user 7: 3 heartbeats, one timeout, online again (4th heartbeat), invisible;
user 8: one heartbeat, stays online; user 9: never valid.
--- http_config
    presence_zone name=presence size=4m;
    presence_heartbeat_timeout 60s;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
--- config
    location = /v1/heartbeat { presence_heartbeat; }
    location = /v1/heartbeat-short {
        presence_heartbeat_timeout 300ms;
        presence_heartbeat;
    }
    location /v1/status { presence_status; }
    location = /metrics { presence_metrics; }
    location = /pause { return 204; }
--- request eval
["POST /v1/heartbeat-short", "POST /v1/heartbeat-short",
 "POST /v1/heartbeat-short", PresenceTest::pause(1), "POST /v1/heartbeat",
 "PUT /v1/status\n{\"status\":\"offline\"}", "POST /v1/heartbeat",
 "POST /v1/heartbeat", "GET /metrics"]
--- more_headers eval
[bearer(7), bearer(7), bearer(7), "", bearer(7), bearer(7), bearer(8),
 bearer(9, secret => "not-the-secret-0123456789"), ""]
--- error_code eval
[204, 204, 204, 204, 204, 200, 204, 401, 200]
--- response_body_like eval
[(qr/^$/) x 5, qr/"status":"offline"/, qr/^$/, qr/unauthorized/,
 qr/\npresence_online_users 1\n.*\npresence_tracked_users 2\n.*\npresence_heartbeats_total 5\n.*\npresence_transitions_total\{to="online"\} 3\npresence_transitions_total\{to="offline"\} 2\n.*\npresence_sweep_ticks_total [1-9]\d*\n.*\npresence_sweep_seconds_total 0\.\d{9}\n.*\npresence_sweep_max_seconds 0\.(?!0{9})\d{9}\n/s]
