# A zone full of users long gone takes new users (issue 10, item 2): the
# users offline and clean (PostgreSQL holds their state) make room, the
# longest offline first, whatever presence_retain says; past
# presence_retain they go anyway, and the tracked gauge counts down.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceStores;

our $HTTP_CONFIG = <<'CONF';
    presence_zone name=presence size=1m max_users=1000;
    presence_heartbeat_timeout 2s;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
    presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=1s;
    presence_sync_interval 100ms;
CONF

our @USERS = (1 .. 2000);

pg_reset(users => [map { [$_, "user$_"] } @USERS]);

no_shuffle();
run_tests();

__DATA__

=== TEST 1: 1000 users offline and written fill max_users=1000; 1000 new users all come online
--- http_config eval
# a timeout longer than 1000 heartbeats take on a loaded machine: the
# first new users must still be online when the last one comes
$::HTTP_CONFIG =~ s/presence_heartbeat_timeout 2s/presence_heartbeat_timeout 5s/r
--- config
    # pg api
--- init
pg_reset(users => [map { [$_, "user$_"] } @::USERS]);
my @bad = grep { heartbeat($_) != 204 } 1 .. 1000;
is("@bad", '', 'the first 1000 users come online');
is(metric('presence_tracked_users'), 1000, 'the zone is full');
# offline (5 s), and written to PostgreSQL (100 ms)
ok(wait_for(12, sub {
       my $st = pg_states(1 .. 1000);
       !grep { ($st->{$_} // '') !~ /^offline,\d+$/ } 1 .. 1000 }),
   'they are offline in PostgreSQL, with their last_seen');
my $old = pg_states(1 .. 1000);
@bad = grep { heartbeat($_) != 204 } 1001 .. 2000;
is("@bad", '', '1000 new users all come online, none refused');
is(metric('presence_tracked_users'), 1000, 'the zone holds 1000');
is(metric('presence_reclaimed_total'), 1000, '1000 slots were reclaimed');
# online once PostgreSQL told their invisible flag (a few ms)
wait_for(3, sub { metric('presence_online_users') == 1000 });
is(metric('presence_online_users'), 1000, 'the new ones are online');
my $now = pg_states(1 .. 1000);
is(join(',', grep { $now->{$_} ne $old->{$_} } 1 .. 1000), '',
   "the old ones' last_seen stays in PostgreSQL");
--- request
GET /metrics
--- response_body_like eval
qr/\npresence_zone_full_total 0\n/
--- no_error_log
[alert]
[crit]



=== TEST 2: presence_retain 1s: users offline for 1 s leave the zone; back, they are online again
--- http_config eval: $::HTTP_CONFIG . "    presence_retain 1s;\n"
--- config
    # pg api
--- init
ok(wait_for(4, sub { metric('presence_warm_done')
                     && metric('presence_tracked_users') == 0 }),
   "the warm start's users, seen over 1 s ago, leave the zone too");
my $reclaimed = metric('presence_reclaimed_total');
pg_reset(users => [map { [$_, "user$_"] } @::USERS]);
my @bad = grep { heartbeat($_) != 204 } 1 .. 50;
is("@bad", '', '50 users online');
is(metric('presence_tracked_users'), 50, 'tracked 50');
ok(wait_for(6, sub { metric('presence_tracked_users') == 0 }),
   'offline for presence_retain: the tracked gauge counts down to 0');
is(metric('presence_reclaimed_total') - $reclaimed, 50, 'reclaimed 50');
is(heartbeat(7), 204, 'one comes back');
# new to the table again: online once PostgreSQL told its invisible flag
my $st;
wait_for(1, sub { $st = self_status(7); $st && $st->[0] eq 'online' });
is($st && $st->[0], 'online', 'and is online');
is(metric('presence_tracked_users'), 1, 'tracked 1');
--- request
GET /metrics
--- response_body_like eval
qr/\npresence_reclaimed_total [1-9]\d*\n/
--- no_error_log
[alert]
[crit]
