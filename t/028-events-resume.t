# Streams that resume (issue 14): an EventSource that reconnects with
# Last-Event-ID (a WebSocket with ?last_event_id=) first receives, in
# order, the changes of its users it missed within presence_events_retain,
# then live ones; when that cannot be done, {"resync": true} first.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceSSE;
use PresenceWS;
use POSIX ();
use Time::HiRes ();

workers(2);
master_on();
no_shuffle();

our $OUT = "$ENV{TEST_NGINX_SERVER_ROOT}/logs";

events_defaults($PresenceTest::PG_CONFIG . <<'CONF');
# events publisher
presence_events_retain  2s;
CONF

# "<id>:<status>" of each event, "resync" for a resync
sub changes {
    my ($ev) = @_;
    return join ' ', map {
        $_->{data} =~ /"resync": ?true/ ? 'resync'
        : $_->{data} =~ /^\{"id":(\d+),"status":"(\w+)"/ ? "$1:$2"
        : $_->{data}
    } @$ev;
}

run_tests();

__DATA__

=== TEST 1: a garbage id: {"resync": true} first, then live changes
--- config
    # pg api
    # events hooks
--- init
pg_reset(users => [[2801, 'alice'], [2802, 'bob'], [2810, 'watcher']],
         subs => [[2810, 2801], [2810, 2802]]);
my $t = ticket(2810);
$main::sse = sse_start("/v1/events?ids=2801,2802&ticket=$t", "$main::OUT/s1",
                       headers => "Last-Event-ID: garbage\r\n");
--- request eval
[PresenceTest::pause(0.3), "POST /v1/heartbeat", PresenceTest::pause(0.5)]
--- more_headers eval
["", bearer(2801), ""]
--- error_code eval
[204, 204, 204]
--- no_error_log
[alert]



=== TEST 2: (same nginx) the resync came first, then the change
--- init
sse_stop($main::sse);
my ($ev) = sse_read("$main::OUT/s1");
Test::More::like(main::changes($ev), qr/^resync 2801:online\b/,
                 'resync, then live');
--- request
GET /v1/status/2801
--- more_headers eval
bearer(2810)
--- error_code: 200




=== TEST 3: a stream sees a change, then is cut
--- config
    presence_heartbeat_timeout  30s;
    # pg api
    # events hooks
--- init
pg_reset(users => [[2801, 'alice'], [2802, 'bob'], [2810, 'watcher']],
         subs => [[2810, 2801], [2810, 2802]]);
$main::t = ticket(2810);
$main::sse = sse_start("/v1/events?ids=2801,2802&ticket=$main::t",
                       "$main::OUT/s3");
--- request eval
[PresenceTest::pause(0.3), "POST /v1/heartbeat", PresenceTest::pause(0.4)]
--- more_headers eval
["", bearer(2801), ""]
--- error_code eval
[204, 204, 204]



=== TEST 4: (same nginx) while it is away: three changes of its users, one of another
--- init
sse_stop($main::sse);
my ($ev) = sse_read("$main::OUT/s3");
Test::More::is(main::changes($ev), '2801:online', 'the first stream');
$main::id = $ev->[-1]{id};
Test::More::like($main::id // '', qr/^\d+:\[0\],-$/, 'its id');
--- request eval
["POST /v1/heartbeat", "PUT /v1/status\n{\"status\":\"offline\"}",
 "POST /v1/heartbeat", "PUT /v1/status\n{\"status\":\"online\"}",
 PresenceTest::pause(0.3)]
--- more_headers eval
[bearer(2802), bearer(2801), bearer(2810), bearer(2801), ""]
--- error_code eval
[204, 200, 204, 200, 204]



=== TEST 5: (same nginx) it comes back with Last-Event-ID: the three changes, in order, then live ones
--- init
$main::sse = sse_start("/v1/events?ids=2801,2802&ticket=$main::t",
                       "$main::OUT/s5",
                       headers => "Last-Event-ID: $main::id\r\n");
--- request eval
[PresenceTest::pause(0.4), "PUT /v1/status\n{\"status\":\"offline\"}",
 PresenceTest::pause(0.4)]
--- more_headers eval
["", bearer(2802), ""]
--- error_code eval
[204, 200, 204]



=== TEST 6: (same nginx) exactly what it missed, no duplicate; its last id resumes again
--- init
sse_stop($main::sse);
my ($ev, $status) = sse_read("$main::OUT/s5");
Test::More::like($status // '', qr{^HTTP/1.1 200}, 'open');
Test::More::is(main::changes($ev),
               '2802:online 2801:offline 2801:online 2802:offline',
               'the missed changes in order, then the live one');
my @seq = map { /"seq":(\d+)/ ? $1 : 0 } map { $_->{data} } @$ev;
Test::More::is("@seq", '1 2 3 2', 'their seqs');
$main::id = $ev->[-1]{id};
Test::More::like($main::id // '', qr/^\d+:[-\d\[\]]+,[-\d\[\]]+,[-\d\[\]]+$/,
                 'an id of three channels (its own one last)');
--- request eval
["PUT /v1/status\n{\"status\":\"online\"}", PresenceTest::pause(0.2)]
--- more_headers eval
[bearer(2802), ""]
--- error_code eval
[200, 204]



=== TEST 7: (same nginx) a WebSocket resumes with ?last_event_id= of the SSE id
--- init
(my $e = $main::id) =~ s/([^A-Za-z0-9])/sprintf '%%%02X', ord $1/ge;
$main::ws = ws_start("/v1/events?ids=2801,2802&ticket=$main::t"
                     . "&last_event_id=$e", "$main::OUT/w7");
--- request eval
[PresenceTest::pause(0.4)]
--- error_code eval
[204]



=== TEST 8: (same nginx) it got the change made since the id, then nothing else
--- init
ws_stop($main::ws);
my ($ev) = ws_read("$main::OUT/w7");
Test::More::is(main::changes($ev), '2802:online', 'the missed change');
--- request eval
[PresenceTest::pause(2.2)]
--- error_code eval
[204]



=== TEST 9: (same nginx) an id older than presence_events_retain: {"resync": true}, then live
--- init
$main::sse = sse_start("/v1/events?ids=2801,2802&ticket=$main::t",
                       "$main::OUT/s9",
                       headers => "Last-Event-ID: $main::id\r\n");
--- request eval
[PresenceTest::pause(0.3), "PUT /v1/status\n{\"status\":\"offline\"}",
 PresenceTest::pause(0.4)]
--- more_headers eval
["", bearer(2801), ""]
--- error_code eval
[204, 200, 204]



=== TEST 10: (same nginx) resync first; its id resumes
--- init
sse_stop($main::sse);
my ($ev) = sse_read("$main::OUT/s9");
Test::More::is(main::changes($ev), 'resync 2801:offline', 'resync, then live');
$main::id = $ev->[-1]{id};
--- request eval
["PUT /v1/status\n{\"status\":\"online\"}", PresenceTest::pause(0.2)]
--- more_headers eval
[bearer(2801), ""]
--- error_code eval
[200, 204]



=== TEST 11: (same nginx) from the id after a resync: the change since
--- init
$main::sse = sse_start("/v1/events?ids=2801,2802&ticket=$main::t",
                       "$main::OUT/s11",
                       headers => "Last-Event-ID: $main::id\r\n");
--- request eval
[PresenceTest::pause(0.4)]
--- error_code eval
[204]



=== TEST 12: (same nginx) exactly that change; the metrics count them
--- init
sse_stop($main::sse);
my ($ev) = sse_read("$main::OUT/s11");
Test::More::is(main::changes($ev), '2801:online', 'the missed change');
--- request
GET /metrics
--- error_code: 200
--- response_body_like
presence_events_resumed_total (?:[3-9]|[1-9]\d+)\n.*presence_events_resynced_total [1-9]\d*\n.*presence_events_kept [1-9]\d*
--- no_error_log
[alert]
[error]



=== TEST 13: a stream sees two users come online
--- config
    presence_heartbeat_timeout  30s;
    # pg api
    # events hooks
--- init
pg_reset(users => [[2801, 'alice'], [2802, 'bob'], [2810, 'watcher']],
         subs => [[2810, 2801], [2810, 2802]]);
$main::t = ticket(2810);
$main::sse = sse_start("/v1/events?ids=2801,2802&ticket=$main::t",
                       "$main::OUT/s13");
--- request eval
[PresenceTest::pause(0.3), "POST /v1/heartbeat", "POST /v1/heartbeat",
 PresenceTest::pause(0.4)]
--- more_headers eval
["", bearer(2801), bearer(2802), ""]
--- error_code eval
[204, 204, 204, 204]



=== TEST 14: (same nginx) randomized: clients cut and resume their streams again and again while both users change: none loses a change
--- init
sse_stop($main::sse);
my ($ev) = sse_read("$main::OUT/s13");
Test::More::is(main::changes($ev), '2801:online 2802:online', 'the first');
my $id = $ev->[-1]{id};
my %from = map { /"id":(\d+).*"seq":(\d+)/ ? ($1 => $2) : () }
           map { $_->{data} } @$ev;

# the changes: 40 activity toggles of each user, 10-40 ms apart
my $writer = fork // die "fork: $!";
if ($writer == 0) {
    srand($$);
    for my $i (1 .. 40) {
        for my $u (2801, 2802) {
            PresenceTest::http_request('POST', '/v1/heartbeat'
                                       . ($i % 2 ? '?idle=1' : ''),
                                       PresenceTest::bearer($u));
            Time::HiRes::sleep(0.01 + rand 0.03);
        }
    }
    POSIX::_exit(0);
}

# 6 clients, each cut after a random time and resumed from its last id
my $url = "/v1/events?ids=2801,2802&ticket=$main::t";
my (@pid, @id, @seen, @file);
my $n = 0;
for my $c (0 .. 5) {
    $id[$c] = $id;
    $seen[$c] = [];
}
my $round = 0;
while (waitpid($writer, POSIX::WNOHANG()) == 0 || $round < 2) {
    $round++;
    for my $c (0 .. 5) {
        if ($pid[$c]) {
            sse_stop($pid[$c]);
            my ($e) = sse_read($file[$c]);
            push @{$seen[$c]}, @$e;
            $id[$c] = $e->[-1]{id} if @$e;
        }
        $file[$c] = "$main::OUT/f" . $n++;
        $pid[$c] = sse_start($url, $file[$c],
                             headers => "Last-Event-ID: $id[$c]\r\n");
    }
    Time::HiRes::sleep(0.05 + rand 0.15);
}
Time::HiRes::sleep(0.5);
for my $c (0 .. 5) {
    sse_stop($pid[$c]);
    my ($e) = sse_read($file[$c]);
    push @{$seen[$c]}, @$e;
}

# the last seq of each user, as the status says
my %last;
for my $u (2801, 2802) {
    my (undef, undef, $body) = PresenceTest::http_request('GET',
        "/v1/status/$u", PresenceTest::bearer(2810));
    $last{$u} = $body =~ /"seq":(\d+)/ ? $1 : -1;
}
Test::More::cmp_ok($last{$_}, '>=', $from{$_} + 40, "user $_ changed 40 times")
    for 2801, 2802;

my ($dups, $resyncs) = (0, 0);
for my $c (0 .. 5) {
    my %got;
    for my $e (@{$seen[$c]}) {
        if ($e->{data} =~ /"resync": ?true/) { $resyncs++; next }
        my ($u, $q) = $e->{data} =~ /"id":(\d+).*"seq":(\d+)/ or next;
        $dups++ if $got{$u}{$q}++;
    }
    for my $u (2801, 2802) {
        my @missing = grep { !$got{$u}{$_} } $from{$u} + 1 .. $last{$u};
        Test::More::is("@missing", '', "client $c: no change of $u lost")
            or Test::More::diag(join ' ', map {
                   ($_->{data} =~ /"id":(\d+).*"seq":(\d+)/
                    ? "$1:$2" : 'resync') . "@" . ($_->{id} // '')
               } @{$seen[$c]});
    }
}
Test::More::is($resyncs, 0, 'no resync');
Test::More::diag("$round rounds of 6 resumes, $dups changes twice");
--- request
GET /metrics
--- error_code: 200
--- response_body_like
presence_events_resumed_total [1-9]\d*
--- no_error_log
[alert]
[error]
