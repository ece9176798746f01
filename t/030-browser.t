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

$ENV{TEST_NGINX_DEMO_HTML} ||= Cwd::abs_path('conf/html');

# as conf/nginx.conf, with the test's secret and database
# the http{} part of the blocks without their own (nchan loaded too)
events_defaults(<<'CONF');
presence_zone name=presence size=4m;
presence_heartbeat_timeout 30s;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=3s;
presence_ticket_ttl 1s;
# the last tab closed: grey 1 s later
presence_offline_grace 1s;
# events publisher
CONF

# before nginx starts: its warm start would load the last run's users, and
# the users signed up here get their ids again (B would not be "never seen")
pg_reset();

run_tests();

__DATA__

=== TEST 1: two users on the demo page see each other's dot change
--- config
    # pg api
    location = /v1/events/ticket { presence_events_ticket; }
    # a closed tab's sendBeacon
    location = /v1/leave { presence_leave; }
    # streams end after 4 s: the page opens them again with new tickets;
    # a stream is its tab's device (its close a leave)
    # events timeout=4s hooks
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
--- no_error_log eval
# nchan 1.3.6 logs an [error] when a stream of several channels closes
# before it is ready ("tried adding WAITING chanhead ... to chanhead_gc.
# why?"): its own bookkeeping, nothing lost; the page's reopened stream
# (one contact and its own resume channel) does that when cut at once
[qr/\[error\](?!.*tried adding WAITING chanhead .* to chanhead_gc)/,
 '[alert]', '[crit]', '[emerg]']
