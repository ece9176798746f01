# POST /v1/presence: a trusted gateway reports many users at once.  Each
# "online" or "idle" id is a heartbeat, each "gone" id its user leaving
# now; every id is checked before any is applied; only the gateway secret
# is accepted there, never a user token.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

our $GW = 'gateway-test-secret-0123456789';
our $AUTH = "Authorization: Bearer $GW";

# the status of each user, as that user reads it
sub status_of {
    return map { "GET /v1/status/$_" } @_;
}

sub bearers {
    return map { bearer($_) } @_;
}

sub body {
    my ($json) = @_;
    return "POST /v1/presence\n$json";
}

our $ONLINE = qr/^\{"id":\d+,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["ws"\]\}$/;
our $IDLE = qr/^\{"id":\d+,"status":"online","last_seen":\d{13},"seq":1,"activity":"idle","devices":\["ws"\]\}$/;
our $GATEWAY = qr/^\{"id":\d+,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["gateway"\]\}$/;

# no user times out during a block, however slow the machine
our $HTTP = <<'CONF';
presence_zone name=presence size=4m;
presence_heartbeat_timeout 10s;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_offline_grace 0;
CONF

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('http_config', $HTTP) if !defined $block->http_config;
});

no_shuffle();
run_tests();

__DATA__

=== TEST 1: online, idle and gone ids change exactly those users
5 and 7 are online by their own heartbeats first; the gateway reports 1, 2,
3 online, 4 idle and 5 gone (its device ws; no grace here): 5 goes offline
at once, last seen then; 6 and 7 are not named and keep their state.
--- config
    # api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
--- request eval
["POST /v1/heartbeat?device=ws", "POST /v1/heartbeat",
 ::body('{"device": "ws", "online": [1, 2, 3], "idle": [4], "gone": [5]}'),
 ::status_of(1 .. 7)]
--- more_headers eval
[::bearers(5, 7), $::AUTH, ::bearers(1 .. 7)]
--- error_code eval
[204, 204, 204, (200) x 7]
--- response_body_like eval
[qr/^$/, qr/^$/, qr/^$/,
 ($::ONLINE) x 3, $::IDLE,
 qr/^\{"id":5,"status":"offline","last_seen":\d{13},"seq":2\}$/,
 qr/^\{"id":6,"status":"offline","last_seen":null,"seq":0\}$/,
 qr/^\{"id":7,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/]



=== TEST 2: one bad id anywhere is 400 naming it, and nothing is applied
User 5 is online; each body names it gone, with one bad id elsewhere.
--- config
    # api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
--- request eval
["POST /v1/heartbeat",
 ::body('{"online": [1, 2, 0], "gone": [5]}'),
 ::body('{"online": [1], "idle": ["4"], "gone": [5]}'),
 ::body('{"gone": [5, -3]}'),
 ::body('{"gone": [5], "online": [1.5]}'),
 ::body('{"gone": [5], "online": [2147483648]}'),
 ::body('{"gone": [5], "idle": [99999999999999999999999]}'),
 ::body('{"gone": [5], "online": [null]}'),
 ::status_of(1, 4, 5)]
--- more_headers eval
[bearer(5), ($::AUTH) x 7, ::bearers(1, 4, 5)]
--- error_code eval
[204, (400) x 7, 200, 200, 200]
--- response_body_like eval
[qr/^$/,
 qr/^\{"error":\{"code":"bad_request","message":"online\[2\]: 0 is not a user id[^"]*"\}\}$/,
 qr/^\{"error":\{"code":"bad_request","message":"idle\[0\] is not a user id[^"]*"\}\}$/,
 qr/^\{"error":\{"code":"bad_request","message":"gone\[1\]: -3 is not a user id[^"]*"\}\}$/,
 qr/^\{"error":\{"code":"bad_request","message":"online\[0\] is not a user id[^"]*"\}\}$/,
 qr/^\{"error":\{"code":"bad_request","message":"online\[0\]: 2147483648 is not a user id[^"]*"\}\}$/,
 error_like('bad_request'),
 qr/^\{"error":\{"code":"bad_request","message":"online\[0\] is not a user id[^"]*"\}\}$/,
 qr/^\{"id":1,"status":"offline","last_seen":null,"seq":0\}$/,
 qr/^\{"id":4,"status":"offline","last_seen":null,"seq":0\}$/,
 qr/^\{"id":5,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/]



=== TEST 3: broken JSON, wrong types, unknown fields, a bad device: 400
--- config
    # api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
--- request eval
[::body('{"online": [1, 2'), ::body('[1, 2]'), ::body('{"online": 1}'),
 ::body('{"online": [1], "online": [2]}'), ::body('{"offline": [1]}'),
 ::body('{"device": "WS", "online": [1]}'),
 ::body('{"device": "abcdefghijklmnopq", "online": [1]}'),
 ::body('{"device": 7, "online": [1]}'), ::body(''),
 ::body('{"online": [1], "gone": [1]}'),
 ::body('{"device": "a-b_9", "online": [1, 1]}'),
 ::body('{}'),
 ::status_of(1)]
--- more_headers eval
[($::AUTH) x 12, bearer(1)]
--- error_code eval
[(400) x 10, 204, 204, 200]
--- response_body_like eval
[(error_like('bad_request')) x 10, qr/^$/, qr/^$/,
 qr/^\{"id":1,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["a-b_9"\]\}$/]



=== TEST 4: the text form, one line per list
--- config
    # api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
--- request eval
["POST /v1/heartbeat?device=ws",
 "POST /v1/presence\ndevice ws\r\nonline 1,2, 3\nidle 4\n\ngone 5\n",
 "POST /v1/presence\nonline 6,x\n", "POST /v1/presence\nonline 6\nonline 7\n",
 "POST /v1/presence\nofline 6\n", "POST /v1/presence\ndevice Ws\n",
 "POST /v1/presence\nonline 6,0\n",
 ::status_of(1 .. 6)]
--- more_headers eval
[bearer(5), ("$::AUTH\nContent-Type: text/plain; charset=utf-8") x 6,
 ::bearers(1 .. 6)]
--- error_code eval
[204, 204, (400) x 5, (200) x 6]
--- response_body_like eval
[qr/^$/, qr/^$/,
 qr/^\{"error":\{"code":"bad_request","message":"online\[1\] is not a user id[^"]*"\}\}$/,
 (error_like('bad_request')) x 3,
 qr/^\{"error":\{"code":"bad_request","message":"online\[1\]: 0 is not a user id[^"]*"\}\}$/,
 ($::ONLINE) x 3, $::IDLE,
 qr/^\{"id":5,"status":"offline","last_seen":\d{13},"seq":2\}$/,
 qr/^\{"id":6,"status":"offline","last_seen":null,"seq":0\}$/]



=== TEST 5: only the gateway secret: a user token, none, a wrong one are 401; GET is 405
--- config
    # api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
--- request eval
[::body('{"online": [1]}'), ::body('{"online": [1]}'), ::body('{"online": [1]}'),
 ::body('{"online": [1]}'), ::body('{"online": [1]}'),
 "GET /v1/presence", ::status_of(1)]
--- more_headers eval
[bearer(1), "", "Authorization: Bearer gateway-test-secret-012345678",
 "Authorization: Bearer gateway-test-secret-01234567890",
 "Authorization: Basic Z2F0ZXdheTp4", $::AUTH, bearer(1)]
--- error_code eval
[401, 401, 401, 401, 401, 405, 200]
--- response_headers eval
[("WWW-Authenticate: Bearer") x 5, "Allow: POST", ""]
--- response_body_like eval
[(error_like('unauthorized')) x 5, error_like('method_not_allowed'),
 qr/^\{"id":1,"status":"offline","last_seen":null,"seq":0\}$/]



=== TEST 6: presence_gateway_max: more ids is 400 naming the limit, a body over what they take is 413
With presence_gateway_max 3 the body may be 4 KiB plus 16 bytes per id.
--- config
    # api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
        presence_gateway_max 3;
    }
--- request eval
[::body('{"online": [1, 2], "gone": [3, 4]}'),
 ::body('{"online": [1, 2], "gone": [3]}'),
 ::body('{"online": [1]' . (' ' x 4200) . '}'),
 "POST /v1/presence\nonline 1,2\ngone 3,4\n",
 ::status_of(1)]
--- more_headers eval
[($::AUTH) x 3, "$::AUTH\nContent-Type: text/plain", bearer(1)]
--- error_code eval
[400, 204, 413, 400, 200]
--- response_body_like eval
[qr/^\{"error":\{"code":"bad_request","message":"[^"]*more than 3 ids[^"]*"\}\}$/,
 qr/^$/, error_like('payload_too_large'),
 qr/^\{"error":\{"code":"bad_request","message":"[^"]*more than 3 ids[^"]*"\}\}$/,
 $::GATEWAY]



=== TEST 7: the default presence_gateway_max: 10,000 ids in one body, not 10,001
--- config
    # api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
--- request eval
[::body('{"device": "ws", "online": [' . CORE::join(', ', 1000001 .. 1010000) . ']}'),
 ::body('{"online": [' . CORE::join(',', 1 .. 10001) . ']}'),
 "POST /v1/presence\nonline " . CORE::join(',', 2000001 .. 2010000) . "\n",
 ::status_of(1010000, 2010000, 1)]
--- more_headers eval
[($::AUTH) x 2, "$::AUTH\nContent-Type: text/plain",
 ::bearers(1010000, 2010000, 1)]
--- error_code eval
[204, 400, 204, 200, 200, 200]
--- response_body_like eval
[qr/^$/,
 qr/^\{"error":\{"code":"bad_request","message":"[^"]*more than 10000 ids[^"]*"\}\}$/,
 qr/^$/, $::ONLINE, $::GATEWAY,
 qr/^\{"id":1,"status":"offline","last_seen":null,"seq":0\}$/]
--- timeout: 10



=== TEST 8: the JSON fast path: only well-formed integer arrays, anything else as jansson says
--- config
    # api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
--- request eval
[::body('{"online": [1, "2"]}'), ::body('{"online": [01]}'),
 ::body('{"online": [1,]}'), ::body('{"online": [1 2]}'),
 ::body('{"gone": -1, "online": [5]}'), ::body('{"online": -1}'),
 ::body('{"online": [5], "x": "[1]"}'), ::body('{"online": [[1]]}'),
 ::body('{"online": [-0]}'), ::body('{"online": [1e2]}'),
 ::body('{"online": 1e[2]}'), ::body('{"online": [5]} [6]'),
 ::body('{"online": [5], "device": "a]\"b["}'),
 ::body('{"online": [1234567890123456789012]}'),
 ::body(" {\n\"online\" : [ 7 ,\r\n\t8 ] , \"idle\":[], \"gone\" : [ ] }\n"),
 ::status_of(5, 7, 8)]
--- more_headers eval
[($::AUTH) x 15, ::bearers(5, 7, 8)]
--- error_code eval
[(400) x 14, 204, 200, 200, 200]
--- response_body_like eval
[qr/^\{"error":\{"code":"bad_request","message":"online\[1\] is not a user id[^"]*"\}\}$/,
 (error_like('bad_request')) x 7,
 qr/^\{"error":\{"code":"bad_request","message":"online\[0\]: 0 is not a user id[^"]*"\}\}$/,
 qr/^\{"error":\{"code":"bad_request","message":"online\[0\] is not a user id[^"]*"\}\}$/,
 (error_like('bad_request')) x 4,
 qr/^$/,
 qr/^\{"id":5,"status":"offline","last_seen":null,"seq":0\}$/,
 ($::GATEWAY) x 2]



=== TEST 9: presence_gateway without a gateway secret refuses to start
--- config
    location = /v1/presence { presence_gateway; }
--- must_die
--- error_log
"presence_gateway" needs "presence_gateway_secret" or "presence_gateway_secret_file"



=== TEST 10: a short gateway secret is refused
--- config
    location = /v1/presence {
        presence_gateway_secret short;
        presence_gateway;
    }
--- must_die
--- error_log
the gateway secret must be at least 16 bytes long



=== TEST 11: presence_gateway_max 0 is refused
--- config
    location = /v1/presence {
        presence_gateway_secret gateway-test-secret-0123456789;
        presence_gateway_max 0;
        presence_gateway;
    }
--- must_die
--- error_log
value must be between 1 and 1000000



=== TEST 12: the secret from a file, set in server{} for its gateway location
--- config
    presence_gateway_secret_file $TEST_NGINX_SERVER_ROOT/html/gateway.key;
    presence_gateway_max 3;
    # api
    location = /v1/presence { presence_gateway; }
--- user_files
>>> gateway.key
gateway-test-secret-0123456789
--- request eval
[::body('{"online": [1]}'), ::body('{"online": [1]}'),
 ::status_of(1)]
--- more_headers eval
[$::AUTH, ::bearer(1), ::bearer(1)]
--- error_code eval
[204, 401, 200]
--- response_body_like eval
[qr/^$/, error_like('unauthorized'), $::GATEWAY]



=== TEST 13: a chunked body over the size presence_gateway_max ids take is 413
--- config
    location = /v1/presence {
        presence_gateway_secret gateway-test-secret-0123456789;
        presence_gateway_max 3;
        presence_gateway;
    }
--- raw_request eval
my $body = '{"online": [1]' . (' ' x 4985) . '}';
"POST /v1/presence HTTP/1.1\r
Host: localhost\r
Authorization: Bearer gateway-test-secret-0123456789\r
Transfer-Encoding: chunked\r
Connection: close\r
\r
" . sprintf("%x", length $body) . "\r\n$body\r\n0\r\n\r\n"
--- error_code: 413
--- response_body_like eval
error_like('payload_too_large')
