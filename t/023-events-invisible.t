# Events of going invisible and visible again, and none about users the
# stream did not ask for.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceSSE;

workers(2);
master_on();
no_shuffle();

our $SSE = "$ENV{TEST_NGINX_SERVROOT}/sse.out";

our $MAIN = <<'CONF';
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
load_module $TEST_NGINX_MODULE_DIR/ngx_http_presence_module.so;
CONF

# heartbeats time out after 500ms; a stream's lease is 2s
our $HTTP = <<'CONF';
presence_zone name=presence size=4m;
presence_heartbeat_timeout 500ms;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=3s;
presence_publish unix:$TEST_NGINX_SERVER_ROOT/logs/publish.sock:/internal/publish;

server {
    listen unix:$TEST_NGINX_SERVER_ROOT/logs/publish.sock;

    location = /internal/events-check { presence_events_auth; }

    location = /internal/stream {
        presence_heartbeat_timeout 2s;
        presence_stream;
    }

    location ~ ^/internal/publish/(presence\.\d+)$ {
        nchan_publisher http;
        nchan_channel_id $1;
        nchan_store_messages off;
    }
}
CONF

our $CONFIG = <<'CONF';
    location = /v1/heartbeat { presence_heartbeat; }
    location /v1/status { presence_status; }
    location = /pause { return 204; }
    location = /v1/events {
        default_type application/json;
        if ($presence_channels = "") {
            return 400 '{"error":{"code":"bad_request","message":"too many ids for one stream, or not ids"}}';
        }
        nchan_subscriber eventsource websocket;
        nchan_channel_id $presence_channels;
        nchan_channel_id_split_delimiter ",";
        nchan_subscriber_first_message newest;
        nchan_authorize_request /internal/events-auth;
        nchan_subscribe_request /internal/stream-hook;
        nchan_unsubscribe_request /internal/stream-hook;
    }
    location = /internal/events-auth {
        internal;
        proxy_pass http://unix:$TEST_NGINX_SERVER_ROOT/logs/publish.sock:/internal/events-check;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
    }
    location = /internal/stream-hook {
        internal;
        proxy_pass http://unix:$TEST_NGINX_SERVER_ROOT/logs/publish.sock:/internal/stream;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
    }
CONF

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('main_config', $MAIN) if !defined $block->main_config;
    $block->set_value('http_config', $HTTP) if !defined $block->http_config;
});

run_tests();

__DATA__

=== TEST 1: heartbeat, invisible, visible: three events; nothing about a user not asked for
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1002, 1001], [1002, 1003]]);
$main::sse = sse_start('/v1/events?ids=1001&token=' . token(1002), $main::SSE);
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
my @want = (qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1\}$/,
            qr/^\{"id":1001,"status":"offline","last_seen":\d{13},"seq":2\}$/,
            qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":3\}$/);
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
["GET /v1/events?ids=" . CORE::join(',', 1000001 .. 1000100) . "&token=" . token(1002)]
--- more_headers
Accept: text/event-stream
--- error_code: 400
--- response_body_like: "code":"bad_request","message":"too many ids for one stream
