# Soak: 100,000 users for PRESENCE_SOAK_SECONDS (600) through one wrk
# client at 4,000 requests/s.  10,000 "steady" users heartbeat every 5 s
# and stay online; 90,000 "churners" heartbeat once every 45 s with a 10 s
# timeout, so each goes online, offline and online again, and 1 in 50 of
# them goes invisible and visible again on alternate turns; every 21st
# request reads a user's own status.  Every 10 s the memory of the master
# and the workers and the table's figures are sampled (and printed); after
# the warm-up the memory must stay flat.
#
# PRESENCE_SOAK_SECONDS=0 skips it, and so does the AddressSanitizer pass
# of make test (PRESENCE_ASAN_PASS=1: ASan's allocator has its own
# memory profile, and the soak would take as long again).

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Time::HiRes qw(sleep time);
use PresenceLoad;

my $SECS = $ENV{PRESENCE_SOAK_SECONDS} // 600;

plan skip_all => 'PRESENCE_SOAK_SECONDS=0' if $SECS eq '0';
plan skip_all => 'not in the AddressSanitizer pass'
    if $ENV{PRESENCE_ASAN_PASS};

$SECS >= 120 or BAIL_OUT('PRESENCE_SOAK_SECONDS: 0, or at least 120');

my $USERS = 100_000;
my $STEADY = 10_000;
my $RATE = 4000;
my $TIMEOUT = 10;
my $EVERY = $ENV{PRESENCE_SOAK_INTERVAL} || 10;
my $WARMUP = 60;                  # two turns of the churners and more
my $GROWTH_KB = 4096;             # allowed growth after the warm-up

(`wrk -v 2>&1` // '') =~ /^wrk /
    or BAIL_OUT('wrk is not installed (util/deps.sh installs it)');

start_nginx(<<CONF);
    presence_zone name=presence size=16m;
    presence_heartbeat_timeout ${TIMEOUT}s;
    presence_auth_secret $SECRET;

    server {
        listen 127.0.0.1:$PORT reuseport;

        location = /v1/heartbeat { presence_heartbeat; }
        location /v1/status { presence_status; }
        location = /metrics { presence_metrics; }

        location /check/status {
            presence_identity \$http_x_user_id;
            presence_status;
        }
    }
CONF

my $tokens = "$SERVROOT/tokens";
write_tokens($tokens, 1, $USERS);

my @workers = workers();
my $w = wrk_start(name => 'soak', connections => 4, seconds => $SECS,
                  tokens => $tokens,
                  env => { rate => $RATE, steady => $STEADY,
                           steady_every => 2, status_every => 20,
                           invisible => 50 });

my $t0 = time;
my (@samples, $base);

diag sprintf "%6s %8s %8s %8s %-24s %8s %8s %9s %9s",
    'secs', 'rss kB', 'dirty', 'shmem', 'per process rss', 'tracked',
    'online', '->online', '->offline';

for (my $next = $EVERY; $next < $SECS - 1; $next += $EVERY) {
    sleep 0.2 while time < $t0 + $next;

    my $mem = memory();
    my $m = metrics();
    my %s = (t => $next, %$mem,
             map { ($_ => $m->{"presence_$_"}) }
                 qw(tracked_users online_users));
    $s{on} = $m->{'presence_transitions_total{to="online"}'};
    $s{off} = $m->{'presence_transitions_total{to="offline"}'};
    push @samples, \%s;
    $base //= \%s if $next >= $WARMUP;

    diag sprintf "%6d %8d %8d %8d %-24s %8d %8d %9d %9d",
        $next, @s{qw(rss dirty shmem)}, join(' ', @{ $s{each} }),
        @s{qw(tracked_users online_users on off)};
}

my $r = wrk_wait($w);
ok(defined $r->{sent}, 'wrk ran') or diag $r->{out};
diag sprintf "wrk: sent %d answered %d (204: %d, other 2xx: %d, non-2xx:"
    . " %d) in %.0f s; socket errors: connect %d read %d write %d"
    . " timeout %d", @$r{qw(sent answered hb)}, $r->{ok} - $r->{hb},
    @$r{qw(bad seconds connect read write timeout)};

is($r->{bad}, 0, 'no error answer');
is($r->{lost}, 0, 'no request lost');
is($r->{errors}, 0, 'no socket error');
# half the rate still heartbeats the steady users twice per timeout
ok($r->{answered} >= $RATE * $SECS / 2, 'the load was kept up')
    or diag "answered $r->{answered} in $SECS s";

# -- memory -------------------------------------------------------------------

my @after = grep { $_->{t} >= $WARMUP } @samples;
for my $k (qw(rss dirty)) {
    my ($max) = sort { $b <=> $a } map { $_->{$k} } @after;
    my $last = $after[-1]{$k};
    diag sprintf "%s: %d kB at %d s, at most %d kB after, %d kB at the end"
        . " (%+.1f%%)", $k, $base->{$k}, $base->{t}, $max, $last,
        100 * ($last - $base->{$k}) / $base->{$k};
    ok($max - $base->{$k} < $GROWTH_KB,
       "$k flat after the warm-up: grew less than $GROWTH_KB kB");
}

# -- the table ----------------------------------------------------------------

my $m = metrics();
is($m->{presence_tracked_users}, $USERS, 'every user tracked');
ok(!grep({ $_->{online_users} < $STEADY } @after),
   'never fewer online than the steady users');
ok(!grep({ $_->{online_users} >= $_->{tracked_users} } @after),
   'churners offline at every sample');
ok($m->{'presence_transitions_total{to="offline"}'} > $USERS - $STEADY
   && $m->{'presence_transitions_total{to="online"}'} > $USERS,
   'churners went offline and came back');

my $st = statuses([1 .. $STEADY], '/check/status');
is(scalar(grep { ($st->{$_}{status} // '') eq 'online' } 1 .. $STEADY),
   $STEADY, 'every steady user online at the end');

is(join(' ', workers()), join(' ', @workers), 'the same workers throughout');
my @log = grep { /\[(alert|crit|emerg|error)\]/ } split /\n/, nginx_log();
is(scalar @log, 0, 'no error, alert or crit in the log')
    or diag join "\n", @log[0 .. ($#log < 9 ? $#log : 9)];

done_testing();
