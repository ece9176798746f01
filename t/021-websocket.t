# /v1/events over WebSocket: a real client (t/lib/PresenceWS.pm) gets the
# status changes of a followed user as text frames; refused handshakes.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceWS;

workers(2);
master_on();
no_shuffle();

# in logs/: the harness removes it with the server root (t/runner/README.md)
our $WS = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/ws.out";

# the http{} part of the blocks without their own (nchan loaded too):
# the one of "# pg api" and the publisher
events_defaults($PresenceTest::PG_CONFIG . <<'CONF');
# events publisher
CONF

run_tests();

__DATA__

=== TEST 1: a follower's WebSocket gets the heartbeat start and the timeout
--- config
    # pg api
    # events
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1002, 1001]]);
$main::ws = ws_start('/v1/events?ids=1001&ticket=' . ticket(1002), $main::WS);
--- request eval
["POST /v1/heartbeat", "POST /v1/heartbeat", PresenceTest::pause(0.2),
 "POST /v1/heartbeat", PresenceTest::pause(1.5)]
--- more_headers eval
[bearer(1001), bearer(1001), "", bearer(1001), ""]
--- error_code eval
[204, 204, 204, 204, 204]



=== TEST 2: (same nginx) two text frames only, each within 1 s; refused handshakes
--- init
ws_stop($main::ws);
my ($ev, $status, $accept, $other) = ws_read($main::WS);
Test::More::like($status, qr{^HTTP/1.1 101}, "the upgrade was accepted");
Test::More::ok($accept, "Sec-WebSocket-Accept matches the key");
Test::More::ok(!grep({ $_ eq 'masked' } @$other), "server frames unmasked");
Test::More::is(scalar @$ev, 2, "two events: online, offline")
    or Test::More::diag(join "\n", map { $_->{data} } @$ev);
Test::More::like($ev->[0]{data} // '',
    qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/,
    "online event");
Test::More::like($ev->[1]{data} // '',
    qr/^\{"id":1001,"status":"offline","last_seen":\d{13},"seq":2\}$/,
    "offline event");
my ($on) = ($ev->[0]{data} // '') =~ /"last_seen":(\d+)/;
my ($off) = ($ev->[1]{data} // '') =~ /"last_seen":(\d+)/;
Test::More::cmp_ok(($ev->[0]{t} // 1e15) - ($on // 0), '<', 1000, "online within 1 s");
# offline 500ms after the last heartbeat, within a sweep tick
Test::More::cmp_ok(($ev->[1]{t} // 1e15) - (($off // 0) + 500), '<', 1000,
                   "offline within 1 s");
Test::More::cmp_ok($off // 0, '>', $on // 0, "last_seen of the last heartbeat");
Test::More::like(ws_handshake('/v1/events?ids=1003&ticket=' . ticket(1002)),
    qr{^HTTP/1.1 403}, "a handshake for a user not subscribed to: 403");
Test::More::like(ws_handshake('/v1/events?ids=1001,1003&ticket=' . ticket(1002)),
    qr{^HTTP/1.1 403}, "one id not subscribed to among others: 403");
Test::More::like(ws_handshake('/v1/events?ids=1001&ticket=x.y.z'),
    qr{^HTTP/1.1 401}, "a bad ticket: 401");
--- request
GET /metrics
--- error_code: 200
--- response_body_like: presence_events_published_total 2\n
