# An open event stream keeps its owner online (nchan_subscribe_request),
# its end is its device leaving (nchan_unsubscribe_request: offline after
# the grace, never later than the lease), and the lease of the stream's
# heartbeat bounds how long a dead stream can pass for alive.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceSSE;

workers(2);
master_on();
no_shuffle();

# in logs/: the harness removes it with the server root (t/runner/README.md)
our $SSE = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/sse.out";

# heartbeats time out after 500ms; a stream's lease is 2s; nchan ends
# every stream after 1s
# the http{} part of the blocks without their own (nchan loaded too):
# the one of "# pg api" and the publisher
events_defaults($PresenceTest::PG_CONFIG . <<'CONF');
# events publisher stream=2s
CONF

our $CONFIG = <<'CONF';
    location = /v1/heartbeat { presence_heartbeat; }
    location /v1/status { presence_status; }
    location = /pause { return 204; }
    # events timeout=1s hooks
CONF

run_tests();

__DATA__

=== TEST 1: a stream keeps its owner online past the heartbeat timeout; after it ends, the lease runs out
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
$main::sse = sse_start('/v1/events?ids=1001&ticket=' . ticket(1002), $main::SSE);
--- request eval
[PresenceTest::pause(0.3), "GET /v1/status/1002", PresenceTest::pause(0.5),
 "GET /v1/status/1002", PresenceTest::pause(3), "GET /v1/status/1002"]
--- more_headers eval
["", bearer(1002), "", bearer(1002), "", bearer(1002)]
--- error_code eval
[204, 200, 204, 200, 204, 200]
--- response_body_like eval
[qr/^$/,
 qr/^\{"id":1002,"status":"online","last_seen":(\d{13})(?{ $::opened = $^N }),"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/^$/,
 qr/^\{"id":1002,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/^$/,
 qr/^\{"id":1002,"status":"offline","last_seen":(\d{13})(?(?{ $^N - $::opened >= 700 })|(*FAIL)),"seq":2\}$/]
--- no_error_log
[alert]
[crit]
[emerg]
