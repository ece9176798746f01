# Devices and idle (issue 14 items 1, 2): heartbeats name their device
# (?device=, default "default"); an online user's status and events carry
# "activity" and the sorted "devices" online now; a change of that set, and
# active <-> idle, is one event with seq + 1, plain heartbeats none; idle
# after idle=1 heartbeats of every device, or after presence_idle_timeout
# without an active one, active again at the next active heartbeat; the
# gateway's device, idle and gone; bad names; the oldest device replaced.

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
our $GW = 'gateway-secret-0123456789abcdef';

# heartbeats time out after 3 s here: devices stay until they leave; idle
# after 1 s without an active heartbeat; a grace of 1 s; at most 3 devices
(our $HTTP = $PresenceTest::PG_CONFIG) =~ s/500ms/3s/;
$HTTP .= <<'CONF';
presence_idle_timeout 1s;
presence_offline_grace 1s;
presence_devices 3;
# events publisher
CONF
events_defaults($HTTP);

our $CONFIG = <<"CONF";
    # pg api
    location = /v1/leave { presence_leave; }
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret $GW;
    }
    # events
CONF

# the events of the stream file, as "status/seq/activity/devices"
sub events_of {
    my ($file, $reader) = @_;
    my ($ev) = $reader->($file);
    return [map {
        my $d = $_->{data};
        my ($st) = $d =~ /"status":"(\w+)"/;
        my ($seq) = $d =~ /"seq":(\d+)/;
        my ($act) = $d =~ /"activity":"(\w+)"/;
        my ($dev) = $d =~ /"devices":\[([^\]]*)\]/;
        $dev //= '-';
        $dev =~ s/"//g;
        join '/', $st // '?', $seq // '?', $act // '-', $dev;
    } @$ev];
}

run_tests();

__DATA__

=== TEST 1: two devices, one leaves: still online, its devices change, one event each
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
$main::sse = sse_start('/v1/events?ids=1001&ticket=' . ticket(1002), $main::SSE);
--- request eval
[PresenceTest::pause(0.3), "POST /v1/heartbeat?device=web",
 "POST /v1/heartbeat?device=web", "POST /v1/heartbeat?device=phone",
 "POST /v1/heartbeat?device=web", "GET /v1/status/1001",
 "POST /v1/leave?device=phone", "POST /v1/leave?device=phone",
 "GET /v1/status/1001", "GET /v1/status?ids=1001", PresenceTest::pause(0.5)]
--- more_headers eval
["", (bearer(1001)) x 8, bearer(1002), ""]
--- error_code eval
[204, 204, 204, 204, 204, 200, 204, 204, 200, 200, 204]
--- response_body_like eval
[(qr/^$/) x 5,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":2,"activity":"active","devices":\["phone","web"\]\}$/,
 qr/^$/, qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\}$/,
 qr/^\{"statuses":\[\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\}\]\}$/,
 qr/^$/]
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 2: (same nginx) three events: online with web, phone added, phone gone
--- init
sse_stop($main::sse);
Test::More::is_deeply(main::events_of($main::SSE, \&sse_read),
    ['online/1/active/web', 'online/2/active/phone,web',
     'online/3/active/web'], 'the events: seq + 1 each')
    or Test::More::diag(Test::More::explain(main::events_of($main::SSE, \&sse_read)));
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]



=== TEST 3: idle after idle=1 heartbeats, active again at once; idle after the idle timeout, over WebSocket
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
$main::ws = ws_start('/v1/events?ids=1001&ticket=' . ticket(1002), $main::WS);
--- request eval
[PresenceTest::pause(0.3), "POST /v1/heartbeat?device=web&idle=1",
 "GET /v1/status/1001", "POST /v1/heartbeat?device=phone",
 "POST /v1/heartbeat?device=phone&idle=1", "GET /v1/status/1001",
 "POST /v1/heartbeat?device=web", "GET /v1/status/1001",
 PresenceTest::pause(1.5), "GET /v1/status/1001",
 "POST /v1/heartbeat?device=phone&idle=1", "POST /v1/heartbeat?device=web&idle=0",
 "GET /v1/status/1001", PresenceTest::pause(0.3)]
--- more_headers eval
["", (bearer(1001)) x 7, "", (bearer(1001)) x 4, ""]
--- error_code eval
[204, 204, 200, 204, 204, 200, 204, 200, 204, 200, 204, 204, 200, 204]
--- response_body_like eval
[qr/^$/, qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1,"activity":"idle","devices":\["web"\]\}$/,
 qr/^$/, qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"idle","devices":\["phone","web"\]\}$/,
 qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":4,"activity":"active","devices":\["phone","web"\]\}$/,
 qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":5,"activity":"idle","devices":\["phone","web"\]\}$/,
 qr/^$/, qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":6,"activity":"active","devices":\["phone","web"\]\}$/,
 qr/^$/]
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 4: (same nginx) the WebSocket saw each change once, in order
--- init
ws_stop($main::ws);
Test::More::is_deeply(main::events_of($main::WS, \&ws_read),
    ['online/1/idle/web', 'online/2/active/phone,web',
     'online/3/idle/phone,web', 'online/4/active/phone,web',
     'online/5/idle/phone,web', 'online/6/active/phone,web'],
    'the events: seq + 1 each')
    or Test::More::diag(Test::More::explain(main::events_of($main::WS, \&ws_read)));
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]



=== TEST 5: bad device names and idle values are 400, nothing applied
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice']], subs => []);
--- request eval
["POST /v1/heartbeat?device=Web", "POST /v1/heartbeat?device=",
 "POST /v1/heartbeat?device=abcdefghijklmnopq", "POST /v1/heartbeat?device=a%20b",
 "POST /v1/heartbeat?device=web&idle=2", "POST /v1/leave?device=w.b",
 "GET /v1/status/1001", "POST /v1/heartbeat?device=abcdefghijklmnop",
 "GET /v1/status/1001"]
--- more_headers eval
[(bearer(1001)) x 9]
--- error_code eval
[400, 400, 400, 400, 400, 400, 200, 204, 200]
--- response_body_like eval
[(error_like('bad_request')) x 6,
 qr/^\{"id":1001,"status":"offline","last_seen":(?:null|\d{13}),"seq":0\}$/,
 qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["abcdefghijklmnop"\]\}$/]
--- no_error_log
[alert]
[crit]



=== TEST 6: a stream of a bad device name is refused
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice']], subs => []);
--- request eval
["GET /v1/events?ids=1001&device=Web&ticket=" . ticket(1001),
 "GET /v1/events?ids=1001&device=&ticket=" . ticket(1001)]
--- more_headers eval
[("Accept: text/event-stream") x 2]
--- error_code eval
[400, 400]
--- no_error_log
[alert]
[crit]



=== TEST 7: past presence_devices the one seen longest ago is replaced
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice']], subs => []);
--- request eval
["POST /v1/heartbeat?device=web", PresenceTest::pause(0.2), "POST /v1/heartbeat?device=phone",
 "POST /v1/heartbeat?device=tablet", "POST /v1/heartbeat?device=phone",
 "POST /v1/heartbeat?device=tablet", "GET /v1/status/1001",
 "POST /v1/heartbeat?device=desktop", "GET /v1/status/1001"]
--- more_headers eval
[bearer(1001), "", (bearer(1001)) x 7]
--- error_code eval
[204, 204, 204, 204, 204, 204, 200, 204, 200]
--- response_body_like eval
[(qr/^$/) x 6,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["phone","tablet","web"\]\}$/,
 qr/^$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":4,"activity":"active","devices":\["desktop","phone","tablet"\]\}$/]
--- no_error_log
[alert]
[crit]



=== TEST 8: the gateway's device, idle and gone are the single-user calls'
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1003, 'carol'], [1004, 'dan']],
         subs => [[1001, 1003], [1001, 1004]]);
--- request eval
["POST /v1/presence\n" . '{"device": "ws", "online": [1001, 1003], "idle": [1004]}',
 "POST /v1/heartbeat?device=web",
 "POST /v1/presence\n" . '{"device": "ws", "gone": [1001, 1003]}',
 "POST /v1/presence\ndevice ws\nidle 1003",
 "GET /v1/status?ids=1001,1003,1004"]
--- more_headers eval
["Authorization: Bearer $::GW", bearer(1001), "Authorization: Bearer $::GW",
 "Authorization: Bearer $::GW\nContent-Type: text/plain", bearer(1001)]
--- error_code eval
[204, 204, 204, 204, 200]
--- response_body_like eval
[qr/^$/, qr/^$/, qr/^$/, qr/^$/,
 qr/^\{"statuses":\[\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\},\{"id":1003,"status":"online","last_seen":\d{13},"seq":2,"activity":"idle","devices":\["ws"\]\},\{"id":1004,"status":"online","last_seen":\d{13},"seq":1,"activity":"idle","devices":\["ws"\]\}\]\}$/]
--- no_error_log
[alert]
[crit]



=== TEST 9: PUT /v1/status "online" is a heartbeat of its ?device= (default "default"); a bad one is 400
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice']], subs => []);
--- request eval
["POST /v1/heartbeat?device=web",
 "PUT /v1/status?device=web\n{\"status\": \"offline\"}",
 "PUT /v1/status?device=web\n{\"status\": \"online\"}",
 "GET /v1/status/1001",
 "PUT /v1/status?device=Web\n{\"status\": \"online\"}",
 "PUT /v1/status?device=web&idle=1\n{\"status\": \"online\"}",
 "GET /v1/status/1001"]
--- more_headers eval
[(bearer(1001)) x 7]
--- error_code eval
[204, 200, 200, 200, 400, 200, 200]
--- response_body_like eval
[qr/^$/,
 qr/^\{"id":1001,"status":"offline","last_seen":\d{13},"seq":2\}$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\}$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["web"\]\}$/,
 error_like('bad_request'),
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":4,"activity":"idle","devices":\["web"\]\}$/,
 qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":4,"activity":"idle","devices":\["web"\]\}$/]
--- no_error_log
[alert]
[crit]
