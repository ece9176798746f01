# Subscriptions across nodes (issue 12 item 4, doc/cluster.md): two nodes
# of docker/nginx-node.conf on loopback (ports P and P+1), as in
# t/070-cluster.t, on a topic of this run's own.  Caller C subscribes via
# A: B allows its status reads and its stream; C unsubscribes on A: within
# 100 ms (measured and printed) B answers 403 not_subscribed to both;
# subscribes again: B allows them again.  With the broker down the
# invalidation cannot reach B, and presence_subscriptions_ttl (3 s here)
# bounds how long B answers from its stale set.  The invisible flag of an
# offline user set on A holds on B.  P is TEST_NGINX_SERVER_PORT.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use HTTP::Tiny ();
use IO::Socket::INET ();
use Time::HiRes ();
use PresenceTest qw(token fetch_ticket pg_reset);
use PresenceDeploy;
use PresenceKafka;

plan skip_all => 'needs the Kafka test broker (TEST_NGINX_KAFKA_BROKERS)'
    unless $ENV{TEST_NGINX_KAFKA_BROKERS};

my $P = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-cluster-subs';
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
my $dsn = $PresenceTest::PG_DSN;
my $TTL = 3;

# a topic of this run: the test broker keeps every earlier run's messages
my $topic = "subs-$$-" . time();

system('rm', '-rf', $root);
my %dir = (a => "$root/a", b => "$root/b");
my %port = (a => $P, b => $P + 1);

my $http = HTTP::Tiny->new(timeout => 5, keep_alive => 0);

sub req {
    my ($method, $node, $path, $id, $body) = @_;
    my %h = (headers => {});
    $h{headers}{Authorization} = 'Bearer ' . token($id) if defined $id;
    $h{content} = $body if defined $body;
    return $http->request($method, "http://127.0.0.1:$port{$node}$path", \%h);
}

# the status of $id as $caller sees it on $node: "200 {...}" or "403 {...}"
sub status_as {
    my ($node, $caller, $id) = @_;
    my $r = req(GET => $node, "/v1/status/$id", $caller);
    return "$r->{status} $r->{content}";
}

# the stream check of /v1/events?ids=$id for $caller on $node: the status
# of its answer (200: the stream opened; it is closed at once)
my %ticket;
sub stream_as {
    my ($node, $caller, $id) = @_;
    $ticket{$node} //= do {
        local $ENV{TEST_NGINX_SERVER_PORT} = $port{$node};
        fetch_ticket(token($caller));
    };
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $port{$node},
                                     Proto => 'tcp', Timeout => 2)
        or return 0;
    print $sock "GET /v1/events?ids=$id&ticket=$ticket{$node} HTTP/1.1\r\n"
              . "Host: localhost\r\nAccept: text/event-stream\r\n\r\n";
    my $line = '';
    my $rin = '';
    vec($rin, fileno($sock), 1) = 1;
    if (select(my $rout = $rin, undef, undef, 2)) {
        sysread $sock, $line, 4096;
    }
    close $sock;
    return $line =~ m{^HTTP/1\.1 (\d+)} ? $1 : 0;
}

# ms until $node's status read of $id by $caller matches $re (polled every
# 2 ms, up to $secs); -1 if it never did
sub time_until {
    my ($node, $caller, $id, $re, $t0, $secs) = @_;
    while (Time::HiRes::time() - $t0 < $secs) {
        return (Time::HiRes::time() - $t0) * 1000
            if status_as($node, $caller, $id) =~ $re;
        Time::HiRes::sleep(0.002);
    }
    return -1;
}

sub cluster_conf {
    my ($n) = @_;
    my $file = render_node(dir => $dir{$n}, port => $port{$n}, node => $n,
                           pg_dsn => $dsn, redis_port => $redis_port,
                           timeout => '2s');
    my $c = slurp($file);
    $c =~ s{topic=presence\b}{topic=$topic}
        or die "no topic=presence in the node config";
    $c =~ s{presence_sync_interval\s+1s;}
           {presence_sync_interval  50ms;\n    presence_subscriptions_ttl  ${TTL}s;}
        or die "no presence_sync_interval 1s in the node config";
    $c =~ /^\s*presence_cluster\s+node=$n;/m
        or die "no presence_cluster in the node config";
    PresenceDeploy::spew($file, $c);
    return $file;
}

sub wait_ready {
    my ($n) = @_;
    my $h = '';
    for (1 .. 200) {
        my ($status, $body) = unix_get("$dir{$n}/metrics.sock", '/healthz');
        $h = "$status $body";
        last if $status == 200;
        Time::HiRes::sleep(0.05);
    }
    return $h;
}

my ($C, $T, $U) = (7001, 7002, 7003);
pg_reset(users => [[$C, 'caller'], [$T, 'target'], [$U, 'hider']]);

END {
    nginx_stop($dir{$_})
        for grep { $dir{$_} && -e "$dir{$_}/nginx.conf" } qw(a b);
}

ok(kafka_produce($topic, ['0', '{"hello":"world"}']), "this run's topic made");

for my $n (qw(a b)) {
    cluster_conf($n);
    nginx_start($dir{$n}, $port{$n});
    is(wait_ready($n), "200 ok\n", "node \u$n ready");
}

# the target online (on A), so that an allowed read says so
req(POST => 'a', '/v1/heartbeat', $T);

my $denied = qr/^403 \{"error":\{"code":"not_subscribed"/;
my $allowed = qr/^200 \{"id":$T,"status":/;


# 1. not subscribed: B caches C's empty set, and says 403

like(status_as(b => $C, $T), $denied, "B: C may not see T before subscribing");
is(stream_as(b => $C, $T), 403, "B: nor open a stream of T");


# 2. C subscribes via A: B allows it within 100 ms

my @ms;
my $t0 = Time::HiRes::time();
is(req(PUT => 'a', "/v1/subscriptions/$T", $C)->{status}, 201,
   "C subscribes to T on A");
push @ms, time_until(b => $C, $T, $allowed, $t0, 2);
cmp_ok($ms[-1], '>=', 0, "B allows C's read of T after the subscribe");
is(stream_as(b => $C, $T), 200, "and C's stream of T");


# 3. C unsubscribes on A: B refuses within 100 ms (B's set was just loaded:
# not the TTL)

like(status_as(b => $C, $T), $allowed, "B: C's set cached, subscribed");
$t0 = Time::HiRes::time();
is(req(DELETE => 'a', "/v1/subscriptions/$T", $C)->{status}, 204,
   "C unsubscribes on A");
my $unsub = time_until(b => $C, $T, $denied, $t0, 2);
push @ms, $unsub;
cmp_ok($unsub, '>=', 0, "B answers C as a non-subscriber (403 not_subscribed)");
is(stream_as(b => $C, $T), 403, "and refuses C's stream of T");


# 4. and again: subscribe, unsubscribe, a few times, each measured

for my $round (1 .. 5) {
    $t0 = Time::HiRes::time();
    req(PUT => 'a', "/v1/subscriptions/$T", $C);
    push @ms, time_until(b => $C, $T, $allowed, $t0, 2);
    $t0 = Time::HiRes::time();
    req(DELETE => 'a', "/v1/subscriptions/$T", $C);
    push @ms, time_until(b => $C, $T, $denied, $t0, 2);
}
$t0 = Time::HiRes::time();
is(req(PUT => 'a', "/v1/subscriptions/$T", $C)->{status}, 201,
   "C subscribes again on A");
push @ms, time_until(b => $C, $T, $allowed, $t0, 2);
cmp_ok($ms[-1], '>=', 0, "B allows C's read again");
is(stream_as(b => $C, $T), 200, "and its stream");

my @sorted = sort { $a <=> $b } @ms;
diag(sprintf "change on A to B's answer, %d changes: p50 %.0f ms, max "
             . "%.0f ms (%s)", scalar @ms, $sorted[$#sorted / 2],
             $sorted[-1], join ' ', map { int } @ms);
ok(!(grep { $_ < 0 } @ms), "every change reached B");
cmp_ok($sorted[-1], '<', 100, "every change within 100 ms");


# 5. the broker down: B's cached set is stale until the TTL

like(status_as(b => $C, $T), $allowed, "B: C's set cached, subscribed");
kafka_down();
$t0 = Time::HiRes::time();
is(req(DELETE => 'a', "/v1/subscriptions/$T", $C)->{status}, 204,
   "the broker down, C unsubscribes on A");
like(status_as(a => $C, $T), $denied, "A answers at once");
Time::HiRes::sleep(0.3);
like(status_as(b => $C, $T), $allowed,
     "B, 300 ms on, still from its cached set (the log is down)");
my $stale = time_until(b => $C, $T, $denied, $t0, $TTL + 2);
diag(sprintf "the broker down: B stale for %.0f ms (TTL %d s)", $stale,
             $TTL);
cmp_ok($stale, '>', 0, "B answers C as a non-subscriber once the TTL ran out");
cmp_ok($stale, '<=', ($TTL + 1) * 1000, "within the TTL (and a second)");
is(stream_as(b => $C, $T), 403, "and refuses C's stream");
kafka_up();


# 6. the invisible flag of an offline user, set on A, holds on B: the
# hider was online on A and timed out (B's replica: offline, visible), then
# chooses to appear offline on A; its heartbeats move to B, and it stays
# offline there

is(req(PUT => 'a', "/v1/subscriptions/$U", $C)->{status}, 201,
   "C subscribes to the hider");
req(POST => 'a', '/v1/heartbeat', $U);
my $st = '';
for (1 .. 100) {
    $st = status_as(b => $C, $U);
    last if $st =~ /"status":"offline","last_seen":\d+,"seq":2\}/;
    Time::HiRes::sleep(0.05);
}
like($st, qr/"status":"offline","last_seen":\d+,"seq":2\}/,
     "the hider was online on A, timed out: B's replica says offline, seq 2");
my $r = req(PUT => 'a', '/v1/status', $U, '{"status":"offline"}');
is($r->{status}, 200, "the hider, offline, chooses to appear offline on A");
my $hidden = 0;
for (1 .. 100) {
    my ($inv) = grep { /presence-invisible=1/ }
                map { (split /\x1f/, $_, 3)[1] }
                grep { /^$U\x1f/ }
                split /\n/, (PresenceKafka::kcat('', '-C', '-t', $topic, '-o',
                             'beginning', '-e', '-q', '-f',
                             "%k\x1f%h\x1f%s\\n"))[1];
    $hidden = 1, last if $inv;
    Time::HiRes::sleep(0.05);
}
ok($hidden, "the log holds the hider's invisible flag");
for (1 .. 40) {
    $st = status_as(b => $C, $U);
    last if $st =~ /"seq":3\}/;
    Time::HiRes::sleep(0.025);
}
like($st, qr/"status":"offline","last_seen":\d+,"seq":3\}/,
     "B's replica follows: offline, seq 3 (going invisible: one more)");
req(POST => 'b', '/v1/heartbeat', $U) for 1 .. 2;
Time::HiRes::sleep(0.2);
like(status_as(b => $C, $U), qr/^200 \{"id":$U,"status":"offline","last_seen":\d+,"seq":3\}/,
     "its heartbeats on B keep it offline there (seq 3: hidden)");
like(status_as(a => $C, $U), qr/^200 \{"id":$U,"status":"offline"/,
     "and on A");


nginx_stop($dir{$_}) for qw(a b);
for my $n (qw(a b)) {
    # (the broker refused connections while it was down, part 5)
    my @bad = grep { /\[(?:error|crit|alert|emerg)\]/
                     && !/kafka(?: consumer| subs producer)?: FAIL: .*Connection refused/ }
              split /\n/, slurp("$dir{$n}/error.log");
    ok(!@bad, "$n: no error in error.log")
        or diag(join "\n", grep { defined } @bad[0 .. 4]);
}
%dir = ();

done_testing();
