# Write-behind to Redis: presence:{id} is a hash {status, last_seen, seq}
# kept current within 2 s of every change; a Redis that is down loses no
# change and costs no heartbeat an error.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceStores;

our $HTTP_CONFIG = <<'CONF';
    presence_zone name=presence size=4m;
    presence_heartbeat_timeout 500ms;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
    presence_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=500ms;
    presence_sync_interval 200ms;
CONF

workers(2);
master_on();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: online, invisible and offline land in Redis within 2 s
--- http_config eval: $::HTTP_CONFIG
--- config
    # api
--- init
redis_cli('DEL', map { "presence:$_" } 1 .. 3);
heartbeat($_) == 204 or die for 1, 2;
for my $u (1, 2) {
    my $st = self_status($u);
    ok(wait_for(2, sub { redis_state($u) eq "online,$st->[1],$st->[2]" }),
       "user $u online in Redis: last_seen $st->[1], seq $st->[2]")
        or diag(redis_state($u));
}
is(redis_state(3), ',,', 'a user never seen is not in Redis');
is(api('PUT', '/v1/status', 2, '{"status":"offline"}')->[0], 200, 'user 2 invisible');
my $st = self_status(2);
ok(wait_for(2, sub { redis_state(2) eq "offline,$st->[1],$st->[2]" }), 'invisible: offline at once')
    or diag(redis_state(2));
$st = self_status(1);
ok(wait_for(2.5, sub { redis_state(1) eq "offline,$st->[1],2" }),
   'silent: offline, last seen at its heartbeat')
    or diag(redis_state(1));
--- request
GET /metrics
--- response_body_like
presence_sync_written_total\{sink="redis"\} [1-9]



=== TEST 2: online users are written again at least every heartbeat timeout
--- http_config eval: $::HTTP_CONFIG
--- config
    # api
--- init
heartbeat(5) == 204 or die;
ok(wait_for(2, sub { redis_state(5) =~ /^online,/ }), 'online');
my ($first) = redis_state(5) =~ /,(\d+),/;
my $end = now() + 2;
while (now() < $end) { heartbeat(5); nap(0.1) }
my ($later) = redis_state(5) =~ /,(\d+),/;
ok($later > $first + 1000, "last_seen moved on while online ($first -> $later)");
--- request
GET /pause
--- error_code: 204



=== TEST 3: Redis down for 10 s while users change: no heartbeat fails, every final state lands
--- http_config eval: $::HTTP_CONFIG
--- config
    # api
--- init
redis_stop();
my $errors = 0;
my $end = now() + 10;
my $i = 0;
while (now() < $end) {
    for my $u (11 .. 13) { heartbeat($u) == 204 or $errors++ }
    heartbeat(14 + $i++ % 3) == 204 or $errors++;
    nap(0.25);
}
is($errors, 0, 'no heartbeat answered with an error while Redis was down');
my $quiet = now() + 1;
while (now() < $quiet) { heartbeat($_) for 11 .. 13; nap(0.2) }
redis_start();
for my $u (14 .. 16) {
    my $st = self_status($u);
    is($st->[0], 'offline', "user $u offline in nginx");
    ok(wait_for(8, sub { redis_state($u) eq "offline,$st->[1],$st->[2]" }),
       "user $u: offline, last_seen $st->[1], seq $st->[2] in Redis after it returned")
        or diag(redis_state($u));
}
for my $u (11 .. 13) {
    heartbeat($u);
    my $st = self_status($u);
    ok(wait_for(8, sub { redis_state($u) =~ /^online,\d+,$st->[2]$/ }),
       "user $u online in Redis")
        or diag(redis_state($u));
}
ok(metric('presence_sync_errors_total{sink="redis"}') > 0,
   'the outage was counted');
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 4: with nchan in the same nginx (it carries a hiredis of its own): no crash, Redis written
nchan exports the symbols of its own copy of hiredis; the module's is
linked in privately, or the workers crash on the first connection.
--- main_config
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
load_module $TEST_NGINX_MODULE_DIR/ngx_http_presence_module.so;
--- http_config eval: $::HTTP_CONFIG
--- config
    # api
    location = /sub { nchan_subscriber; nchan_channel_id test; }
--- init
redis_cli('DEL', 'presence:21');
heartbeat(21) == 204 or die;
my $st = self_status(21);
ok(wait_for(2, sub { redis_state(21) eq "online,$st->[1],$st->[2]" }),
   'written to Redis with nchan loaded')
    or diag(redis_state(21));
--- request
GET /metrics
--- response_body_like
presence_sync_written_total\{sink="redis"\} [1-9]
--- no_error_log
[alert]
[crit]
[emerg]
exited on signal
