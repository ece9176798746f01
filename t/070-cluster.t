# The cluster, phase 1 (doc/cluster.md): two nodes of docker/nginx-node.conf
# on loopback (ports P and P+1) with "presence_cluster node=a|b", sharing
# PostgreSQL, Redis and the Kafka test broker, on a topic of this run's
# own.  A user's state reaches the other node's replica within 1 s (the lag
# is measured and printed); a user moving from A to B goes on from A's seq
# with no stale offline from A, and B's events; $presence_user; nginx -t
# refuses a cluster without Kafka; readiness before and after catch-up.
# P is TEST_NGINX_SERVER_PORT.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use HTTP::Tiny ();
use Time::HiRes ();
use PresenceTest qw(token fetch_ticket pg_reset);
use PresenceSSE qw(sse_start sse_stop sse_read);
use PresenceDeploy;
use PresenceKafka;
use PresenceCluster;

plan skip_all => 'needs the Kafka test broker (TEST_NGINX_KAFKA_BROKERS)'
    unless $ENV{TEST_NGINX_KAFKA_BROKERS};

# part 7: nchan crashed node B's workers after its reload (a known bug)
my $nchan_reload_crash = 0;
my $P = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
my ($PA, $PB) = ($P, $P + 1);
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-cluster';
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
my $dsn = $PresenceTest::PG_DSN;

# a topic of this run: the test broker keeps every earlier run's messages
my $topic = "cluster-$$-" . time();

system('rm', '-rf', $root);
my %dir = (a => "$root/a", b => "$root/b");
my %port = (a => $PA, b => $PB);

my $http = HTTP::Tiny->new(timeout => 5, keep_alive => 0);

nodes(map { $_ => [$port{$_}, $dir{$_}] } qw(a b));

sub health {
    my ($node) = @_;
    my ($status, $body) = unix_get("$dir{$node}/metrics.sock", '/healthz');
    return "$status $body";
}

# the node config with the cluster: presence_cluster after presence_kafka,
# this run's topic, presence_health in both /healthz, a /whoami location
sub cluster_conf {
    my ($n, %o) = @_;
    # (node B: a property of how to reach the brokers, which its consumer
    # takes too)
    my $file = render_node(dir => $dir{$n}, port => $port{$n},
                           pg_dsn => $dsn, redis_port => $redis_port,
                           timeout => '2s',
                           kafka_options => $n eq 'b'
                                            ? 'security.protocol=plaintext'
                                            : '');
    my $c = cluster_node($file, node => $n, topic => $topic);
    $c =~ s|(location = /healthz \{)|location = /whoami { return 200 "[\$presence_user]"; }\n        $1|;
    $c =~ s{^\s*presence_kafka\s[^\n]*\n}{}m if $o{no_kafka};
    PresenceDeploy::spew($file, $c);
    return $file;
}

sub nginx_t {
    my ($n) = @_;
    my $out = `$PresenceDeploy::NGINX -t -p $dir{$n}/ -c $dir{$n}/nginx.conf 2>&1`;
    return ($? == 0, $out);
}

sub percentile {
    my ($p, @v) = @_;
    @v = sort { $a <=> $b } @v;
    return $v[int($p * $#v + 0.5)] // -1;
}

my @users = map { [$_, "user$_"] } 3001 .. 3030;
pg_reset(users => [[3100, 'watcher'], @users]);

my @sse;
END {
    sse_stop($_) for @sse;
    nginx_stop($dir{$_})
        for grep { $dir{$_} && -e "$dir{$_}/nginx.conf" } qw(a b);
}


# 1. nginx -t: a cluster without Kafka, a bad node name

cluster_conf('a', no_kafka => 1);
my ($ok, $out) = nginx_t('a');
ok(!$ok, "nginx -t refuses presence_cluster without presence_kafka");
like($out, qr/"presence_cluster" needs "presence_kafka"/, "and says why")
    or diag($out);

cluster_conf('a');
{
    my $file = "$dir{a}/nginx.conf";
    my $c = slurp($file);
    (my $bad = $c) =~ s{presence_cluster node=a;}{presence_cluster node=a/b;};
    PresenceDeploy::spew($file, $bad);
    ($ok, $out) = nginx_t('a');
    ok(!$ok && $out =~ /invalid parameter "node=a\/b"/,
       "nginx -t refuses a node name that is no [A-Za-z0-9._-]") or diag($out);
    PresenceDeploy::spew($file, $c);
    ($ok, $out) = nginx_t('a');
    ok($ok, "nginx -t accepts the cluster's config") or diag($out);
}

# the topic exists before the nodes start (a message of no node: skipped)
ok(kafka_produce($topic, ['0', '{"hello":"world"}']), "this run's topic made");


# 2. node A alone: ready at once (a log of one foreign message)

nginx_start($dir{a}, $PA);
my $ready = '';
for (1 .. 100) {
    $ready = health('a');
    last if $ready =~ /^200/;
    Time::HiRes::sleep(0.05);
}
is($ready, "200 ok\n", "node A: ready once it read the log");

is(req(GET => $PA, '/whoami', 3001)->{content}, '[3001]',
   '$presence_user: the verified user of a bearer token');
{
    my $r = $http->request(GET => "http://127.0.0.1:$PA/whoami",
                           { headers => { Authorization => 'Bearer x.y.z' } });
    is($r->{content}, '[]', '$presence_user: empty for a bad token');
    (my $forged = token(3001)) =~ s/.$/$& eq 'A' ? 'B' : 'A'/e;
    $r = $http->request(GET => "http://127.0.0.1:$PA/whoami",
                        { headers => { Authorization => "Bearer $forged" } });
    is($r->{content}, '[]', '$presence_user: empty for a wrongly signed token');
    is($http->get("http://127.0.0.1:$PA/whoami")->{content}, '[]',
       '$presence_user: empty without a token');
    my $ticket = do {
        local $ENV{TEST_NGINX_SERVER_PORT} = $PA;
        fetch_ticket(token(3002));
    };
    is($http->get("http://127.0.0.1:$PA/whoami?ticket=$ticket")->{content},
       '[3002]', '$presence_user: the user of a stream ticket');
}

# users online on A before B starts: B must catch up with them
for my $u (@users[0 .. 9]) {
    req(POST => $PA, '/v1/heartbeat', $u->[0]);
}


# 3. node B starts while the broker is down: not ready until it has read
# the log; then it holds A's users

cluster_conf('b');
kafka_down();
nginx_start($dir{b}, $PB);
Time::HiRes::sleep(0.5);
my $h = health('b');
like($h, qr/^503 \{"error":\{"code":"unavailable","message":"not ready/,
     "node B: not ready while it cannot read the log") or diag($h);
{
    # a change made now would start from a state B has not read yet: the
    # heartbeat and the opening of a stream (it holds its owner online)
    # are refused; reads are answered
    my $r = req(POST => $PB, '/v1/heartbeat', 3002);
    is($r->{status}, 503, "node B not ready: a heartbeat is 503");
    my $ticket = do {
        local $ENV{TEST_NGINX_SERVER_PORT} = $PB;
        fetch_ticket(token(3002));
    };
    ok($ticket, "node B not ready: a stream ticket is given");
    $r = $http->request(GET => "http://127.0.0.1:$PB/v1/events?ids=3002"
                               . "&ticket=$ticket",
                        { headers => { Accept => 'text/event-stream' } });
    is($r->{status}, 503, "node B not ready: a stream is refused (503)")
        or diag("$r->{status} $r->{content}");
}
kafka_up();
my $t_up = Time::HiRes::time();
for (1 .. 200) {
    $h = health('b');
    last if $h =~ /^200/;
    Time::HiRes::sleep(0.05);
}
is($h, "200 ok\n", "node B: ready once it caught up");
diag(sprintf "node B: ready %.2f s after the broker came back",
             Time::HiRes::time() - $t_up);

for my $u (@users[0 .. 9]) {
    req(POST => $PA, '/v1/heartbeat', $u->[0]);
}
# A's producer was cut from the broker too: its messages reach the log
# when librdkafka reconnects (backoff up to 2 s), after B said ready
my $caught = 0;
for (1 .. 100) {
    $caught = grep { status_of(b => $_->[0]) =~ /"status":"online"/ }
              @users[0 .. 9];
    last if $caught == 10;
    Time::HiRes::sleep(0.05);
}
is($caught, 10, "node B holds the 10 users online on A");


# 4. the replica's lag: 20 users come online on A, node B is asked until it
# says so

my @lag;
for my $u (@users[10 .. 29]) {
    my $id = $u->[0];
    my $t0 = Time::HiRes::time();
    req(POST => $PA, '/v1/heartbeat', $id);
    while (Time::HiRes::time() - $t0 < 2) {
        last if status_of(b => $id) =~ /"status":"online"/;
        Time::HiRes::sleep(0.002);
    }
    push @lag, (Time::HiRes::time() - $t0) * 1000;
}
diag(sprintf "heartbeat on A to online on B, 20 users: p50 %.0f ms, "
             . "max %.0f ms (%s)", percentile(0.5, @lag), percentile(1, @lag),
             join ' ', map { int } @lag);
# (the first ones after the broker's return can wait for librdkafka's
# fetch backoff: once 1.16 s, the rest 40-60 ms)
cmp_ok(percentile(0.5, @lag), '<', 200, "replicas within 200 ms (p50)");
cmp_ok(percentile(1, @lag), '<', 2000, "every replica within 2 s");

# same status, last_seen and seq on both nodes
my $same = 0;
for my $u (@users[10 .. 29]) {
    my ($sa, $sb) = (status_of(a => $u->[0]), status_of(b => $u->[0]));
    $same++ if $sa eq $sb;
}
is($same, 20, "both nodes answer the same status, last_seen and seq");

# A times them out (2 s): B follows, with A's seq, and does not time them
# out itself
my $off = 0;
for (1 .. 80) {
    $off = grep { status_of(b => $_->[0]) =~ /"status":"offline".*"seq":2\}/ }
           @users[10 .. 29];
    last if $off == 20;
    Time::HiRes::sleep(0.05);
}
is($off, 20, "A's offline of the 20 users reached B, seq 2");
my $log = join ' ', map { $_->[0] } log_of($topic, 3011);
like($log, qr/presence-owner=a,presence-epoch=0,presence-invisible=0/,
     "the log's headers: owner, epoch, invisible") or diag($log);
is(metric(b => 'presence_transitions_total{to="offline"}') // 0, 0,
   "node B timed out none of A's users");
is(metric(b => 'presence_cluster_ready'), 1, "/metrics: node B ready");
cmp_ok(metric(b => 'presence_cluster_applied_total') // 0, '>=', 60,
       "/metrics: B applied A's 60 changes at least");
is(metric(b => 'presence_cluster_errors_total'), 0, "/metrics: no error");
cmp_ok(metric(b => 'presence_cluster_skipped_total') // 0, '>=', 1,
       "/metrics: the message of no node skipped");


# 5. a user moves from A to B: B goes on from A's seq, A publishes no stale
# offline, the events are B's

my $mover = 3001;
is(req(PUT => $PA, "/v1/subscriptions/$mover", 3100)->{status}, 201,
   "the watcher subscribes to user $mover");
my $file = "$root/sse-move.out";
{
    my $url = do {
        local $ENV{TEST_NGINX_SERVER_PORT} = $PB;
        "/v1/events?ids=$mover&ticket=" . fetch_ticket(token(3100));
    };
    local $ENV{TEST_NGINX_SERVER_PORT} = $PB;
    push @sse, sse_start($url, $file);
}

# online on A now (its heartbeats of part 3 have timed out: seq 2, offline)
req(POST => $PA, '/v1/heartbeat', $mover);
for (1 .. 40) {
    last if status_of(b => $mover) =~ /"status":"online"/;
    Time::HiRes::sleep(0.05);
}
my ($seq_a) = status_of(b => $mover) =~ /"seq":(\d+)/;
like(status_of(b => $mover), qr/"status":"online"/,
     "user $mover online on A, seen on B (seq $seq_a)");
my $off_a = metric(a => 'presence_transitions_total{to="offline"}');

# its heartbeats now reach B, every 0.3 s for 3 s (A's timeout is 2 s)
my $end = Time::HiRes::time() + 3;
while (Time::HiRes::time() < $end) {
    req(POST => $PB, '/v1/heartbeat', $mover);
    Time::HiRes::sleep(0.3);
}
like(status_of(a => $mover), qr/"status":"online","last_seen":\d+,"seq":$seq_a\D/,
     "after A's timeout: A says online, seq $seq_a (B's takeover)");
like(status_of(b => $mover), qr/"status":"online","last_seen":\d+,"seq":$seq_a\D/,
     "and so does B");
is(metric(a => 'presence_transitions_total{to="offline"}'), $off_a,
   "node A dropped its expiry of the user that moved");

# the user stops: B times it out, seq + 1, on both nodes
my $seq_off = $seq_a + 1;
my $st = '';
for (1 .. 80) {
    $st = status_of(a => $mover);
    last if $st =~ /"status":"offline"/;
    Time::HiRes::sleep(0.05);
}
like($st, qr/"status":"offline","last_seen":\d+,"seq":$seq_off\}/,
     "B's offline reached A: seq $seq_off");
like(status_of(b => $mover), qr/"status":"offline","last_seen":\d+,"seq":$seq_off\}/,
     "B says the same");

my $ev = [];
for (1 .. 40) {
    ($ev) = sse_read($file);
    last if grep { ($_->{data} // '') =~ /"status":"offline"/ } @$ev;
    Time::HiRes::sleep(0.05);
}
my @data = map { $_->{data} } @$ev;
diag("the watcher's events: @data");
my @offline = grep { /"status":"offline"/ } @data;
is(scalar @offline, 1, "one offline event");
like($offline[0] // '', qr/"seq":$seq_off\}/, "B's, seq $seq_off");
my @online = grep { /"status":"online"/ } @data;
is(scalar @online, 1, "one online event: B's takeover publishes none");
like($online[0] // '', qr/"seq":$seq_a,"activity":"active","devices":\["default"\]\}/,
     "A's, seq $seq_a");

my @msgs = log_of($topic, $mover);
my @owners = map { $_->[0] =~ /presence-owner=(\w+)/ ? $1 : '?' } @msgs;
my @seqs = map { $_->[1] =~ /"seq":(\d+)/ ? $1 : '?' } @msgs;
my $tail = join ' ', map { "$owners[$_]:$seqs[$_]" } 0 .. $#msgs;
like($tail, qr/a:$seq_a b:$seq_a b:$seq_off$/,
     "the log: A's online, B's takeover (same seq), B's offline") or diag($tail);
my ($epoch) = $msgs[-1][0] =~ /presence-epoch=(\d+)/;
is($epoch, 1, "B's messages have epoch 1");

sse_stop(pop @sse);


# 6. applying is idempotent and by version: messages of a node "c" (kcat,
# with the headers) for user 3020, offline at seq 2 on both nodes

sub from_c {
    my ($json, $epoch) = @_;
    my ($ok) = PresenceKafka::kcat("3020\x1f$json\n", '-P', '-t', $topic,
                                   '-K', "\x1f", '-H', 'presence-owner=c',
                                   '-H', 'presence-epoch=' . ($epoch // 0),
                                   '-H', 'presence-invisible=0',
                                   '-X', 'message.timeout.ms=3000');
    return $ok;
}

# both nodes, until $re matches or 1 s passed
sub both_like {
    my ($re) = @_;
    my ($sa, $sb) = ('', '');
    for (1 .. 40) {
        ($sa, $sb) = (status_of(a => 3020), status_of(b => 3020));
        last if $sa =~ $re && $sb =~ $re;
        Time::HiRes::sleep(0.025);
    }
    return "a $sa b $sb";
}

my $ls = int(Time::HiRes::time() * 1000);
ok(from_c(qq({"id":3020,"status":"online","last_seen":$ls,"seq":1})),
   "node c's stale online (seq 1) is in the log");
ok(from_c(qq({"id":3020,"status":"online","last_seen":$ls,"seq":3})),
   "then its online at seq 3");
# a message without devices (as a node of an older version logs it): none
my $none = ',"activity":"active","devices":\[\]\}';
like(both_like(qr/"status":"online","last_seen":$ls,"seq":3$none/),
     qr/^a .*"seq":3$none b .*"seq":3$none$/,
     "both nodes apply seq 3, and ignored seq 1");
ok(from_c(qq({"id":3020,"status":"offline","last_seen":$ls,"seq":3}), 0),
   "a message of the same version again (another state)");
ok(from_c(qq({"id":3020,"status":"online","last_seen":$ls,"seq":1}), 9),
   "an older seq with a higher epoch");
Time::HiRes::sleep(2.5);
like(both_like(qr/"status":"online","last_seen":$ls,"seq":3$none/),
     qr/^a .*"online".*"seq":3$none b .*"online".*"seq":3$none$/,
     "both ignored them, and 2.5 s on (timeout 2 s) neither timed c's user out");
ok(from_c(qq({"id":3020,"status":"offline","last_seen":$ls,"seq":4})),
   "c's user goes offline, seq 4");
like(both_like(qr/"status":"offline","last_seen":$ls,"seq":4\}/),
     qr/^a .*"offline".*"seq":4\} b .*"offline".*"seq":4\}$/,
     "both nodes follow");



# 7. a reload of node B: the consumer moves to a new worker, the replica
# and the readiness stay

{
    my ($pid) = slurp("$dir{b}/nginx.conf") =~ /^pid\s+(\S+);/m;
    chomp(my $master = slurp($pid));
    my $mark = length(slurp("$dir{b}/error.log") // '');
    kill 'HUP', $master;
    Time::HiRes::sleep(0.5);
    # nchan 1.3.6 now and then crashes every new worker of a node that
    # uses nchan over Redis, at the worker's start after a reload (SIGSEGV
    # in nchan's nodeset_connect_all -> nodeset_set_status, before any
    # request: README, Limits), and the master respawns them for ever.
    # What an operator does then (the liveness probe does it in docker/):
    # restart the node.  Marked TODO, never hidden: the diag says so.
    if (substr(slurp("$dir{b}/error.log") // '', $mark)
        =~ /worker process \d+ exited on signal 11/)
    {
        $nchan_reload_crash = 1;
        diag('nchan crashed node B\'s new workers after the reload '
             . '(the nchan 1.3.6 bug of README, Limits): B restarted');
        nginx_stop($dir{b});
        nginx_start($dir{b}, $PB);
        for (1 .. 100) {
            last if health('b') =~ /^200/;
            Time::HiRes::sleep(0.05);
        }
    }
    local $TODO = $nchan_reload_crash
                  ? 'nchan 1.3.6 crashed the new workers: B was restarted'
                  : undef;
    is(health('b'), "200 ok\n", "node B: still ready after a reload");
    like(status_of(b => 3020), qr/"status":"offline","last_seen":$ls,"seq":4\}/,
         "its replica is kept");
    my $t0 = Time::HiRes::time();
    req(POST => $PA, '/v1/heartbeat', 3021);
    my $st = '';
    while (Time::HiRes::time() - $t0 < 3) {
        $st = status_of(b => 3021);
        last if $st =~ /"status":"online"/;
        Time::HiRes::sleep(0.01);
    }
    like($st, qr/"status":"online"/, "a new worker of B applies A's changes");
    diag(sprintf "after the reload, heartbeat on A to online on B: %.0f ms",
                 (Time::HiRes::time() - $t0) * 1000);
}


# 8. node A restarts (a new zone): its users of before come back from the
# log, and a user's next heartbeat there goes on from its seq

{
    nginx_stop($dir{a});
    nginx_start($dir{a}, $PA);
    my $h = '';
    for (1 .. 100) {
        $h = health('a');
        last if $h =~ /^200/;
        Time::HiRes::sleep(0.05);
    }
    is($h, "200 ok\n", "node A: ready again after a restart");
    like(status_of(a => 3012), qr/"status":"offline","last_seen":\d+,"seq":2\}/,
         "its user of before is back from the log, offline at seq 2");
    req(POST => $PA, '/v1/heartbeat', 3012);
    my $st = '';
    for (1 .. 40) {
        $st = status_of(b => 3012);
        last if $st =~ /"status":"online"/;
        Time::HiRes::sleep(0.025);
    }
    like(status_of(a => 3012), qr/"status":"online","last_seen":\d+,"seq":3,"activity":"active","devices":\["default"\]\}/,
         "its heartbeat there: online at seq 3");
    like($st, qr/"status":"online","last_seen":\d+,"seq":3,"activity":"active","devices":\["default"\]\}/,
         "and node B follows (seq 3 is newer than what it holds)");
}


# 9. devices and idle (issue 14): a user's devices and activity on A are
# what node B's replica shows, and follow a device leaving

{
    my $u = 3013;
    my $same = sub {
        my ($re) = @_;
        my ($sa, $sb) = ('', '');
        for (1 .. 80) {
            ($sa, $sb) = (status_of(a => $u), status_of(b => $u));
            last if $sa =~ $re && $sb =~ $re;
            Time::HiRes::sleep(0.025);
        }
        return "a $sa b $sb";
    };
    req(POST => $PA, '/v1/heartbeat?device=web', $u);
    req(POST => $PA, '/v1/heartbeat?device=phone&idle=1', $u);
    my $two = qr/"seq":(\d+),"activity":"active","devices":\["phone","web"\]\}/;
    like($same->($two), qr/^a .*$two b .*$two$/,
         "B's replica shows A's two devices, active");
    req(POST => $PA, '/v1/heartbeat?device=web&idle=1', $u);
    my $idle = qr/"activity":"idle","devices":\["phone","web"\]\}/;
    like($same->($idle), qr/^a .*$idle b .*$idle$/,
         "both idle once every device said idle=1");
    req(POST => $PA, '/v1/leave?device=phone', $u);
    my $one = qr/"activity":"idle","devices":\["web"\]\}/;
    like($same->($one), qr/^a .*$one b .*$one$/,
         "the phone left: B shows web only");
    my ($sa, $sb) = map { /"seq":(\d+)/ ? $1 : -1 } status_of(a => $u),
                                                   status_of(b => $u);
    is($sb, $sa, "the same seq on both, $sa");
}

nginx_stop($dir{$_}) for qw(a b);
for my $n (qw(a b)) {
    # (librdkafka's transport failures: the broker was down in part 3,
    # and cut the connections it had when it went; the subs producer
    # also logs the refreshes of last_seen)
    # (and, when it happened, nchan's crash of part 7: said by its diag)
    my @bad = grep { /\[(?:error|crit|alert|emerg)\]/
                     && !/kafka(?: consumer| subs producer)?: FAIL: /
                     && !($n eq 'b' && $nchan_reload_crash
                          && /worker process \d+ exited on signal 11/) }
              split /\n/, slurp("$dir{$n}/error.log");
    ok(!@bad, "$n: no error in error.log")
        or diag(join "\n", grep { defined } @bad[0 .. 4]);
}
%dir = ();

done_testing();
