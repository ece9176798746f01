# Configurations that must not start.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a handler with no identity refuses to start
--- http_config
    presence_zone name=presence size=4m;
--- config
    location = /v1/heartbeat { presence_heartbeat; }
--- must_die
--- error_log
presence handler without identity



=== TEST 2: a secret and an identity variable at the same level
--- http_config
    presence_zone name=presence size=4m;
--- config
    location = /v1/heartbeat {
        presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
        presence_identity $http_x_user_id;
        presence_heartbeat;
    }
--- must_die
--- error_log
cannot be used with "presence_auth_secret" at the same level



=== TEST 3: handlers need a zone
--- http_config
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
--- config
    location = /v1/heartbeat { presence_heartbeat; }
--- must_die
--- error_log
presence handlers need a "presence_zone"



=== TEST 4: a short secret is refused
--- http_config
    presence_zone name=presence size=4m;
    presence_auth_secret short;
--- config
    # api
--- must_die
--- error_log
the token secret must be at least 16 bytes long



=== TEST 5: bad zone parameters
--- http_config
    presence_zone name=presence size=10k;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
--- config
    # api
--- must_die
--- error_log
needs "size=" of at least 1m



=== TEST 6: timeouts out of range
--- http_config
    presence_zone name=presence size=4m;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
    presence_heartbeat_timeout 2d;
--- config
    # api
--- must_die
--- error_log
must be between 100ms and 1d



=== TEST 7: presence_events_retain: a bad time or size is refused
--- http_config
    presence_zone name=presence size=4m;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
    presence_events_retain 2h;
--- config
    # api
--- must_die
--- error_log
invalid time "2h" (0 to 1h)



=== TEST 8: presence_events_retain: a size too small
--- http_config
    presence_zone name=presence size=4m;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
    presence_events_retain 2m size=1k;
--- config
    # api
--- must_die
--- error_log
invalid size "size=1k"
