# The cluster, a node that dies (doc/cluster.md, "A node that dies"): two
# nodes of docker/nginx-node.conf on loopback (ports P and P+1) with
# "presence_cluster node=<a|b>-<pid> timeout=2s", sharing PostgreSQL,
# Redis and the Kafka test broker, on a topic of this run's own.  Users
# online on A; one of them moves to B; A's master and workers are killed
# with SIGKILL.  Within timeout + 1 s node B says offline for A's users,
# last_seen their last known activity, seq + 1, each with exactly one
# offline event; the user that moved shows no offline at all.  A node
# started again reads the same from the log.  nginx -t refuses a cluster
# without presence_redis.  P is TEST_NGINX_SERVER_PORT.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Time::HiRes ();
use PresenceTest qw(token fetch_ticket pg_reset);
use PresenceSSE qw(sse_start sse_stop sse_read);
use PresenceDeploy;
use PresenceKafka;
use PresenceCluster;

plan skip_all => 'needs the Kafka test broker (TEST_NGINX_KAFKA_BROKERS)'
    unless $ENV{TEST_NGINX_KAFKA_BROKERS};

my $P = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
my ($PA, $PB) = ($P, $P + 1);
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-death';
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
my $dsn = $PresenceTest::PG_DSN;

# a topic and node names of this run: the test broker and Redis keep
# earlier runs' messages and node names ("a" < "b": B is the lowest live)
my $topic = "death-$$-" . time();
my %name = (a => "a-$$", b => "b-$$");
my $timeout = 2;    # presence_cluster timeout=

system('rm', '-rf', $root);
my %dir = (a => "$root/a", b => "$root/b");
my %port = (a => $PA, b => $PB);

nodes(map { $_ => [$port{$_}, $dir{$_}] } qw(a b));

sub ready {
    my ($node) = @_;
    for (1 .. 100) {
        my ($status) = unix_get("$dir{$node}/metrics.sock", '/healthz');
        return 1 if $status == 200;
        Time::HiRes::sleep(0.05);
    }
    return 0;
}

# the node config: presence_cluster after presence_kafka, this run's
# topic, presence_health, the log written every 50 ms; users time out
# after 30 s, so that only the node's death takes them offline here
sub cluster_conf {
    my ($n, %o) = @_;
    my $file = render_node(dir => $dir{$n}, port => $port{$n},
                           pg_dsn => $dsn, redis_port => $redis_port,
                           timeout => '30s');
    my $c = cluster_node($file, node => $name{$n}, topic => $topic,
                         timeout => "${timeout}s");
    $c =~ s{^\s*presence_redis\s[^\n]*\n}{}m if $o{no_redis};
    PresenceDeploy::spew($file, $c);
    return $file;
}

my $watcher = 3300;
my @ids = 3301 .. 3310;     # online on A when it dies
my $mover = 3311;           # online on A, then on B
pg_reset(users => [[$watcher, 'watcher'],
                   map { [$_, "user$_"] } @ids, $mover]);

my @sse;
my $paused = 0;
END {
    local $?;    # the stopped children's statuses are not the test's
    system("redis-cli -p $redis_port CLIENT UNPAUSE >/dev/null 2>&1")
        if $paused;
    sse_stop($_) for @sse;
    nginx_stop($dir{$_})
        for grep { $dir{$_} && -e "$dir{$_}/nginx.conf" } qw(a b);
}


# 1. nginx -t: a cluster without presence_redis

cluster_conf('a', no_redis => 1);
my $out = `$PresenceDeploy::NGINX -t -p $dir{a}/ -c $dir{a}/nginx.conf 2>&1`;
ok($? != 0, "nginx -t refuses presence_cluster without presence_redis");
like($out, qr/"presence_cluster" needs "presence_redis"/, "and says why")
    or diag($out);

ok(kafka_produce($topic, ['0', '{"hello":"world"}']), "this run's topic made");


sub redis_raw {
    my $v = `redis-cli -p $redis_port --raw @_ 2>/dev/null`;
    chomp $v;
    return $v;
}


# 2. not ready before its deadline is in Redis: a node caught up with the
# log but whose first liveness beat is not answered (Redis's writes
# paused) takes no users: were it to die then, no deadline of its name
# would pass, and its users would stay online everywhere

cluster_conf($_) for qw(a b);
is(redis_raw('CLIENT', 'PAUSE', 60000, 'WRITE'), 'OK', "Redis writes paused");
$paused = 1;
nginx_start($dir{a}, $PA);
my $caught = 0;
for (1 .. 200) {
    $caught = 1, last
        if (eval { slurp("$dir{a}/error.log") } // '')
           =~ /the replica caught up with the log/;
    Time::HiRes::sleep(0.05);
}
ok($caught, "node A caught up with the log");
Time::HiRes::sleep(0.3);
{
    my ($st, $body) = unix_get("$dir{a}/metrics.sock", '/healthz');
    is($st, 503, "node A: /healthz 503 while its deadline is not in Redis");
    like($body, qr/^\{"error":\{"code":"unavailable","message":"not ready: this node's liveness is not in Redis yet"\}\}/,
         "and says why") or diag($body);
    my $r = req(POST => $PA, '/v1/heartbeat', $watcher);
    is($r->{status}, 503, "and a heartbeat is 503")
        or diag("$r->{status} $r->{content}");
    is(metric(a => 'presence_cluster_ready'), 0,
       "presence_cluster_ready 0");
}
is(redis_raw('CLIENT', 'UNPAUSE'), 'OK', "Redis writes again");
$paused = 0;
ok(ready('a'), "node A ready");
is(metric(a => 'presence_cluster_ready'), 1, "presence_cluster_ready 1");


# 3. two nodes; A's users, one of which moves to B; a watcher on B

nginx_start($dir{b}, $PB);
ok(ready('b'), "node B ready");

# liveness: one Redis hash, a deadline per node by Redis's clock
{
    my ($sec, $usec) = split /\n/, redis_raw('TIME');
    my $now = $sec * 1000 + int($usec / 1000);
    for my $n (qw(a b)) {
        my $d = redis_raw('HGET', 'presence:live', $name{$n});
        ok($d =~ /^\d+$/ && $d > $now && $d <= $now + $timeout * 1000 + 100,
           "node $n: its deadline in presence:live is ahead, within timeout")
            or diag("deadline '$d', Redis now $now");
    }
}

my $subscribed = 0;
for my $id (@ids, $mover) {
    $subscribed++
        if req(PUT => $PA, "/v1/subscriptions/$id", $watcher)->{status} == 201;
}
is($subscribed, @ids + 1, "the watcher subscribes to the users");

my $file = "$root/sse-death.out";
{
    local $ENV{TEST_NGINX_SERVER_PORT} = $PB;
    my $url = "/v1/events?ids=" . join(',', @ids, $mover)
              . "&ticket=" . fetch_ticket(token($watcher));
    push @sse, sse_start($url, $file);
}
Time::HiRes::sleep(0.3);

req(POST => $PA, '/v1/heartbeat', $_) for @ids, $mover;

my %before;
for (1 .. 60) {
    %before = map { $_ => status_of(b => $_) } @ids, $mover;
    last unless grep { $before{$_} !~ /"status":"online"/ } keys %before;
    Time::HiRes::sleep(0.05);
}
is(scalar(grep { $before{$_} =~ /"status":"online"/ } @ids, $mover),
   @ids + 1, "A's users online on B");

# the mover's heartbeats reach B: B takes it over (A gets the claim)
req(POST => $PB, '/v1/heartbeat', $mover);
my $moved = 0;
for (1 .. 60) {
    my @m = log_of($topic, $mover);
    $moved = 1, last
        if @m && $m[-1][0] =~ /presence-owner=\Q$name{b}\E/;
    Time::HiRes::sleep(0.05);
}
ok($moved, "user $mover moved to B (B's claim in the log)");
Time::HiRes::sleep(0.2);
like(status_of(a => $mover), qr/"status":"online"/, "and A says online");

my %seen_before = map { $_ => ($before{$_} =~ /"last_seen":(\d+)/)[0] } @ids;
my %seq_before = map { $_ => ($before{$_} =~ /"seq":(\d+)/)[0] } @ids;


# 4. kill -9 A's master and workers: B writes A's users offline

my ($pidfile) = slurp("$dir{a}/nginx.conf") =~ /^pid\s+(\S+);/m;
chomp(my $master = slurp($pidfile));
my @workers = grep { /^\d+$/ } split /\s+/,
              `ps -o pid= --ppid $master 2>/dev/null`;
ok(@workers >= 1, "node A: master $master, workers @workers");
my $t0 = Time::HiRes::time();
kill 'KILL', $master, @workers;
unlink $pidfile;

my %after;
my $took;
while (Time::HiRes::time() - $t0 < $timeout + 5) {
    %after = map { $_ => status_of(b => $_) } @ids;
    unless (grep { $after{$_} !~ /"status":"offline"/ } @ids) {
        $took = Time::HiRes::time() - $t0;
        last;
    }
    Time::HiRes::sleep(0.1);
}
ok(defined $took, "node B: A's users offline after A died")
    or diag(join ' ', map { "$_ $after{$_}" } @ids);
diag(sprintf "A killed to its users offline on B: %.2f s (timeout %d s)",
             $took // -1, $timeout);
cmp_ok($took // 99, '<=', $timeout + 1, "within timeout + 1 s");

is(scalar(grep {
       $after{$_} =~ /"last_seen":(\d+),"seq":(\d+)/
       && $1 == $seen_before{$_} && $2 == $seq_before{$_} + 1
   } @ids), scalar @ids,
   "each with its last known activity as last_seen, seq + 1")
    or diag(join ' ', map { "$_ $before{$_} -> $after{$_}" } @ids);

like(status_of(b => $mover), qr/"status":"online"/,
     "user $mover, who moved to B, stays online");

my @data;
for (1 .. 40) {
    my ($ev) = sse_read($file);
    @data = map { $_->{data} // '' } @$ev;
    last if scalar(grep { /"status":"offline"/ } @data) >= @ids;
    Time::HiRes::sleep(0.05);
}
Time::HiRes::sleep(0.3);
{
    my ($ev) = sse_read($file);
    @data = map { $_->{data} // '' } @$ev;
}
my %offline;
for (grep { /"status":"offline"/ } @data) {
    $offline{$1}++ if /"id":(\d+)/;
}
is(scalar(grep { ($offline{$_} // 0) == 1 } @ids), scalar @ids,
   "exactly one offline event for each of A's users")
    or diag("the watcher's events: @data");
ok(!$offline{$mover}, "no offline event for user $mover")
    or diag("the watcher's events: @data");

my @msgs = log_of($topic, $ids[0]);
like($msgs[-1][0] // '', qr/presence-owner=\Q$name{b}\E/,
     "the offline is in the log, written by B") or diag(explain(\@msgs));
like($msgs[-1][0] // '', qr/presence-epoch=1\b/, "with epoch + 1");
like($msgs[-1][1] // '', qr/"status":"offline"/, "offline");

my $gone = '';
for (1 .. 40) {
    $gone = redis_raw('HEXISTS', 'presence:live', $name{a});
    last if $gone eq '0';
    Time::HiRes::sleep(0.05);
}
is($gone, '0', "A's name left presence:live once its users were written");

is(metric(b => 'presence_cluster_orphans_total'), scalar @ids,
   "/metrics: B wrote A's users offline");
cmp_ok(metric(b => 'presence_cluster_dead_nodes_total') // 0, '>=', 1,
       "/metrics: a dead node");


# 5. A again (a new zone): it reads the same from the log

unlink glob("$dir{a}/*.sock");    # left by the SIGKILL
nginx_start($dir{a}, $PA);
ok(ready('a'), "node A ready again");
is(scalar(grep { status_of(a => $_) eq $after{$_} } @ids), scalar @ids,
   "node A says what B says of its old users");
like(status_of(a => $mover), qr/"status":"online"/,
     "and user $mover online");

done_testing();
