# The demo page (conf/html) in a real browser: t/browser/demo.test.js drives
# Debian's chromium with playwright-core against this nginx (two users, one
# subscribes to the other and sees its dot turn green, then grey), and saves
# t/browser/out/demo.png.  util/test.sh installs t/browser/node_modules.

BEGIN {
    my $skip = !-x '/usr/bin/chromium' ? 'no /usr/bin/chromium'
             : !-d 't/browser/node_modules/playwright-core'
               ? 'no t/browser/node_modules (npm ci in t/browser)' : '';
    if ($skip) {
        require Test::More;
        Test::More::plan(skip_all => $skip);
    }
}

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use Cwd ();

workers(2);
master_on();
no_shuffle();
no_root_location();

$ENV{TEST_NGINX_DEMO_HTML} = Cwd::abs_path('conf/html');

our $MAIN = <<'CONF';
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
load_module $TEST_NGINX_MODULE_DIR/ngx_http_presence_module.so;
CONF

# as conf/nginx.conf, with the test's secret and database
our $HTTP = <<'CONF';
presence_zone name=presence size=4m;
presence_heartbeat_timeout 30s;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=3s;
presence_publish unix:$TEST_NGINX_SERVER_ROOT/logs/publish.sock:/internal/publish;

server {
    listen unix:$TEST_NGINX_SERVER_ROOT/logs/publish.sock;

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

=== TEST 1: two users on the demo page see each other's dot change
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
    location / {
        root $TEST_NGINX_DEMO_HTML;
        default_type text/html;
        types {
            text/html html;
            text/css css;
            application/javascript js;
        }
    }
--- init
pg_reset();
my $url = "http://127.0.0.1:" . Test::Nginx::Util::server_port();
my $out = `node t/browser/demo.test.js $url 2>&1`;
my $rc = $? >> 8;
Test::More::is($rc, 0, "node t/browser/demo.test.js: the dots change")
    or Test::More::diag($out);
Test::More::note($out);
--- request
GET /index.html
--- error_code: 200
--- response_body_like: data-testid="buddy-list"
