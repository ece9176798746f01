# Event streams open with a short-lived stream ticket (POST
# /v1/events/ticket), never with a long-lived token in the URL unless the
# operator allows it (presence_events_token on).  Tickets live 1 s here.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceSSE;

workers(2);
master_on();
no_shuffle();

# in logs/: the harness removes it with the server root (t/runner/README.md)
our $SSE = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/sse.out";

# heartbeats time out after 500ms; a stream's lease is 2s; nchan ends a
# stream after 5s, past its ticket's expiry
# the http{} part of the blocks without their own (nchan loaded too):
# the one of "# pg api" and the publisher
events_defaults($PresenceTest::PG_CONFIG . <<'CONF');
presence_ticket_ttl 1s;
# events publisher token stream=2s
CONF

our $CONFIG = <<'CONF';
    location = /v1/heartbeat { presence_heartbeat; }
    location /v1/status { presence_status; }
    location = /v1/events/ticket { presence_events_ticket; }
    location = /v1/events/ticket60 {
        presence_ticket_ttl 60s;
        presence_events_ticket;
    }
    location = /pause { return 204; }
    location = /caller {
        default_type text/plain;
        return 200 "[$presence_caller]";
    }
    location = /caller-token {
        presence_events_token on;
        default_type text/plain;
        return 200 "[$presence_caller]";
    }
    # events timeout=5s hooks token
CONF

our $SSE_ACCEPT = "Accept: text/event-stream";

run_tests();

__DATA__

=== TEST 1: POST /v1/events/ticket: a ticket for the bearer's holder (routed by its token's claims), 405 for other methods, 401 without a token or with a ticket as the token
--- config eval: $::CONFIG
--- request eval
["POST /v1/events/ticket", "POST /v1/events/ticket60", "GET /v1/events/ticket",
 "POST /v1/events/ticket", "POST /v1/events/ticket", "POST /v1/heartbeat"]
--- more_headers eval
[bearer(1002), bearer(1002), bearer(1002), "",
 "Authorization: Bearer " . ticket(1002),
 "Authorization: Bearer " . ticket(1002)]
--- error_code eval
[200, 200, 405, 401, 401, 401]
--- response_headers eval
["Cache-Control: no-store\nContent-Type: application/json",
 "Cache-Control: no-store", "Allow: POST", "WWW-Authenticate: Bearer",
 "WWW-Authenticate: Bearer", "WWW-Authenticate: Bearer"]
--- response_body_like eval
[qr/^\{"ticket":"\Q@{[ (split m{\.}, token(1002))[1] ]}\E\.[A-Za-z0-9_-]{60}","expires_in":1\}$/,
 qr/^\{"ticket":"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{60}","expires_in":60\}$/,
 error_like('method_not_allowed'), (error_like('unauthorized')) x 3]



=== TEST 2: a ticket opens its owner's stream (the owner goes online, not another), the stream outlives the ticket
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1002, 1001]]);
my $bob = fetch_ticket(token(1002));
my $carol = fetch_ticket(token(1003));
Test::More::ok(defined $bob && defined $carol, "tickets of bob and carol");
$main::ticket_at = Time::HiRes::time();
$main::bob = $bob;
# carol's ticket is carol: she does not subscribe to alice
my ($code) = http_request('GET', "/v1/events?ids=1001&ticket=$carol",
                          $main::SSE_ACCEPT);
Test::More::is($code, 403, "carol's ticket does not open a stream of alice");
($code) = http_request('GET', "/v1/events?ids=1001,1003&ticket=$bob",
                       $main::SSE_ACCEPT);
Test::More::is($code, 403, "bob's ticket: only ids bob subscribes to");
$main::sse = sse_start("/v1/events?ids=1001&ticket=$bob", $main::SSE);
--- request eval
[PresenceTest::pause(0.2), "GET /v1/status/1002", "GET /v1/status/1003",
 "POST /v1/heartbeat", PresenceTest::pause(1.6), "POST /v1/heartbeat",
 PresenceTest::pause(1.3)]
--- more_headers eval
["", bearer(1002), bearer(1003), bearer(1001), "", bearer(1001), ""]
--- error_code eval
[204, 200, 200, 204, 204, 204, 204]
--- response_body_like eval
[qr/^$/,
 qr/^\{"id":1002,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/^\{"id":1003,"status":"offline",/,
 qr/^$/, qr/^$/, qr/^$/, qr/^$/]



=== TEST 3: (same nginx) the stream got every change, also after its ticket expired; its end counts for its owner; an expired ticket opens nothing
--- init
my (undef, $h, $st) = http_request('GET', '/v1/status/1002', bearer(1002));
Test::More::like($st, qr/"status":"offline"/,
                 "the lease of the stream's opening ran out");
sse_stop($main::sse);
Time::HiRes::sleep(0.2);
(undef, $h, $st) = http_request('GET', '/v1/status/1002', bearer(1002));
Test::More::like($st, qr/"status":"offline"/,
                 "the stream's end (its ticket expired) is its device "
                 . "leaving, no heartbeat: still offline");
my ($ev, $status) = sse_read($main::SSE);
Test::More::like($status, qr{^HTTP/1.1 200}, "the stream was open");
Test::More::is(scalar @$ev, 4, "online, offline, online, offline")
    or Test::More::diag(join "\n", map { $_->{data} } @$ev);
Test::More::like($ev->[2]{data} // '', qr/^\{"id":1001,"status":"online"/,
                 "the last change");
Test::More::cmp_ok(($ev->[2]{t} // 0) / 1000, '>', $main::ticket_at + 1,
                   "came after the ticket expired");
my ($code) = http_request('GET', "/v1/events?ids=1001&ticket=$main::bob",
                          $main::SSE_ACCEPT);
Test::More::is($code, 401, "the expired ticket is refused");
--- request eval
my $t = PresenceTest::ticket(1002);
substr($t, 10, 1) = substr($t, 10, 1) eq 'A' ? 'B' : 'A';
# another route (it is signed with the ticket)
my $r = PresenceTest::ticket(1002, route => token(1002));
my $c3 = (split /\./, token(1003))[1];
$r =~ s/^[^.]+/$c3/;
["GET /v1/events?ids=1001&ticket=" . ticket(1002, exp => int(Time::HiRes::time() * 1000) - 1),
 "GET /v1/events?ids=1001&ticket=" . ticket(1002, secret => 'another-secret-0123456789'),
 "GET /v1/events?ids=1001&ticket=$t",
 "GET /v1/events?ids=1001&ticket=$r",
 "GET /v1/events?ids=1001&ticket=.$t",
 "GET /v1/events?ids=1001&ticket=" . ticket(1002, version => 2),
 "GET /v1/events?ids=1001&ticket=x.y.z",
 "GET /v1/events?ids=1001&ticket=" . token(1002),
 "GET /v1/events?ids=1001&token=" . token(1002),
 "GET /v1/events?ids=1001",
 "GET /v1/events?ids=1001"]
--- more_headers eval
[($::SSE_ACCEPT) x 10,
 "$::SSE_ACCEPT\nAuthorization: Bearer " . ticket(1002, route => token(1002))]
--- error_code eval
[(401) x 11]



=== TEST 4: ?token= opens a stream only where presence_events_token is on; bad tokens stay 401 there
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
$main::sse = sse_start('/v1/events-token?ids=1001&token=' . token(1002),
                       $main::SSE);
--- request eval
["POST /v1/heartbeat", PresenceTest::pause(0.3),
 "GET /v1/events-token?ids=1001&token=x.y.z",
 "GET /v1/events-token?ids=1001&token="
     . token(1002, secret => 'another-secret-0123456789'),
 "GET /v1/events-token?ids=1001&token=" . token(1002, exp => time - 1),
 "GET /v1/events-token?ids=1001&token=" . ticket(1002),
 "GET /v1/events-token?ids=1001&ticket=" . token(1002)]
--- more_headers eval
[bearer(1001), "", ($::SSE_ACCEPT) x 5]
--- error_code eval
[204, 204, 401, 401, 401, 401, 401]



=== TEST 5: (same nginx) the stream of the token got the change
--- init
sse_stop($main::sse);
my ($ev, $status) = sse_read($main::SSE);
Test::More::like($status, qr{^HTTP/1.1 200}, "the stream was open");
Test::More::like($ev->[0]{data} // '', qr/^\{"id":1001,"status":"online"/,
                 "the online event");
--- request
GET /pause
--- error_code: 204



=== TEST 6: presence_ticket_ttl is at most 60s
--- http_config
    presence_zone name=presence size=4m;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
    presence_ticket_ttl 61s;
--- config
    location = /v1/events/ticket { presence_events_ticket; }
--- must_die
--- error_log
"presence_ticket_ttl" must be between 1s and 60s



=== TEST 7: a ticket location needs a secret to sign with
--- http_config
    presence_zone name=presence size=4m;
--- config
    location = /v1/events/ticket {
        presence_identity $http_x_user_id;
        presence_events_ticket;
    }
--- must_die
--- error_log
"presence_events_ticket" signs tickets with



=== TEST 8: $presence_caller is the verified user of a ticket, a bearer token, or ?token= where allowed
--- config eval: $::CONFIG
--- request eval
["GET /caller?ticket=" . ticket(7, route => token(7)), "GET /caller", "GET /caller",
 "GET /caller?ticket=" . ticket(7, exp => 1000), "GET /caller?ticket=" . token(7),
 "GET /caller", "GET /caller?token=" . token(9), "GET /caller-token?token=" . token(9),
 "GET /caller?ticket=" . ticket(7, secret => 'another-secret-0123456789')]
--- more_headers eval
["", bearer(8), "Authorization: Bearer " . ticket(7), "", "", "", "", "", ""]
--- error_code eval
[(200) x 9]
--- response_body eval
["[7]", "[8]", "[]", "[]", "[]", "[]", "[]", "[9]", "[]"]
