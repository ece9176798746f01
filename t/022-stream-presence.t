# An open event stream keeps its owner online (nchan_subscribe_request),
# its end counts as the last activity (nchan_unsubscribe_request), and the
# lease of the stream's heartbeat bounds how long a dead stream can pass
# for alive.

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

# heartbeats time out after 500ms; a stream's lease is 2s; nchan ends
# every stream after 1s
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
        nchan_subscriber eventsource websocket;
        nchan_channel_id $presence_channels;
        nchan_channel_id_split_delimiter ",";
        nchan_subscriber_first_message newest;
        nchan_subscriber_timeout 1s;
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

=== TEST 1: a stream keeps its owner online past the heartbeat timeout; after it ends, the lease runs out
--- config eval: $::CONFIG
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);
$main::sse = sse_start('/v1/events?ids=1001&token=' . token(1002), $main::SSE);
--- request eval
[PresenceTest::pause(0.3), "GET /v1/status/1002", PresenceTest::pause(0.5),
 "GET /v1/status/1002", PresenceTest::pause(3), "GET /v1/status/1002"]
--- more_headers eval
["", bearer(1002), "", bearer(1002), "", bearer(1002)]
--- error_code eval
[204, 200, 204, 200, 204, 200]
--- response_body_like eval
[qr/^$/,
 qr/^\{"id":1002,"status":"online","last_seen":(\d{13})(?{ $::opened = $^N }),"seq":1\}$/,
 qr/^$/,
 qr/^\{"id":1002,"status":"online","last_seen":\d{13},"seq":1\}$/,
 qr/^$/,
 qr/^\{"id":1002,"status":"offline","last_seen":(\d{13})(?(?{ $^N - $::opened >= 700 })|(*FAIL)),"seq":2\}$/]
--- no_error_log
[alert]
[crit]
[emerg]
