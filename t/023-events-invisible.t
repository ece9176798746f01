# Events of going invisible and visible again, and none about users the
# stream did not ask for.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceSSE;

workers(2);
master_on();
no_shuffle();

# in logs/: the harness removes it with the server root (t/runner/README.md)
our $SSE = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/sse.out";

# heartbeats time out after 500ms; a stream's lease is 2s
# the http{} part of the blocks without their own (nchan loaded too):
# the one of "# pg api" and the publisher
events_defaults($PresenceTest::PG_CONFIG . <<'CONF');
# events publisher stream=2s
CONF

our $CONFIG = <<'CONF';
    location = /v1/heartbeat { presence_heartbeat; }
    location /v1/status { presence_status; }
    location = /pause { return 204; }
    # events check hooks
CONF

run_tests();

__DATA__

=== TEST 1: heartbeat, invisible, visible: three events; nothing about a user not asked for
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1002, 1001], [1002, 1003]]);
$main::sse = sse_start('/v1/events?ids=1001&ticket=' . ticket(1002), $main::SSE);
select undef, undef, undef, 0.3;
--- request eval
["POST /v1/heartbeat", "POST /v1/heartbeat",
 "PUT /v1/status\n{\"status\":\"offline\"}", "POST /v1/heartbeat",
 "PUT /v1/status\n{\"status\":\"online\"}", "POST /v1/heartbeat",
 PresenceTest::pause(0.3)]
--- more_headers eval
[bearer(1003), bearer(1001), bearer(1001), bearer(1001), bearer(1001),
 bearer(1001), ""]
--- error_code eval
[204, 204, 200, 204, 200, 204, 204]



=== TEST 2: (same nginx) the stream got exactly those three, in order, each within 1 s
--- init
sse_stop($main::sse);
my ($ev) = sse_read($main::SSE);
Test::More::is(scalar @$ev, 3, "three events, none for user 1003")
    or Test::More::diag(join "\n", map { $_->{data} } @$ev);
my @want = (qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/,
            qr/^\{"id":1001,"status":"offline","last_seen":\d{13},"seq":2\}$/,
            qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["default"\]\}$/);
for my $i (0 .. 2) {
    Test::More::like($ev->[$i]{data} // '', $want[$i], "event $i");
    my ($ls) = ($ev->[$i]{data} // '') =~ /"last_seen":(\d+)/;
    Test::More::cmp_ok(($ev->[$i]{t} // 1e15) - ($ls // 0), '<', 1000,
                       "event $i within 1 s of its change");
}
--- request
GET /v1/status/1001
--- more_headers eval
bearer(1002)
--- error_code: 200
--- response_body_like: "status":"online".*"seq":3



=== TEST 3: (same nginx) more ids than nchan's 1024-character channel id holds: 400, not a misleading 403
--- request eval
["GET /v1/events?ids=" . CORE::join(',', 1000001 .. 1000100) . "&ticket=" . ticket(1002)]
--- more_headers
Accept: text/event-stream
--- error_code: 400
--- response_body_like: "code":"bad_request","message":"ids must be user ids whose channels fit in 1024 characters"
