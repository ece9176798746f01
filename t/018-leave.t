# Leaving (issue 14 item 3): POST /v1/leave?device= (a bearer token, or
# "token" in the form body navigator.sendBeacon sends) and the close of a
# device's last event stream; when the last device leaves, offline
# presence_offline_grace later with last_seen the moment it left, and
# nothing at all published when a device heartbeats within the grace.  A
# heartbeat timeout is not delayed by the grace.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceSSE;
use PresenceWS;

workers(2);
master_on();
no_shuffle();

# in logs/: the harness removes it with the server root (t/runner/README.md)
our $SSE = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/sse.out";
our $WS = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/ws.out";
our $OWN = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/own.out";

# heartbeats time out after 3 s, a stream's lease is 10 s; a grace of 1 s
(our $HTTP = $PresenceTest::PG_CONFIG) =~ s/500ms/3s/;
$HTTP .= <<'CONF';
presence_offline_grace 1s;
# events publisher stream=10s
CONF
events_defaults($HTTP);

our $CONFIG = <<'CONF';
    # pg api
    location = /v1/leave { presence_leave; }
    # events hooks
CONF

# the events of a stream file: [[arrival ms, data], ...]
sub events_of {
    my ($file, $reader) = @_;
    my ($ev) = $reader->($file);
    return [map { [$_->{t}, $_->{data}] } @$ev];
}

run_tests();

__DATA__

=== TEST 1: the last device leaves: offline after the grace, last seen when it left, one event
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
$main::sse = sse_start('/v1/events?ids=1001&ticket=' . ticket(1002), $main::SSE);
--- request eval
[PresenceTest::pause(0.3), "POST /v1/heartbeat?device=web",
 PresenceTest::pause(0.2), "POST /v1/leave?device=web", "GET /v1/status/1001",
 PresenceTest::pause(1.5), "GET /v1/status/1001"]
--- more_headers eval
["", bearer(1001), "", (bearer(1001)) x 2, "", bearer(1001)]
--- error_code eval
[204, 204, 204, 204, 200, 204, 200]
--- response_body_like eval
[(qr/^$/) x 4,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["web"\]\}$/,
 qr/^$/,
 qr/^\{"id":1001,"status":"offline","last_seen":\d{13},"seq":2\}$/]
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 2: (same nginx) online, then offline within grace + 200 ms of the leave
--- init
sse_stop($main::sse);
my $ev = main::events_of($main::SSE, \&sse_read);
Test::More::is(scalar @$ev, 2, 'two events')
    or Test::More::diag(Test::More::explain($ev));
Test::More::like($ev->[1][1] // '',
    qr/^\{"id":1001,"status":"offline","last_seen":\d{13},"seq":2\}$/,
    'offline, no devices');
my ($on) = ($ev->[0][1] // '') =~ /"last_seen":(\d+)/;
my ($left) = ($ev->[1][1] // '') =~ /"last_seen":(\d+)/;
Test::More::cmp_ok($left - $on, '>=', 150, 'last seen when it left, not at its heartbeat');
Test::More::cmp_ok($ev->[1][0] - $left, '>=', 1000, 'not before the grace');
Test::More::cmp_ok($ev->[1][0] - $left, '<', 1200, 'within the grace + 200 ms');
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]



=== TEST 3: leave, then a heartbeat within the grace: nothing published at all
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
$main::ws = ws_start('/v1/events?ids=1001&ticket=' . ticket(1002), $main::WS);
--- request eval
[PresenceTest::pause(0.3), "POST /v1/heartbeat?device=web",
 "POST /v1/leave?device=web", PresenceTest::pause(0.4),
 "POST /v1/heartbeat?device=web", PresenceTest::pause(1.2),
 "GET /v1/status/1001"]
--- more_headers eval
["", (bearer(1001)) x 2, "", bearer(1001), "", bearer(1001)]
--- error_code eval
[204, 204, 204, 204, 204, 204, 200]
--- response_body_like eval
[(qr/^$/) x 6,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["web"\]\}$/]
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 4: (same nginx) the WebSocket saw the first online only
--- init
ws_stop($main::ws);
my $ev = main::events_of($main::WS, \&ws_read);
Test::More::is_deeply([map { $_->[1] =~ s/"last_seen":\d+/"last_seen":T/r } @$ev],
    ['{"id":1001,"status":"online","last_seen":T,"seq":1,"activity":"active","devices":["web"]}'],
    'one event');
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]



=== TEST 5: sendBeacon: the token in a form body; bad or no token 401
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice']], subs => []);
--- request eval
["POST /v1/heartbeat?device=web", "POST /v1/heartbeat?device=phone",
 "POST /v1/leave?device=phone\ntoken=" . PresenceTest::token(1001),
 "GET /v1/status/1001",
 "POST /v1/leave?device=web\ntoken=x.y.z", "POST /v1/leave?device=web\nfoo=bar",
 "POST /v1/leave?device=web", "GET /v1/leave", "GET /v1/status/1001"]
--- more_headers eval
[bearer(1001), bearer(1001),
 "Content-Type: application/x-www-form-urlencoded",
 bearer(1001),
 ("Content-Type: application/x-www-form-urlencoded") x 2, "", bearer(1001),
 bearer(1001)]
--- error_code eval
[204, 204, 204, 200, 401, 401, 401, 405, 200]
--- response_body_like eval
[qr/^$/, qr/^$/, qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\}$/,
 (error_like('unauthorized')) x 3, error_like('method_not_allowed'),
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\}$/]
--- no_error_log
[alert]
[crit]



=== TEST 6: a closed stream is its device leaving; two streams of one device count once
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
$main::sse = sse_start('/v1/events?ids=1001&ticket=' . ticket(1002), $main::SSE);
$main::own1 = sse_start('/v1/events?ids=1001&device=web&ticket=' . ticket(1001), $main::OWN . 1);
$main::own2 = ws_start('/v1/events?ids=1001&device=web&ticket=' . ticket(1001), $main::OWN . 2);
--- request eval
[PresenceTest::pause(0.5), "GET /v1/status/1001", "POST /v1/heartbeat?device=phone",
 "GET /v1/status/1001", "POST /v1/leave?device=phone", "GET /v1/status/1001"]
--- more_headers eval
["", (bearer(1001)) x 5]
--- error_code eval
[204, 200, 204, 200, 204, 200]
--- response_body_like eval
[qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["web"\]\}$/,
 qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":2,"activity":"active","devices":\["phone","web"\]\}$/,
 qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\}$/]
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 7: (same nginx) one of web's two streams closes: still online, nothing changes
--- init
sse_stop($main::own1);
--- request eval
[PresenceTest::pause(1.5), "GET /v1/status/1001"]
--- more_headers eval
["", bearer(1001)]
--- error_code eval
[204, 200]
--- response_body_like eval
[qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\}$/]
--- no_error_log
[alert]
[crit]



=== TEST 8: (same nginx) its last stream closes: web leaves, offline after the grace
--- init
ws_stop($main::own2);
--- request eval
[PresenceTest::pause(0.4), "GET /v1/status/1001", PresenceTest::pause(1.0),
 "GET /v1/status/1001"]
--- more_headers eval
["", bearer(1001), "", bearer(1001)]
--- error_code eval
[204, 200, 204, 200]
--- response_body_like eval
[qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\}$/,
 qr/^$/,
 qr/^\{"id":1001,"status":"offline","last_seen":\d{13},"seq":4\}$/]
--- no_error_log
[alert]
[crit]



=== TEST 9: (same nginx) the watcher saw exactly those four changes
--- init
sse_stop($main::sse);
my $ev = main::events_of($main::SSE, \&sse_read);
Test::More::is_deeply([map { $_->[1] =~ /"seq":(\d+)/ ? $1 : '?' } @$ev],
    [1, 2, 3, 4], 'online, phone, phone gone, offline: seq + 1 each')
    or Test::More::diag(Test::More::explain($ev));
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]



=== TEST 10: a heartbeat timeout is not delayed by the grace
--- config eval: $::CONFIG
--- http_config eval
(my $c = $::HTTP) =~ s/presence_offline_grace 1s;/presence_offline_grace 5s;/;
$c =~ s/3s;/1s;/;
$c
--- init
pg_reset(users => [[1001, 'alice']], subs => []);
--- request eval
["POST /v1/heartbeat?device=web", PresenceTest::pause(0.3),
 "POST /v1/leave?device=web", PresenceTest::pause(1.1), "GET /v1/status/1001"]
--- more_headers eval
[bearer(1001), "", bearer(1001), "", bearer(1001)]
--- error_code eval
[204, 204, 204, 204, 200]
--- response_body_like eval
[(qr/^$/) x 4,
 qr/^\{"id":1001,"status":"offline","last_seen":\d{13},"seq":2\}$/]
--- no_error_log
[alert]
[crit]
