# Write-behind to PostgreSQL: every change lands in users.status and
# users.last_seen within 2 s; a database that is down loses nothing and
# costs no heartbeat an error; a new table after kill -9 gets its users'
# last_seen back (warm start).

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceStores;

our $HTTP_CONFIG = <<'CONF';
    presence_zone name=presence size=4m;
    presence_heartbeat_timeout 500ms;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
    presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=1s;
    presence_sync_interval 200ms;
    presence_pg_refresh 2s;
CONF

our @USERS = (1 .. 6);

# before the first nginx starts: its warm start finds no leftovers
pg_reset(users => [map { [$_, "user$_"] } @USERS]);

workers(2);
master_on();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: users online and offline land in PostgreSQL within 2 s
--- http_config eval: $::HTTP_CONFIG
--- config
    # pg api
--- init
pg_reset(users => [map { [$_, "user$_"] } @::USERS]);
# 1 and 2 come online
heartbeat($_) == 204 or die "heartbeat" for 1, 2;
my %ls = map { ($_ => self_status($_)->[1]) } 1, 2;
for my $u (1, 2) {
    ok(wait_for(2, sub { pg_state($u) eq "online,$ls{$u}" }),
       "user $u online in PostgreSQL, last_seen $ls{$u}")
        or diag("PostgreSQL has " . pg_state($u));
}
is(pg_state(3), 'offline,', 'a user never seen is untouched');
# silence: offline (500 ms), last seen at the heartbeat
ok(wait_for(2.5, sub { pg_state(1) eq "offline,$ls{1}" && pg_state(2) eq "offline,$ls{2}" }),
   'both offline in PostgreSQL, last_seen their last heartbeat')
    or diag('PostgreSQL has ' . pg_state(1) . ' and ' . pg_state(2));
--- request
GET /metrics
--- response_body_like
presence_sync_written_total\{sink="postgres"\} [1-9]



=== TEST 2: invisible users are offline in PostgreSQL at once; visible again, online
--- http_config eval: $::HTTP_CONFIG
--- config
    # pg api
--- init
pg_reset(users => [map { [$_, "user$_"] } @::USERS]);
heartbeat(4) == 204 or die;
ok(wait_for(2, sub { pg_state(4) =~ /^online,/ }), 'online');
my $r = api('PUT', '/v1/status', 4, '{"status":"offline"}');
is($r->[0], 200, 'PUT offline');
my $ls = self_status(4)->[1];
ok(wait_for(2, sub { pg_state(4) eq "offline,$ls" }), "invisible: offline, last_seen $ls")
    or diag(pg_state(4));
$r = api('PUT', '/v1/status', 4, '{"status":"online"}');
ok(wait_for(2, sub { pg_state(4) =~ /^online,/ }), 'visible again: online');
--- request
GET /pause
--- error_code: 204



=== TEST 3: online users' last_seen is refreshed (presence_pg_refresh 2s)
--- http_config eval: $::HTTP_CONFIG
--- config
    # pg api
--- init
pg_reset(users => [map { [$_, "user$_"] } @::USERS]);
heartbeat(5) == 204 or die;
ok(wait_for(2, sub { pg_state(5) =~ /^online,/ }), 'online');
my ($first) = pg_state(5) =~ /,(\d+)$/;
# keep it online for 3 s: heartbeats every 200 ms
my $end = now() + 3;
while (now() < $end) { heartbeat(5); nap(0.2) }
my ($later) = pg_state(5) =~ /,(\d+)$/;
ok($later > $first + 500, "last_seen moved on while online ($first -> $later)");
--- request
GET /pause
--- error_code: 204



=== TEST 4: PostgreSQL down for 10 s while users change: no heartbeat fails, every final state lands
--- http_config eval: $::HTTP_CONFIG
--- config
    # pg api
--- init
pg_reset(users => [map { [$_, "user$_"] } @::USERS]);
# known to the table first (their invisible flag told by PostgreSQL), so
# that their changes are written, and fail, while it is down
heartbeat($_) for 1 .. 6;
wait_for(3, sub { !grep { (self_status($_) // [''])->[0] ne 'online' } 1 .. 6 })
    or die "users 1..6 not online";
pg_stop();
my $r = api('GET', '/v1/status/2', 1);
is($r->[0], 503, 'the status of another user needs the database: 503');
like($r->[1], qr/^\{"error":\{"code":"unavailable"/, 'a JSON error');
is(api('GET', '/v1/status/1', 1)->[0], 200, 'the own status does not');
my $errors = 0;
my $end = now() + 10;
my $i = 0;
# users 1..3 keep heartbeating; 4..6 come and go
while (now() < $end) {
    for my $u (1 .. 3) { heartbeat($u) == 204 or $errors++ }
    my $u = 4 + $i++ % 3;
    heartbeat($u) == 204 or $errors++;
    nap(0.25);
}
is($errors, 0, 'no heartbeat answered with an error while PostgreSQL was down');
# users 1..3 stay online, 4..6 fall silent
my $quiet = now() + 1;
while (now() < $quiet) { heartbeat($_) for 1 .. 3; nap(0.2) }
pg_start();
for my $u (4 .. 6) {
    my $st = self_status($u);
    is($st->[0], 'offline', "user $u offline in nginx");
    ok(wait_for(8, sub { pg_state($u) eq "offline,$st->[1]" }),
       "user $u: offline, last_seen $st->[1] in PostgreSQL after it returned")
        or diag(pg_state($u));
}
for my $u (1 .. 3) {
    heartbeat($u);
    ok(wait_for(5, sub { pg_state($u) =~ /^online,\d+$/ }), "user $u online in PostgreSQL")
        or diag(pg_state($u));
}
ok(metric('presence_sync_errors_total{sink="postgres"}') > 0, 'the failed batches were counted');
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 5: kill -9 of nginx, started again: last_seen of users gone offline is back
--- http_config eval: $::HTTP_CONFIG
--- config
    # pg api
--- init
pg_reset(users => [map { [$_, "user$_"] } @::USERS]);
heartbeat($_) == 204 or die for 1 .. 4;
my %ls = map { ($_ => self_status($_)->[1]) } 1 .. 4;
# 1..3 go offline and are synced; 4 stays online until the kill
my $end = now() + 1.2;
while (now() < $end) { heartbeat(4); nap(0.2) }
ok(wait_for(2, sub { !grep { pg_state($_) ne "offline,$ls{$_}" } 1 .. 3 }),
   'offline users synced before the kill');
nginx_kill9();
nginx_start();
ok(wait_for(3, sub { metric('presence_warm_done') }), 'warm start done');
for my $u (1 .. 3) {
    is_deeply(self_status($u), ['offline', $ls{$u}, 0],
              "user $u: offline, last seen $ls{$u} again");
}
is(self_status(6)->[1], '', 'a user never seen is still never seen');
# user 4 was online in PostgreSQL when nginx died: offline there now
ok(wait_for(3, sub { pg_state(4) =~ /^offline,\d+$/ }), 'user 4 written offline after the warm start')
    or diag(pg_state(4));
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 6: the warm start loads only the users seen within presence_retain
--- http_config eval: $::HTTP_CONFIG . "    presence_retain 1h;\n"
--- config
    # pg api
--- init
pg_reset(users => [map { [$_, "user$_"] } @::USERS]);
psql("UPDATE users SET last_seen = now() - interval '2 hours' WHERE user_id = 1;\n"
     . "UPDATE users SET last_seen = now() - interval '10 minutes' WHERE user_id = 2;\n"
     . "UPDATE users SET status = 'online', last_seen = now() - interval '3 hours' WHERE user_id = 3;\n");
my $ls2 = pg_state(2);
$ls2 =~ s/^offline,// or die "user 2: $ls2";
nginx_kill9();
nginx_start();
ok(wait_for(3, sub { metric('presence_warm_done') }), 'warm start done');
is(metric('presence_warm_users'), 2,
   'two users loaded: the one seen within the retain window, and the one '
   . 'PostgreSQL still had online');
ok(wait_for(3, sub { pg_state(3) =~ /^offline,/ }),
   'the user PostgreSQL had online, seen long ago, is written offline')
    or diag(pg_state(3));

is_deeply(self_status(2), ['offline', $ls2, 0],
          "user 2 (seen 10 min ago): offline, last seen $ls2");
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]
[emerg]
