# "Appear offline" is durable (issue 10, item 5): the invisible flag is
# written behind to PostgreSQL (users.invisible) and Redis (presence:{id}
# field "invisible"), also for a user who goes invisible while offline; a
# new table (kill -9 of nginx, started again) learns it before it shows
# anyone: an invisible user's heartbeats publish nothing and it stays
# offline to its subscribers; while PostgreSQL is down, new users stay
# offline (privacy first) and come online once it answers.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceStores;

workers(2);
master_on();
no_shuffle();

# the http{} part of the blocks without their own (nchan loaded too)
events_defaults(<<'CONF');
presence_zone name=presence size=4m;
presence_heartbeat_timeout 500ms;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=1s;
presence_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=500ms;
presence_sync_interval 200ms;
presence_pg_refresh 2s;
# events publisher
CONF

our @USERS = ([1001, 'alice'], [1002, 'bob'], [1003, 'carol']);
our @SUBS = ([1002, 1001], [1002, 1003]);

# before the first nginx starts: its warm start finds no leftovers
pg_reset(users => \@USERS, subs => \@SUBS);

sub invisible_in_pg {
    pg_value("SELECT invisible FROM users WHERE user_id = $_[0]");
}

sub invisible_in_redis {
    my $v = redis_cli('HGET', "presence:$_[0]", 'invisible');
    $v =~ s/"//g;
    return $v;
}

run_tests();

__DATA__

=== TEST 1: PUT offline of an offline user reaches PostgreSQL's invisible column and Redis; online again clears it
--- config
    # pg api
--- init
pg_reset(users => \@::USERS, subs => \@::SUBS);
redis_cli('DEL', 'presence:1001');
my $r = api('PUT', '/v1/status', 1001, '{"status":"offline"}');
is($r->[0], 200, 'PUT offline of a user never seen');
ok(wait_for(3, sub { main::invisible_in_pg(1001) eq 't' }),
   'users.invisible is true in PostgreSQL')
    or diag('invisible: ' . main::invisible_in_pg(1001));
ok(wait_for(3, sub { main::invisible_in_redis(1001) eq '1' }),
   'presence:1001 invisible 1 in Redis')
    or diag('invisible: ' . main::invisible_in_redis(1001));
is(pg_state(1001), 'offline,', 'offline, never seen, in PostgreSQL');
is(main::invisible_in_pg(1003), 'f', 'another user is not invisible');
$r = api('PUT', '/v1/status', 1001, '{"status":"online"}');
is($r->[0], 200, 'PUT online');
ok(wait_for(3, sub { main::invisible_in_pg(1001) eq 'f'
                     && pg_state(1001) =~ /^online,\d+$/ }),
   'visible again: invisible false, online in PostgreSQL')
    or diag(main::invisible_in_pg(1001) . ' ' . pg_state(1001));
ok(wait_for(3, sub { main::invisible_in_redis(1001) eq '0' }),
   'invisible 0 in Redis');
--- request
GET /pause
--- error_code: 204



=== TEST 2: invisible, kill -9 of nginx, started again: heartbeats publish nothing, still offline to a subscriber
--- config
    # pg api
--- init
pg_reset(users => \@::USERS, subs => \@::SUBS);
heartbeat(1001) == 204 or die 'heartbeat';
my $r = api('PUT', '/v1/status', 1001, '{"status":"offline"}');
is($r->[0], 200, 'PUT offline of an online user');
ok(wait_for(3, sub { main::invisible_in_pg(1001) eq 't' }),
   'invisible in PostgreSQL before the kill');
nginx_kill9();
unlink "$ENV{TEST_NGINX_SERVER_ROOT}/logs/publish.sock";
nginx_start();
# a new table: the first heartbeats of the invisible user
for (1 .. 5) { heartbeat(1001) == 204 or die 'heartbeat'; nap(0.1) }
like(api('GET', '/v1/status/1001', 1002)->[1], qr/"status":"offline"/,
     'offline to a subscriber after the restart');
like(api('GET', '/v1/status/1001', 1001)->[1], qr/"status":"offline"/,
     'and to itself');
is(metric('presence_events_published_total'), 0, 'no event published');
is(metric('presence_transitions_total{to="online"}'), 0,
   'no one came online');
is(metric('presence_online_users'), 0, 'no one online');
# a visible user of the same subscriber: its online event goes out
heartbeat(1003) == 204 or die 'heartbeat';
ok(wait_for(2, sub { (metric('presence_events_published_total') // 0) == 1 }),
   'a visible user: its online event is published')
    or diag(metric('presence_events_published_total'));
like(api('GET', '/v1/status/1003', 1002)->[1], qr/"status":"online"/,
     'and it is online to the subscriber');
heartbeat(1001) == 204 or die 'heartbeat';
nap(0.3);
is(metric('presence_events_published_total'), 1,
   'still nothing of the invisible user');
is(main::invisible_in_pg(1001), 't', 'still invisible in PostgreSQL');
ok(wait_for(3, sub { pg_state(1001) =~ /^offline,/ }),
   'offline in PostgreSQL');
--- request
GET /v1/status/1001
--- more_headers eval
bearer(1002)
--- error_code: 200
--- response_body_like: "status":"offline"



=== TEST 3: the warm start restores the flag too: an invisible user loaded by it stays invisible
--- config
    # pg api
--- init
# (the table of this nginx was warmed before the reset: user 1001 of the
# last test is invisible in it already; 1003 is not)
pg_reset(users => \@::USERS, subs => \@::SUBS);
heartbeat(1003) == 204 or die 'heartbeat';
api('PUT', '/v1/status', 1003, '{"status":"offline"}')->[0] == 200 or die;
ok(wait_for(3, sub { main::invisible_in_pg(1003) eq 't'
                     && pg_state(1003) =~ /^offline,\d+$/ }),
   'invisible, last seen, in PostgreSQL')
    or diag(main::invisible_in_pg(1003) . ' ' . pg_state(1003));
nginx_kill9();
unlink "$ENV{TEST_NGINX_SERVER_ROOT}/logs/publish.sock";
nginx_start();
ok(wait_for(3, sub { metric('presence_warm_done') }), 'warm start done');
ok(metric('presence_warm_users') >= 1, 'the user was loaded');
heartbeat(1003) == 204 or die 'heartbeat';
nap(0.3);
like(api('GET', '/v1/status/1003', 1002)->[1], qr/"status":"offline"/,
     'offline to a subscriber');
is(metric('presence_events_published_total'), 0, 'no event published');
--- request
GET /pause
--- error_code: 204



=== TEST 4: PostgreSQL down at a restart: a new user stays offline (privacy first) until it answers
--- config
    # pg api
--- init
pg_reset(users => \@::USERS, subs => \@::SUBS);
nginx_kill9();
unlink "$ENV{TEST_NGINX_SERVER_ROOT}/logs/publish.sock";
pg_stop();
nginx_start();
heartbeat(1003) == 204 or die 'heartbeat';
nap(0.5);
heartbeat(1003) == 204 or die 'heartbeat';
like(api('GET', '/v1/status/1003', 1003)->[1], qr/"status":"offline"/,
     'offline while its invisible flag is unknown');
is(metric('presence_transitions_total{to="online"}'), 0, 'no one came online');
pg_start();
ok(wait_for(5, sub { heartbeat(1003); api('GET', '/v1/status/1003', 1003)->[1] =~ /"status":"online"/ }),
   'online once PostgreSQL answered');
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]
[emerg]



=== TEST 5: a user pending across a reload (PostgreSQL down) is asked again by the new workers once it answers
--- config
    # pg api
--- init
pg_reset(users => \@::USERS, subs => \@::SUBS);
nginx_kill9();
unlink "$ENV{TEST_NGINX_SERVER_ROOT}/logs/publish.sock";
pg_stop();
nginx_start();
heartbeat(1003) == 204 or die 'heartbeat';
nap(0.2);
like(api('GET', '/v1/status/1003', 1003)->[1], qr/"status":"offline"/,
     'offline while its invisible flag is unknown');
open my $in, '<', "$ENV{TEST_NGINX_SERVER_ROOT}/logs/nginx.pid" or die;
my $master = <$in>;
chomp $master;
kill 'HUP', $master or die 'reload';
nap(1);
pg_start();
ok(wait_for(6, sub { heartbeat(1003); api('GET', '/v1/status/1003', 1003)->[1] =~ /"status":"online"/ }),
   'online once PostgreSQL answered, though the worker that was to ask is gone');
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]
[emerg]
