# Status changes are published to nchan and reach /v1/events subscribers.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceSSE;

workers(2);
master_on();
no_shuffle();

# in logs/: the harness removes it with the server root (t/runner/README.md)
our $SSE = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/sse.out";
$ENV{TEST_NGINX_SSE} = $SSE;

# the http{} part of the blocks without their own (nchan loaded too):
# the one of "# pg api" and the publisher
events_defaults($PresenceTest::PG_CONFIG . <<'CONF');
# events publisher
CONF

run_tests();

__DATA__

=== TEST 1: a follower's stream gets the heartbeat start and the timeout
--- config
    # pg api
    # events
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1002, 1001]]);
$main::sse = sse_start('/v1/events?ids=1001&ticket=' . ticket(1002), $main::SSE);
--- request eval
["POST /v1/heartbeat", "POST /v1/heartbeat", PresenceTest::pause(0.2),
 "POST /v1/heartbeat", PresenceTest::pause(1.5)]
--- more_headers eval
[bearer(1001), bearer(1001), "", bearer(1001), ""]
--- error_code eval
[204, 204, 204, 204, 204]



=== TEST 2: (same nginx) two events only, each within 1 s; 401, 403 and 400 for bad streams
--- init
sse_stop($main::sse);
my ($ev, $status) = sse_read($main::SSE);
Test::More::like($status, qr{^HTTP/1.1 200}, "the stream was open");
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
Test::More::cmp_ok($ev->[0]{t} - $on, '<', 1000, "online within 1 s");
# offline 500ms after the last heartbeat, within a sweep tick
Test::More::cmp_ok($ev->[1]{t} - ($off + 500), '<', 1000,
                   "offline within 1 s");
Test::More::cmp_ok($off, '>', $on, "last_seen of the last heartbeat");
--- request eval
["GET /v1/events?ids=1001", "GET /v1/events?ids=1001&ticket=x.y.z",
 "GET /v1/events?ids=1001&ticket=" . ticket(1001, secret => 'another-secret-0123456789'),
 "GET /v1/events?ids=1001,1003&ticket=" . ticket(1002),
 "GET /v1/events?ids=1003", "GET /v1/events?ids=abc&ticket=" . ticket(1002),
 "GET /v1/events?ids=" . CORE::join(',', 1 .. 256) . "&ticket=" . ticket(1002),
 "GET /metrics"]
--- more_headers eval
[("Accept: text/event-stream") x 4,
 "Accept: text/event-stream\n" . bearer(1002),
 ("Accept: text/event-stream") x 2, ""]
--- error_code eval
[401, 401, 401, 403, 403, 400, 400, 200]
--- response_body_like eval
[(qr/^$|/) x 7,
 qr/presence_events_published_total 2\n.*presence_events_dropped_total 0\n.*presence_events_errors_total 0\n/s]



=== TEST 3: events published by both workers reach one stream
--- config
    # pg api
    # events
--- init
pg_reset(users => [[1100, 'watcher'], map { [$_, "u$_"] } 1101 .. 1140],
         subs => [map { [1100, $_] } 1101 .. 1140]);
$main::sse = sse_start('/v1/events?ids=' . join(',', 1101 .. 1140)
                       . '&ticket=' . ticket(1100), $main::SSE);
--- request eval
[(map { "POST /v1/heartbeat" } 1101 .. 1140), PresenceTest::pause(1.5)]
--- more_headers eval
[(map { bearer($_) } 1101 .. 1140), ""]
--- error_code eval
[(204) x 41]



=== TEST 4: (same nginx) every change came, from two worker processes
--- init
sse_stop($main::sse);
my ($ev) = sse_read($main::SSE);
my %got;
for (@$ev) {
    my ($id, $st, $seq) = $_->{data} =~ /"id":(\d+),"status":"(\w+)".*"seq":(\d+)/;
    push @{ $got{$id} }, "$st/$seq" if $id;
}
Test::More::is(scalar @$ev, 80, "80 events")
    or Test::More::diag(join "\n", map { $_->{data} } @$ev);
Test::More::is_deeply([grep { "@{ $got{$_} || [] }" ne 'online/1 offline/2' } 1101 .. 1140],
                      [], "each user online, then offline");
open my $log, '<', $Test::Nginx::Util::ErrLogFile or die $!;
my %pids;
while (<$log>) {
    $pids{$1}++ if /\[debug\] (\d+)#\d+: presence events: queued user 11\d\d /;
}
Test::More::cmp_ok(scalar keys %pids, '>=', 2, "published by 2 workers")
    or Test::More::diag(join ' ', %pids);
--- request
GET /metrics
--- response_body_like
presence_events_errors_total 0



=== TEST 5: no publisher listening: the API works on, failures are counted
--- http_config
presence_zone name=presence size=4m;
presence_heartbeat_timeout 500ms;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_publish unix:$TEST_NGINX_SERVER_ROOT/logs/nobody.sock:/internal/publish queue=1;
--- config
    # api
--- request eval
["POST /v1/heartbeat", "POST /v1/heartbeat", "POST /v1/heartbeat",
 PresenceTest::pause(0.3), "GET /metrics"]
--- more_headers eval
[bearer(1), bearer(2), bearer(3), "", ""]
--- error_code eval
[204, 204, 204, 204, 200]
--- response_body_like eval
[qr/^$/, qr/^$/, qr/^$/, qr/^$/,
 qr/presence_events_published_total 0\n.*presence_events_dropped_total [1-9]\d*\n.*presence_events_errors_total [1-9]/s]
--- no_error_log
[alert]
[emerg]
