# The driver of util/bench/cluster/run (which sets the environment and says
# what is measured): the nodes, wrk, the lag, the SSE and the catch-up.
#
#   perl -It/lib util/bench/cluster/bench.pl secs rounds changes cusers crounds

use strict;
use warnings;

use File::Path ();
use POSIX ();
use IO::Poll qw(POLLIN);
use IO::Socket::INET ();
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);
use PresenceTest qw(token);
use PresenceDeploy;
use PresenceKafka ();

my ($secs, $rounds, $changes, $cusers, $crounds) = @ARGV;
my $P = $ENV{BENCH_PORT};
my $root = $ENV{BENCH_DIR};
my $sync = $ENV{CLUSTER_SYNC};
my $dsn = $PresenceTest::PG_DSN;
my %port = (a => $P, b => $P + 1, c => $P + 2, s => $P + 3, d => $P + 4);
my %dir = map { ($_ => "$root/$_") } keys %port;
my $run = "$$-" . time();
my $hz = `getconf CLK_TCK` + 0;

sub now { clock_gettime(CLOCK_MONOTONIC) }
sub say_ { print @_, "\n"; STDOUT->flush }
sub load { (split ' ', slurp('/proc/loadavg'))[0 .. 2] }
sub median { my @v = sort { $a <=> $b } @_; $v[int($#v / 2)] }
sub pct {
    my ($p, @v) = @_;
    @v = sort { $a <=> $b } @v;
    return $v[int($p / 100 * $#v + 0.5)];
}

# a node of docker/nginx-node.conf: 1 worker, a topic of this run, the
# sync interval; without a name, no presence_cluster
sub node_conf {
    my ($n, %o) = @_;
    my $file = render_node(dir => $dir{$n}, port => $port{$n},
                           pg_dsn => $dsn,
                           redis_port => $ENV{TEST_NGINX_REDIS_PORT},
                           timeout => '3600s',
                           ($o{kafka} ? (kafka => $o{kafka}) : ()),
                           kafka_options => $ENV{CLUSTER_KAFKA_OPTIONS} // '',
                           ($n eq 's' ? () : (node => $n)));
    my $c = slurp($file);
    my $topic = $o{topic} // ($n eq 's' ? "bench-single-$run"
                                        : "bench-cluster-$run");
    $c =~ s{topic=presence\b}{topic=$topic} or die "no topic=presence";
    $c =~ s{worker_processes\s+\d+;}{worker_processes 1;} or die "workers";
    $c =~ s{presence_sync_interval\s+1s;}{presence_sync_interval $sync;}
        or die "no presence_sync_interval 1s";
    $c =~ s{name=presence size=\w+}{name=presence size=$o{zone}}
        if $o{zone};
    PresenceDeploy::spew($file, $c);
}

sub workers {
    my ($n) = @_;
    my $m = slurp("$dir{$n}/nginx.pid");
    chomp $m;
    return PresenceNginx::children($m);
}

sub cpu_ticks {    # user + system of the workers of these nodes
    my $t = 0;
    for my $pid (map { workers($_) } @_) {
        my $s = eval { slurp("/proc/$pid/stat") } // next;
        $s =~ s/^.*\) //;
        my @f = split ' ', $s;
        $t += $f[11] + $f[12];
    }
    return $t;
}

sub health {
    my ($n) = @_;
    my ($status) = unix_get("$dir{$n}/metrics.sock", '/healthz');
    return $status;
}

my @started;
END { nginx_stop($dir{$_}) for @started }

sub start {
    my ($n) = @_;
    nginx_start($dir{$n}, $port{$n});
    push @started, $n;
}

sub stop {
    my ($n) = @_;
    nginx_stop($dir{$n});
    @started = grep { $_ ne $n } @started;
}

# --- keep-alive HTTP/1.1 connections

sub conn {
    my ($port) = @_;
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp') or die "connect $port: $!";
    setsockopt($c, 6, 1, 1);   # TCP_NODELAY
    return { s => $c, buf => '', port => $port };
}

sub send_req {
    my ($c, $method, $path, $user, $body) = @_;
    $body //= '';
    syswrite $c->{s}, "$method $path HTTP/1.1\r\nHost: bench\r\n"
        . "Authorization: Bearer " . token($user) . "\r\n"
        . "Content-Type: application/json\r\nContent-Length: "
        . length($body) . "\r\n\r\n$body";
}

sub recv_resp {    # (status, body), blocking
    my ($c) = @_;
    while (1) {
        if ($c->{buf} =~ /^HTTP\/1\.1 (\d+)[^\r]*\r\n(.*?)\r\n\r\n/s) {
            my ($code, $head, $hl) = ($1, $2, $+[0]);
            my $len = $head =~ /^Content-Length:\s*(\d+)/mi ? $1 : 0;
            if (length($c->{buf}) >= $hl + $len) {
                my $b = substr($c->{buf}, $hl, $len);
                substr($c->{buf}, 0, $hl + $len) = '';
                return ($code, $b);
            }
        }
        sysread($c->{s}, $c->{buf}, 65536, length $c->{buf})
            or die "connection closed\n";
    }
}

# (nginx closes a keep-alive connection after keepalive_requests: once
# more on a new one)
sub call {
    my $c = shift;
    my @r = eval { send_req($c, @_); recv_resp($c) };
    return @r if @r;
    %$c = %{ conn($c->{port}) };
    send_req($c, @_);
    return recv_resp($c);
}

# --- the stores

PresenceTest::psql(<<SQL);
TRUNCATE users, users_subscribers RESTART IDENTITY CASCADE;
INSERT INTO users (user_id, user_name)
    SELECT i, 'bench user ' || i FROM generate_series(1, 1000 + $changes) i;
INSERT INTO users_subscribers (user_id, user_id_t)
    SELECT 1, i FROM generate_series(2, 101) i
    UNION ALL SELECT 1, i FROM generate_series(201, 220) i;
SQL

system('rm', '-rf', $root);
File::Path::make_path($root);
chmod 0755, $root;
if ($ENV{TEST_NGINX_WORKER_USER}) {
    system('chown', $ENV{TEST_NGINX_WORKER_USER}, $root);
}

# the cluster's topic exists before the nodes start (else they are ready
# at once and ask for it every second)
PresenceKafka::kafka_produce("bench-cluster-$run", ['0', '{"hello":"bench"}'])
    or die "cannot write the topic\n";
PresenceKafka::kafka_produce("bench-single-$run", ['0', '{"hello":"bench"}'])
    or die "cannot write the topic\n";

node_conf($_) for qw(a b c s);
start($_) for qw(a b c s);
for my $n (qw(a b c)) {
    my $t = now() + 10;
    sleep 0.05 while health($n) != 200 && now() < $t;
    die "node $n is not ready\n" unless health($n) == 200;
}
my @nodes = qw(a b c);
say_("load before: @{[load()]}; 2 cores shared by wrk, the 4 nginx and"
     . " others; presence_sync_interval $sync"
     . ($ENV{CLUSTER_KAFKA_OPTIONS} ? "; presence_kafka"
                                      . " $ENV{CLUSTER_KAFKA_OPTIONS}" : ''));

# --- 1. reads

my @ids = (2 .. 101);
my $ids = join ',', @ids;
for my $id (@ids) {
    for my $n ($nodes[$id % 3], 's') {
        my ($code) = call(conn($port{$n}), 'POST', '/v1/heartbeat', $id);
        die "heartbeat of $id on $n: $code\n" unless $code == 204;
    }
}
for my $n (qw(a b c s)) {    # every node sees the 100 online
    my $c = conn($port{$n});
    my $t = now() + 10;
    while (1) {
        my ($code, $b) = call($c, 'GET', "/v1/status?ids=$ids", 1);
        my $on = () = $b =~ /"online"/g;
        last if $code == 200 && $on == 100;
        die "node $n: $on of the 100 online ($code)\n" if now() > $t;
        sleep 0.05;
    }
}

my $lua = "$root/status.lua";
PresenceDeploy::spew($lua, <<LUA);
wrk.headers["Authorization"] = "Bearer @{[token(1)]}"
wrk.path = "/v1/status?ids=$ids"
local bad = 0
function response(status) if status ~= 200 then bad = bad + 1 end end
function done(summary) if bad > 0 then io.stderr:write("non-200\\n") end end
LUA

# three wrk at once, one per port: (req/s, requests per worker CPU-second)
sub wrk3 {
    my ($d, @to) = @_;
    my @n = $to[0] eq 's' ? ('s') : @nodes;
    my $c0 = cpu_ticks(@n);
    my @fh;
    for my $n (@to) {
        open my $fh, '-|', "wrk -t1 -c16 -d${d}s -s $lua"
                          . " http://127.0.0.1:$port{$n} 2>&1" or die "wrk: $!";
        push @fh, $fh;
    }
    my ($rps, $reqs) = (0, 0);
    for my $fh (@fh) {
        local $/;
        my $out = <$fh>;
        close $fh;
        die "wrk: answers other than 200\n$out" if $out =~ /non-200|Non-2xx/;
        $rps += $1 if $out =~ /^Requests\/sec:\s+([\d.]+)/m;
        $reqs += $1 if $out =~ /^\s*(\d+) requests in/m;
    }
    my $cpu = (cpu_ticks(@n) - $c0) / $hz;
    return ($rps, $cpu > 0 ? $reqs / $cpu : 0, $cpu / $d);
}

wrk3(1, @nodes);
wrk3(1, qw(s s s));
my (@rc, @rs, @ratio, @pc, @ps, @pratio);
for my $r (1 .. $rounds) {
    my ($s, $sp, $su) = wrk3($secs, qw(s s s));
    my ($c, $cp, $cu) = wrk3($secs, @nodes);
    push @rs, $s; push @rc, $c; push @ratio, $c / $s;
    push @ps, $sp; push @pc, $cp; push @pratio, $cp / $sp;
    say_(sprintf "round %d: single %.0f req/s (%.0f per worker CPU-s, "
         . "%.2f cores); cluster %.0f req/s (%.0f per worker CPU-s, %.2f "
         . "cores): ratio %.2f, per CPU-s %.2f", $r, $s, $sp, $su, $c, $cp,
         $cu, $c / $s, $cp / $sp);
}
say_(sprintf "reads, median of %d: single %.0f req/s, cluster %.0f req/s, "
     . "ratio %.2f (target >= 0.9); per worker CPU-second single %.0f, "
     . "cluster %.0f, ratio %.2f", $rounds, median(@rs), median(@rc),
     median(@ratio), median(@ps), median(@pc), median(@pratio));
say_("load: @{[load()]}");

# --- 2. change on A -> B's replica says online

{
    my $ca = conn($port{a});
    my $cb = conn($port{b});
    my (@lag, @blag);
    for my $id (1001 .. 1000 + $changes) {
        # at a random moment of A's sync and B's poll ticks (a loop that
        # starts each change as soon as B saw the last one keeps in step
        # with them: its figures then depend on that phase)
        Time::HiRes::sleep(rand(0.02));
        my $t0 = now();
        my ($code) = call($ca, 'POST', '/v1/heartbeat', $id);
        die "heartbeat of $id on A: $code\n" unless $code == 204;
        while (1) {
            my ($c, $b) = call($cb, 'GET', "/v1/status/$id", $id);
            last if $c == 200 && $b =~ /"status":"online"/;
            die "B: $id not online within 5 s ($c $b)\n" if now() - $t0 > 5;
            Time::HiRes::sleep(0.0005);
        }
        push @lag, (now() - $t0) * 1000;
        # B's part: from the message's Kafka timestamp (A's producer) to
        # its application (ms)
        my (undef, $m) = unix_get("$dir{b}/metrics.sock", '/metrics');
        push @blag, $1 if $m =~ /^presence_cluster_lag_ms (\d+)$/m;
    }
    say_(sprintf "lag (heartbeat of a new user on A -> online on B), %d "
         . "changes: p50 %.1f ms p99 %.1f ms max %.1f ms (target p99 < 50)",
         scalar @lag, pct(50, @lag), pct(99, @lag), pct(100, @lag));
    say_(sprintf "  of which B's consumer (presence_cluster_lag_ms: Kafka "
         . "timestamp -> applied): p50 %d ms p99 %d ms max %d ms",
         pct(50, @blag), pct(99, @blag), pct(100, @blag));
}

# --- 3. change on A -> the SSE stream on B

{
    my @su = (201 .. 220);
    my $ca = conn($port{a});
    my %online;
    for my $u (@su) {
        my ($code, $b) = call($ca, 'PUT', '/v1/status', $u,
                              '{"status":"online"}');
        die "PUT online $u: $code $b\n" unless $code == 200;
        $online{$u} = 1;
    }
    my $sse = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                    PeerPort => $port{b}, Proto => 'tcp')
        or die "connect: $!";
    syswrite $sse, "GET /v1/events?ids=" . join(',', @su) . "&ticket="
        . PresenceTest::ticket(1) . " HTTP/1.1\r\nHost: bench\r\n"
        . "Accept: text/event-stream\r\n\r\n";
    my $sbuf = '';
    while ($sbuf !~ /\r\n\r\n/) {
        sysread($sse, $sbuf, 65536, length $sbuf) or die "stream closed\n";
    }
    die "stream: " . ($sbuf =~ /^([^\r]*)/)[0] . "\n"
        unless $sbuf =~ /^HTTP\/1\.1 200/;
    $sbuf =~ s/^.*?\r\n\r\n//s;
    my $poll = IO::Poll->new;
    $poll->mask($sse => POLLIN);
    my %seen;    # "id:seq" -> time
    my $pump = sub {
        $poll->poll($_[0]) > 0 or return;
        sysread($sse, $sbuf, 65536, length $sbuf) or die "stream closed\n";
        my $t = now();
        while ($sbuf =~ s/^([^\n]*)\n//) {
            $seen{"$1:$2"} = $t
                if $1 =~ /^data: ?\{"id":(\d+),"status":"\w+".*"seq":(\d+)\}$/;
        }
    };
    my $end = now() + 0.5;
    $pump->(0.05) while now() < $end;
    my @lat;
    for my $i (0 .. $changes - 1) {
        my $u = $su[$i % @su];
        my $to = $online{$u} ? 'offline' : 'online';
        my $t0 = now();
        my ($code, $b) = call($ca, 'PUT', '/v1/status', $u,
                              qq({"status":"$to"}));
        die "PUT $to $u: $code $b\n" unless $code == 200;
        my ($seq) = $b =~ /"seq":(\d+)/ or die "no seq: $b\n";
        $online{$u} = !$online{$u};
        $pump->(1) until $seen{"$u:$seq"} || now() - $t0 > 5;
        die "no event $u seq $seq on B's stream\n" unless $seen{"$u:$seq"};
        push @lat, ($seen{"$u:$seq"} - $t0) * 1000;
    }
    close $sse;
    say_(sprintf "change on A -> SSE on B, %d changes: p50 %.1f ms p99 "
         . "%.1f ms max %.1f ms (target p99 < 50)", scalar @lat,
         pct(50, @lat), pct(99, @lat), pct(100, @lat));
    say_("load: @{[load()]}");
}

stop($_) for qw(a b c s);

# --- 4. a new node catches up N users

# librdkafka's mock broker keeps some 5 MB of each partition (it drops
# older messages): 1 M users' states (some 150 bytes each with the
# headers) need a topic of 64 partitions, which only a mock started with
# it has (a topic made on first use has 4).  So a broker of this bench's
# own (util/kafka-mock.c, built by util/services.sh), for node D alone.
my $mock;
END { kill 'TERM', $mock if $mock }

if ($cusers > 0) {
    my $topic = "catchup";
    my $parts = 64;
    my $boot = "$root/catchup.bootstrap";
    $mock = fork // die "fork: $!";
    if (!$mock) {
        open STDERR, '>', "$root/catchup.mock.log";
        {
            no warnings 'exec';
            exec 'build/kafka-mock', $boot, 1, "$topic:$parts";
        }
        POSIX::_exit(127);
    }
    my $tm = now() + 10;
    Time::HiRes::sleep(0.05) until -s $boot || now() > $tm;
    my $brokers = slurp($boot);
    chomp $brokers;
    my $file = "$root/catchup.in";
    my $ms = int(Time::HiRes::time() * 1000);
    open my $out, '>', $file or die "$file: $!";
    for my $id (1 .. $cusers) {
        print $out "$id\x1f{\"id\":$id,\"status\":\"online\","
                   . "\"last_seen\":$ms,\"seq\":1}\n";
    }
    close $out;
    my $t0 = now();
    system('kcat', '-b', $brokers, '-P', '-t', $topic,
           '-K', "\x1f", '-H', 'presence-owner=z', '-H', 'presence-epoch=0',
           '-H', 'presence-invisible=0', '-X', 'linger.ms=50',
           '-X', 'batch.num.messages=10000', '-l', $file) == 0
        or die "kcat failed\n";
    say_(sprintf "catch-up: %d users written into a topic of %d partitions"
         . " by kcat in %.1f s", $cusers, $parts, now() - $t0);
    my $n = () = `kcat -b $brokers -C -t $topic -o beginning -e -q -f '%k\\n'`
                 =~ /\n/g;
    die "the topic holds $n messages, not $cusers\n" unless $n == $cusers;
    node_conf('d', topic => $topic, zone => '256m', kafka => $brokers);
    my @t;
    for my $r (1 .. $crounds) {
        PresenceDeploy::spew("$dir{d}/error.log", '');
        my $t0 = now();
        my $o = `$PresenceDeploy::NGINX -p $dir{d}/ -c $dir{d}/nginx.conf 2>&1`;
        die "node D did not start: $o" if $?;
        push @started, 'd';
        my $perf;
        if ($ENV{CLUSTER_PERF} && $r == 1) {
            my @w;
            Time::HiRes::sleep(0.005) until @w = workers('d');
            $perf = fork // die "fork: $!";
            if (!$perf) {
                open STDERR, '>', "$root/perf.log";
                no warnings 'exec';
                exec 'perf', 'record', '-g', '-F', '999', '-o',
                     $ENV{CLUSTER_PERF}, '-p', $w[0];
                POSIX::_exit(127);
            }
        }
        Time::HiRes::sleep(0.01) until health('d') == 200
                                       || now() - $t0 > 120;
        my $t = now() - $t0;
        if ($perf) {
            kill 'INT', $perf;
            waitpid $perf, 0;
        }
        die "node D not ready within 120 s\n" unless health('d') == 200;
        my ($line) = slurp("$dir{d}/error.log")
                     =~ /(caught up with the log in \d+ ms, \d+ users)/;
        my ($m) = (unix_get("$dir{d}/metrics.sock", '/metrics'))[1]
                  =~ /^presence_cluster_applied_total (\d+)$/m;
        push @t, $t;
        say_(sprintf "catch-up round %d: /healthz 200 after %.2f s (%s; "
             . "applied %s)", $r, $t, $line // 'no log line', $m // '?');
        stop('d');
    }
    say_(sprintf "catch-up of %d users, median of %d: %.2f s", $cusers,
         $crounds, median(@t));
    unlink $file;
    kill 'TERM', $mock;
    waitpid $mock, 0;
    $mock = undef;
}
say_("load after: @{[load()]}");

for my $n (qw(a b c s d)) {
    my $log = eval { slurp("$dir{$n}/error.log") } // next;
    print "node $n: $1\n" while $log =~ /^(.*\[(?:alert|crit|emerg)\].*)$/mg;
}
