# /v1/events over WebSocket: a real client (t/lib/PresenceWS.pm) gets the
# status changes of a followed user as text frames; refused handshakes.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceWS;

workers(2);
master_on();
no_shuffle();

our $WS = "$ENV{TEST_NGINX_SERVROOT}/ws.out";

our $MAIN = <<'CONF';
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
load_module $TEST_NGINX_MODULE_DIR/ngx_http_presence_module.so;
CONF

our $HTTP = <<'CONF';
presence_zone name=presence size=4m;
presence_heartbeat_timeout 500ms;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=3s;
presence_publish unix:$TEST_NGINX_SERVER_ROOT/logs/publish.sock:/internal/publish;

server {
    listen unix:$TEST_NGINX_SERVER_ROOT/logs/publish.sock;

    # nchan's authorize request reaches the check through a proxy
    location = /internal/events-check {
        presence_events_auth;
    }

    location ~ ^/internal/publish/(presence\.\d+)$ {
        nchan_publisher http;
        nchan_channel_id $1;
        nchan_store_messages off;
    }
}
CONF

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('main_config', $MAIN) if !defined $block->main_config;
    $block->set_value('http_config', $HTTP) if !defined $block->http_config;
});

run_tests();

__DATA__

=== TEST 1: a follower's WebSocket gets the heartbeat start and the timeout
--- config
    # pg api
    location = /v1/events {
        nchan_subscriber eventsource websocket;
        nchan_channel_id $presence_channels;
        nchan_channel_id_split_delimiter ",";
        nchan_authorize_request /internal/events-auth;
        nchan_subscriber_first_message newest;
    }
    location = /internal/events-auth {
        internal;
        proxy_pass http://unix:$TEST_NGINX_SERVER_ROOT/logs/publish.sock:/internal/events-check;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
    }
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1002, 1001]]);
$main::ws = ws_start('/v1/events?ids=1001&token=' . token(1002), $main::WS);
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
    qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1\}$/,
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
Test::More::like(ws_handshake('/v1/events?ids=1003&token=' . token(1002)),
    qr{^HTTP/1.1 403}, "a handshake for a user not subscribed to: 403");
Test::More::like(ws_handshake('/v1/events?ids=1001,1003&token=' . token(1002)),
    qr{^HTTP/1.1 403}, "one id not subscribed to among others: 403");
Test::More::like(ws_handshake('/v1/events?ids=1001&token=x.y.z'),
    qr{^HTTP/1.1 401}, "a bad token: 401");
--- request
GET /metrics
--- error_code: 200
--- response_body_like: presence_events_published_total 2\n
