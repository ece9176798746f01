# A client's resume id (Last-Event-ID, ?last_event_id=) never reaches
# nchan, which aborts its worker on some malformed message ids; the module
# reads it.  Streams with bad ids open, get {"resync": true} (or nothing
# to replay, for ids it can read) and the live changes, no worker dies;
# If-None-Match / If-Modified-Since on a stream are refused (400).

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceSSE;
use PresenceWS;

workers(2);
master_on();
no_shuffle();

our $OUT = "$ENV{TEST_NGINX_SERVER_ROOT}/logs";

events_defaults($PresenceTest::PG_CONFIG . <<'CONF');
# events publisher
CONF

# ids nchan 1.3.6 cannot read, or reads wrongly: garbage, from the
# future, another count of channels, an active tag "-" (abort), two
# active tags, overlong, NUL
my $now = time;
our @BAD = ('garbage', ($now + 3600) . ':[0],-', "$now:0", "$now:[-],-",
            "1:[-],-", "$now:[1],[2],3,4,5", "$now:[1],2,3", "-5:[0],0",
            "$now:" . ('1,' x 80) . '[1]', "$now:[99999],0", "$now:[0]0",
            ":[0],0", "$now:[0],", "$now:,[0]");

# "<id>:<status>" of the first change (the heartbeat's; the timeout's
# offline may follow), after the {"resync": true} that an id the server
# cannot resume from gets first
sub first_change {
    my ($ev) = @_;
    my @ev = @$ev;
    shift @ev if @ev && $ev[0]{data} =~ /^\{"resync": ?true\}$/;
    my $d = @ev ? $ev[0]{data} : 'none';
    return $d =~ /^\{"id":(\d+),"status":"(\w+)"/ ? "$1:$2" : $d;
}

run_tests();

__DATA__

=== TEST 1: streams with bad Last-Event-ID and ?last_event_id= values open and get the change
--- config
    # pg api
    # events hooks
--- init
pg_reset(users => [[2701, 'alice'], [2702, 'bob'], [2710, 'watcher']],
         subs => [[2710, 2701], [2710, 2702]]);
my $t = ticket(2710);
my $n = 0;
@main::sse = map {
    $n++;
    sse_start("/v1/events?ids=2701,2702&ticket=$t", "$main::OUT/sse$n",
              headers => "Last-Event-ID: $_\r\n")
} @main::BAD;
$n = 0;
@main::ws = map {
    $n++;
    (my $e = $_) =~ s/([^A-Za-z0-9])/sprintf '%%%02X', ord $1/ge;
    ws_start("/v1/events?ids=2701,2702&ticket=$t&last_event_id=$e",
             "$main::OUT/ws$n")
} @main::BAD, "%00x[";
--- request eval
[PresenceTest::pause(0.3), "POST /v1/heartbeat", PresenceTest::pause(0.5)]
--- more_headers eval
["", bearer(2701), ""]
--- error_code eval
[204, 204, 204]



=== TEST 2: (same nginx) every stream got the change; no worker died
--- init
sse_stop($_) for @main::sse;
ws_stop($_) for @main::ws;
for my $n (1 .. @main::sse) {
    my ($ev, $status) = sse_read("$main::OUT/sse$n");
    Test::More::like($status // '', qr{^HTTP/1.1 200}, "sse $n: open");
    Test::More::is(main::first_change($ev), '2701:online',
                   "sse $n ($main::BAD[$n - 1]): the live change");
}
for my $n (1 .. @main::ws) {
    my ($ev) = ws_read("$main::OUT/ws$n");
    Test::More::is(main::first_change($ev), '2701:online',
                   "ws $n: the live change");
}
--- request
GET /v1/status/2701
--- more_headers eval
bearer(2710)
--- error_code: 200
--- no_error_log
exited on signal
[alert]



=== TEST 3: a valid id of this stream's channels is kept; conditional headers are refused
--- config
    # pg api
    # events hooks
--- init
pg_reset(users => [[2701, 'alice'], [2702, 'bob'], [2710, 'watcher']],
         subs => [[2710, 2701], [2710, 2702]]);
--- request eval
my $t = ticket(2710);
["GET /v1/events?ids=2701,2702&ticket=$t",
 "GET /v1/events?ids=2701,2702&ticket=$t",
 "GET /v1/events?ids=2701&ticket=$t"]
--- more_headers eval
["Accept: text/event-stream\nIf-None-Match: 1:[-],-",
 "Accept: text/event-stream\nIf-Modified-Since: Thu, 01 Jan 1970 00:00:01 GMT\nIf-None-Match: [-],-",
 "Accept: text/event-stream\nIf-None-Match: x"]
--- error_code eval
[400, 400, 400]
--- response_body_like eval
[qr/"code":"bad_request"/, qr/"code":"bad_request"/, qr/"code":"bad_request"/]
--- no_error_log
exited on signal
[alert]
