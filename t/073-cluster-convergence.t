# The cluster's convergence (issue 12, "Done when"): three nodes of
# docker/nginx-node.conf and the load balancer of docker/nginx-lb.conf on
# loopback (nodes on P .. P+3, the LB on P+4), sharing PostgreSQL, Redis
# and the Kafka test broker on a topic of this run's own, with
# "presence_cluster timeout=2s" and a heartbeat timeout of 5 s.  A
# model-driven workload of a few thousand users goes through the LB as a
# real client's would: heartbeats (with ?device=), going quiet, appearing
# offline and back, subscribing and unsubscribing, event streams of a few
# watchers.  Steps: warm-up, steady workload, kill -9 of node b, b started
# again, a 4th node d added (the LB reloaded), d stopped and taken out.
# After each step a checker reads every node directly (GET /v1/status?ids=
# as a user subscribed to everyone) and compares with the model: a probe
# of fresh changes measures the staleness (p50/p99/max printed), which
# must stay within 1 s; then every user on every node must equal the
# model within 1 s.  At the end every stream's events, per user, have
# strictly growing seq, end in the model's state, and never say offline
# for a user that stayed online through the moves; each user of b that
# went quiet when b died got exactly one offline event, within
# timeout + 1 s.
#
# The seed is printed; PRESENCE_CONV_SEED replays a run.  Under the
# AddressSanitizer pass (PRESENCE_ASAN_PASS=1) the workload is scaled
# down, not the bounds widened.  Users also go idle and active again
# (idle=1 heartbeats) and leave (POST /v1/leave: offline after the
# grace); the checker compares the online users' "devices" and
# "activity" with the model (API.md, Devices; PRESENCE_CONV_DEVICES=0
# compares status and seq only).
# P is TEST_NGINX_SERVER_PORT.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use IO::Socket::INET ();
use POSIX ();
use Time::HiRes qw(time sleep);
use PresenceTest qw(token pg_reset);
use PresenceSSE qw(sse_start sse_stop sse_read);
use PresenceDeploy;
use PresenceKafka;
use PresenceCluster;
use PresenceNginx ();

plan skip_all => 'needs the Kafka test broker (TEST_NGINX_KAFKA_BROKERS)'
    unless $ENV{TEST_NGINX_KAFKA_BROKERS};

my $P = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
my $PLB = $P + 4;
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-conv';
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
my $dsn = $PresenceTest::PG_DSN;

my $asan = $ENV{PRESENCE_ASAN_PASS} ? 1 : 0;
my $seed = $ENV{PRESENCE_CONV_SEED} // (time() * 1000 % 1000000 | 0);
srand($seed);
my $DEVICES = $ENV{PRESENCE_CONV_DEVICES} // 1;

# the workload: users, ops a second, watchers (one stream each)
my $N = $asan ? 600 : 2000;
my $OPS = $asan ? 15 : 40;
my $W = $asan ? 4 : 8;
my $HB_TIMEOUT = 5;         # presence_heartbeat_timeout
my $HB_EVERY = 1.5;         # an online user's heartbeat interval
my $GRACE = 5;              # presence_offline_grace (the default)
# presence_cluster timeout=: twice the heartbeat interval.  A dead node's
# users are written offline once its liveness deadline passed; one whose
# next heartbeat comes later than that shows offline for a moment (README,
# "Limits"): with 2 s against heartbeats every 1.5 s (up to 1.8 s), a
# stopped node's user whose last heartbeat that node took in its last
# moments, and the test busy reloading the LB, flickered (1 run in 6)
my $CL_TIMEOUT = 3;
my $REFRESH = 1;            # presence_cluster refresh=: last_seen logged
my $BOUND = 1;              # every node equals the model within 1 s
diag(sprintf "seed %d (PRESENCE_CONV_SEED=%d replays it), %d users, "
             . "%d ops/s, %d streams%s", $seed, $seed, $N, $OPS, $W,
             $asan ? ' (scaled down: ASan pass)' : '');

my $topic = "conv-$$-" . time();
my @nodes = qw(a b c d);
my %name = map { $_ => "$_-$$" } @nodes;
my %port = (a => $P, b => $P + 1, c => $P + 2, d => $P + 3);
my %dir = map { $_ => "$root/$_" } @nodes, 'lb';
my %live;               # the nodes running now
my %node_of = map { ("127.0.0.1:$port{$_}" => $_) } @nodes;

system('rm', '-rf', $root);
nodes(map { $_ => [$port{$_}, $dir{$_}] } @nodes);

my $t_start = time();


# users, the checker (subscribed to everyone), the watchers

my $CHECKER = 9001;
my @watchers = map { 9100 + $_ } 1 .. $W;
my @ids = map { 10000 + $_ } 1 .. $N;
my @dev_names = qw(web phone desk);

my %u;      # the model, per user
for my $id (@ids) {
    $u{$id} = { hb => 0, inv => 0, next => 0, sent => 0, steady => 0,
                bad => 0, owner => '', dev => $dev_names[rand @dev_names] };
}
# a quarter of the users stay online all along: never touched by an op,
# they move between nodes with the ring and must never look offline
sub shuffle {
    my @a = @_;
    for (my $i = $#a; $i > 0; $i--) {
        my $j = int rand($i + 1);
        @a[$i, $j] = @a[$j, $i];
    }
    return @a;
}
my @shuffled = shuffle(@ids);
$u{$_}{steady} = 1 for @shuffled[0 .. int($N / 4) - 1];
my @steady = grep { $u{$_}{steady} } @ids;
my @others = grep { !$u{$_}{steady} } @ids;

my (%watch, @subs);
for my $w (@watchers) {
    my %s;
    # 60 ids: their nchan channels fit one stream's 1024 characters
    $s{$steady[rand @steady]} = 1 while keys %s < 20;
    $s{$others[rand @others]} = 1 while keys %s < 60;
    $watch{$w} = [sort { $a <=> $b } keys %s];
    push @subs, map { [$w, $_] } @{ $watch{$w} };
}
pg_reset(users => [[$CHECKER, 'checker'],
                   (map { [$_, "watcher$_"] } @watchers),
                   map { [$_, "user$_"] } @ids],
         subs => [(map { [$CHECKER, $_] } @ids), @subs]);

my %sub;    # the model of the pairs the workload touched: "s t" => 0|1


# HTTP: pipelined requests on keep-alive connections

my %tok;
sub tok { return $tok{$_[0]} //= token($_[0]) }

sub read_response {
    my ($s, $buf) = @_;
    until ($$buf =~ /\r\n\r\n/) {
        my $n = sysread($s, $$buf, 65536, length $$buf);
        return (0, '', '') unless $n;
    }
    $$buf =~ s/^(.*?)\r\n\r\n//s;
    my $head = $1;
    my ($code) = $head =~ m{^HTTP/1\.\d (\d+)};
    my $body = '';
    if ($head =~ /^Transfer-Encoding:\s*chunked/mi) {
        while (1) {
            until ($$buf =~ /^([0-9a-fA-F]+)\r\n/) {
                sysread($s, $$buf, 65536, length $$buf) or return (0, $head, '');
            }
            my $len = hex $1;
            my $need = length($1) + 2 + $len + 2;
            while (length $$buf < $need) {
                sysread($s, $$buf, 65536, length $$buf) or return (0, $head, '');
            }
            $body .= substr($$buf, length($1) + 2, $len);
            substr($$buf, 0, $need, '');
            last if $len == 0;
        }
    } else {
        my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi;
        $len //= 0;
        while (length $$buf < $len) {
            sysread($s, $$buf, 65536, length $$buf) or return (0, $head, '');
        }
        $body = substr($$buf, 0, $len, '');
    }
    return ($code // 0, $head, $body);
}

# $reqs: [method, path, user id (its bearer token), body]; returns
# [code, head, body] for each, code 0 when the connection failed
sub pipeline {
    my ($port, $reqs) = @_;
    my @res;
    my @todo = @$reqs;
    while (my @batch = splice @todo, 0, 100) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Timeout => 5);
        unless ($s) {
            push @res, [0, '', ''] for @batch;
            next;
        }
        binmode $s;
        my $out = '';
        for my $r (@batch) {
            my ($m, $path, $id, $body) = @$r;
            $out .= "$m $path HTTP/1.1\r\nHost: localhost\r\n";
            $out .= "Authorization: Bearer " . tok($id) . "\r\n"
                if defined $id;
            $body //= '';
            $out .= "Content-Length: " . length($body) . "\r\n"
                if $m ne 'GET';
            $out .= "\r\n$body";
        }
        print $s $out;
        my $buf = '';
        for (@batch) {
            push @res, [read_response($s, \$buf), time()];
        }
        close $s;
    }
    return @res;
}

# the node that answered through the LB (its X-Presence-Upstream header)
sub upstream_of {
    my ($head) = @_;
    return '' unless $head =~ /^X-Presence-Upstream:\s*(.*?)\s*$/mi;
    my @a = split /\s*,\s*/, $1;
    return $node_of{$a[-1]} // '';
}


# the model: what every node must say of a user (undef: not known now)

my $T0 = time();
sub expected {
    my ($id, $now) = @_;
    my $m = $u{$id};
    return undef if $m->{bad};
    if ($m->{hb}) {
        return $m->{inv} ? 'offline' : 'online';
    }
    # quiet: offline once its last heartbeat timed out (and the sweeper
    # ran); "until": not before (a node that restarted lost the deadline)
    my $off = $m->{sent} + $HB_TIMEOUT;
    $off = $m->{left} + $GRACE
        if defined $m->{left} && $m->{left} + $GRACE < $off;
    return undef if $now < $off + 1.5 || $now < ($m->{until} // 0);
    return 'offline';
}

my %stats = (heartbeats => 0, ops => 0, failed => 0);

# heartbeats of every user due now, through the LB; @force too
sub pump {
    my (@force) = @_;
    my $now = time();
    my %f = map { $_ => 1 } @force;
    my @due = grep { $u{$_}{hb} && ($f{$_} || $u{$_}{next} <= $now) } @ids;
    return unless @due;
    my @res = pipeline($PLB, [map { ['POST',
        "/v1/heartbeat?device=$u{$_}{dev}" . ($u{$_}{idle} ? '&idle=1' : ''),
        $_] } @due]);
    $now = time();
    for my $i (0 .. $#due) {
        my $m = $u{ $due[$i] };
        $m->{sent} = $now;
        $stats{heartbeats}++;
        if ($res[$i][0] == 204) {
            $m->{next} = $now + $HB_EVERY * (0.8 + rand 0.4);
            $m->{owner} = upstream_of($res[$i][1]) || $m->{owner};
        } else {
            $stats{failed}++;
            $m->{next} = $now + 0.1;    # again at once
        }
    }
}

# a visible change of a user that is not steady: returns the time the
# change was answered, or undef when none was made
my %changed;    # id => time of its last change in the model
sub change_req {
    my ($id, $op) = @_;
    my $dev = "device=$u{$id}{dev}";
    return ['POST', "/v1/heartbeat?$dev", $id] if $op eq 'on' || $op eq 'active';
    return ['POST', "/v1/heartbeat?$dev&idle=1", $id] if $op eq 'idle';
    return ['POST', "/v1/leave?$dev", $id] if $op eq 'leave';
    # a PUT online is a heartbeat of its device (and idle= of its state)
    return ['PUT', "/v1/status?$dev" . ($u{$id}{idle} ? '&idle=1' : ''), $id,
            $op eq 'hide' ? '{"status":"offline"}' : '{"status":"online"}'];
}

sub change {
    my ($id, $op) = @_;
    my ($r) = pipeline($PLB, [change_req($id, $op)]);
    return changed($id, $op, $r);
}

# the model after the answer $r to op $op
sub changed {
    my ($id, $op, $r) = @_;
    my $m = $u{$id};
    my $now = $r->[3] // time();
    $stats{ops}++;
    if ($r->[0] != 204 && $r->[0] != 200) {
        # unknown whether it was applied: not checked until redone
        $stats{failed}++;
        $m->{bad} = 1;
        $m->{redo} = $op;
        return undef;
    }
    $m->{bad} = 0;
    delete $m->{redo};
    $m->{owner} = upstream_of($r->[1]) || $m->{owner};
    if ($op eq 'on' || $op eq 'active' || $op eq 'idle') {
        @$m{qw(hb sent)} = (1, $now);
        $m->{next} = $now + $HB_EVERY;
        $m->{idle} = $op eq 'idle' ? 1 : 0;
        delete $m->{left};
    } elsif ($op eq 'leave') {
        # its only device: offline after the grace, never later than
        # its heartbeat timeout
        $m->{hb} = 0;
        $m->{left} = $now;
    } elsif ($op eq 'hide') {
        $m->{inv} = 1;
    } elsif ($op eq 'show') {
        @$m{qw(inv sent)} = (0, $now);
    }
    $changed{$id} = $now;
    return $now;
}

# a random op on a random user that may take one (not steady, not frozen)
my %frozen;
sub random_op {
    my $now = time();
    my $id = $others[rand @others];
    my $m = $u{$id};
    return if $frozen{$id};
    if ($m->{bad}) {
        # redo what failed: the model is known again when it succeeds
        change($id, $m->{redo} // 'on');
        return;
    }
    my $r = rand;
    if ($r < 0.15) {
        # (un)subscribe: a user that is no watcher, to anyone
        my $t = $ids[rand @ids];
        return if $t == $id;
        my $on = rand() < 0.6 ? 1 : 0;
        my ($res) = pipeline($PLB, [[$on ? 'PUT' : 'DELETE',
                                     "/v1/subscriptions/$t", $id]]);
        $stats{ops}++;
        if ($res->[0] =~ /^20[014]$/) {
            $sub{"$id $t"} = $on;
        } else {
            $stats{failed}++;
            delete $sub{"$id $t"};
        }
        return;
    }
    if (!$m->{hb}) {
        change($id, 'on') if defined expected($id, $now);
    } elsif ($m->{inv}) {
        change($id, 'show');
    } elsif ($r < 0.4) {
        # goes quiet: no more heartbeats, offline after the timeout
        $m->{hb} = 0;
        $changed{$id} = $m->{sent} + $HB_TIMEOUT;
    } elsif ($r < 0.55) {
        change($id, 'leave');
    } elsif ($r < 0.75) {
        change($id, $m->{idle} ? 'active' : 'idle');
    } else {
        change($id, 'hide');
    }
}

# the workload for $secs seconds: heartbeats due and $OPS ops a second
sub workload {
    my ($secs) = @_;
    my $end = time() + $secs;
    my $next_op = time();
    while (time() < $end) {
        pump();
        my $now = time();
        while ($next_op <= $now) {
            random_op();
            $next_op += 1 / $OPS;
        }
        sleep(0.02);
    }
}

# keeps the heartbeats going while waiting for $cond, up to $secs
sub pump_until {
    my ($secs, $cond) = @_;
    my $end = time() + $secs;
    my $v;
    until (($v = $cond->()) || time() > $end) {
        pump();
        sleep(0.03);
    }
    return $v;
}


# the checker: every node read directly, as a user subscribed to all

my %maxseq;     # "node id" => the highest seq it said
my $seq_back = 0;
my @seq_back;

# { id => [status, seq, last_seen, devices] } of $node for @$list
sub read_node {
    my ($node, $list) = @_;
    my @l = @$list;
    my @reqs;
    while (my @b = splice @l, 0, 500) {
        push @reqs, ['GET', '/v1/status?ids=' . join(',', @b), $CHECKER];
    }
    my %st;
    for my $r (pipeline($port{$node}, \@reqs)) {
        next unless $r->[0] == 200;
        while ($r->[2] =~ /\{"id":(\d+),"status":"(\w+)","last_seen":(\d+|null),"seq":(\d+)([^{}]*)\}/g) {
            my ($id, $status, $ls, $seq, $rest) = ($1, $2, $3, $4, $5);
            my ($dev) = $rest =~ /"devices":\[([^\]]*)\]/;
            my ($act) = $rest =~ /"activity":"(\w+)"/;
            $st{$id} = [$status, $seq, $ls, $dev // '', $act // ''];
            my $k = "$node $id";
            if (($maxseq{$k} // 0) > $seq) {
                $seq_back++;
                push @seq_back, "$k: $maxseq{$k} -> $seq";
            } else {
                $maxseq{$k} = $seq;
            }
        }
    }
    return \%st;
}

sub matches {
    my ($id, $st, $want) = @_;
    return 0 unless $st && $st->[0] eq $want;
    return 1 unless $DEVICES && $want eq 'online';
    return $st->[3] eq qq("$u{$id}{dev}")
           && $st->[4] eq ($u{$id}{idle} ? 'idle' : 'active');
}

sub pct {
    my ($p, @v) = @_;
    return 0 unless @v;
    @v = sort { $a <=> $b } @v;
    return $v[int($p * $#v + 0.5)];
}

my @all_stale;

# after a step: a probe of fresh changes, then every user on every node
sub check {
    my ($step) = @_;
    my @live = sort keys %live;

    # 1. the probe: $K visible changes through the LB, each node polled
    # until it says the model's state (the staleness: change to match)
    my $K = $asan ? 30 : 100;
    # changes pipelined on one connection, each timed by its answer
    my (%t, @probe, %op);
    pump();
    for my $id (shuffle(@others)) {
        last if keys %op >= $K;
        my $m = $u{$id};
        next if $frozen{$id} || !defined expected($id, time());
        $op{$id} = !$m->{hb} ? 'on' : $m->{inv} ? 'show' : 'hide';
    }
    my @try = sort keys %op;
    my @res = pipeline($PLB, [map { change_req($_, $op{$_}) } @try]);
    for my $i (0 .. $#try) {
        my $at = changed($try[$i], $op{ $try[$i] }, $res[$i]) // next;
        $t{ $try[$i] } = $at;
        push @probe, $try[$i];
    }
    my (%seen, @stale, %by);
    my $t_probe = time();
    while (time() - $t_probe < 5 && keys %seen < @probe * @live) {
        for my $n (@live) {
            my $st = read_node($n, [grep { !$seen{"$n $_"} } @probe]);
            my $now = time();
            for my $id (@probe) {
                next if $seen{"$n $id"};
                my $want = expected($id, $now) // next;
                next unless matches($id, $st->{$id}, $want);
                $seen{"$n $id"} = $now;
                push @stale, $now - $t{$id};
                push @{ $by{$n} }, $now - $t{$id};
            }
        }
        pump();
    }
    push @all_stale, @stale;
    diag(sprintf("%-8s staleness over %d reads (%d users x %d nodes): "
                 . "p50 %.0f ms, p99 %.0f ms, max %.0f ms (per node:",
                 $step, scalar @stale, scalar @probe, scalar @live,
                 1000 * pct(0.5, @stale), 1000 * pct(0.99, @stale),
                 1000 * pct(1, @stale))
         . join('', map { sprintf " %s %.0f", $_, 1000 * pct(1, @{ $by{$_} }) }
                    sort keys %by) . ')');
    is(scalar(keys %seen), @probe * @live,
       "$step: every node says the probe's changes");
    cmp_ok(pct(1, @stale), '<=', $BOUND,
           "$step: within $BOUND s of each change");

    # 2. every user on every node: what differs must match within 1 s
    my %bad;
    my $t_full = time();
    for my $n (@live) {
        my $st = read_node($n, \@ids);
        my $now = time();
        for my $id (@ids) {
            my $want = expected($id, $now) // next;
            $bad{"$n $id"} = $want unless matches($id, $st->{$id}, $want);
        }
        pump();
    }
    my $first = keys %bad;
    while (%bad && time() - $t_full < $BOUND) {
        for my $n (@live) {
            my @l = map { (split / /)[1] } grep { /^$n / } keys %bad;
            next unless @l;
            my $st = read_node($n, \@l);
            my $now = time();
            for my $id (@l) {
                my $want = expected($id, $now);
                delete $bad{"$n $id"}
                    if !defined $want || matches($id, $st->{$id}, $want);
            }
        }
        pump();
    }
    my $checked = 0;
    {
        my $now = time();
        $checked = grep { defined expected($_, $now) } @ids;
    }
    diag(sprintf "%-8s %d users known to the model x %d nodes: %d differed "
                 . "at the first read, %d after %.1f s", $step, $checked,
                 scalar @live, $first, scalar keys %bad, time() - $t_full);
    is(scalar(keys %bad), 0, "$step: every node equals the model")
        or diag(join "\n", map {
                    my ($n, $id) = split / /;
                    "node $n user $id: want $bad{$_}, model "
                    . join(',', map { "$_=$u{$id}{$_}" } sort keys %{ $u{$id} })
                    . '; node says ' . join(',', map { $_ // '' }
                        @{ read_node($n, [$id])->{$id} || [] })
                    . ($ENV{PRESENCE_CONV_LOG}
                       ? '; log: ' . join(' | ', map { "$_->[0] $_->[1]" }
                                                 log_of($topic, $id))
                       : '')
                } (sort keys %bad)[0 .. (keys %bad > 10 ? 9 : keys(%bad) - 1)]);

    # 3. subscriptions the workload changed: a sample, read on every node
    my @pairs = (shuffle(sort keys %sub))[0 .. 29];
    @pairs = grep { defined } @pairs;
    my $wrong = 0;
    for my $n (@live) {
        my @res = pipeline($port{$n}, [map { my ($s, $t) = split / /;
                                             ['GET', "/v1/status/$t", $s] } @pairs]);
        for my $i (0 .. $#pairs) {
            my $want = $sub{ $pairs[$i] } ? 200 : 403;
            $wrong++, diag("node $n: $pairs[$i] subscribed=$sub{$pairs[$i]}"
                           . " answered $res[$i][0]")
                if $res[$i][0] != $want;
        }
    }
    is($wrong, 0, "$step: subscriptions the same on every node ("
                  . @pairs . " pairs)");
}


# the nodes and the LB

sub node_conf {
    my ($n) = @_;
    my $file = render_node(dir => $dir{$n}, port => $port{$n},
                           pg_dsn => $dsn, redis_port => $redis_port,
                           timeout => "${HB_TIMEOUT}s");
    my $c = cluster_node($file, node => $name{$n}, topic => $topic,
                         timeout => "${CL_TIMEOUT}s",
                         refresh => "${REFRESH}s");
    # a small zone: the refresh walks it every refresh= (8m: 200k slots)
    $c =~ s{(presence_zone\s+name=presence\s+size=)64m;}{${1}8m;}
        or die "no presence_zone of 64m in $file";
    # one worker a node: four nodes, the LB and the test on 2 cores
    $c =~ s{^worker_processes\s+\d+;}{worker_processes 1;}m;
    PresenceDeploy::spew($file, $c);
    # the stream lease (90 s) as short as the heartbeat timeout: a node
    # restarted writes its users that did not come back offline after the
    # longest of them
    my $pub = "$dir{$n}/presence-publisher.conf";
    my $p = slurp($pub);
    $p =~ s{presence_heartbeat_timeout\s+90s;}
           {presence_heartbeat_timeout  ${HB_TIMEOUT}s;}
        or die "no stream lease of 90s in $pub";
    PresenceDeploy::spew($pub, $p);
}

sub lb_conf {
    my @in = grep { $live{$_} && $_ ne ($_[0] // '') } @nodes;
    my $file = render_lb(dir => $dir{lb}, port => $PLB,
                         nodes => [map { $port{$_} } @in[0 .. ($#in > 2 ? 2 : $#in)]],
                         fail_timeout => '1s');
    my $c = slurp($file);
    # which node answered: the model's owner of a user
    $c =~ s{(location (?:/|= /v1/events|~ \S+) \{\n\s*proxy_pass\s+http://presence_nodes;\n)}
           {$1            add_header  X-Presence-Upstream \$upstream_addr always;\n}g
        or die "no location / in the LB config";
    # render_lb names the servers presence1.. in order: more than 3
    if (@in > 3) {
        $c =~ s{(server\s+127\.0\.0\.1:$port{$in[2]}\b[^\n]*\n)}
               {$1        server  127.0.0.1:$port{$in[3]}  max_fails=1 fail_timeout=1s;\n};
    }
    PresenceDeploy::spew($file, $c);
    return $c;
}

sub lb_reload {
    my ($conf) = @_;
    my $out = `$PresenceDeploy::NGINX -p $dir{lb}/ -c $dir{lb}/nginx.conf -s reload 2>&1`;
    ok($? == 0, "LB reloaded") or diag($out);
    # the new workers take the new ring; the old ones finish what they had
    my $until = time() + 0.5;
    pump(), sleep(0.05) while time() < $until;
}

sub ready {
    my ($n) = @_;
    my ($status) = unix_get("$dir{$n}/metrics.sock", '/healthz');
    return 0 unless $status && $status == 200;
    my (undef, $body) = unix_get("$dir{$n}/metrics.sock", '/nchan_status');
    return ($body // '') =~ /^redis connected servers: [1-9]/m
           && $body =~ /^redis unhealthy upstreams: 0$/m;
}

# started with the heartbeats kept going (nginx_start waits without)
sub start_node {
    my ($n) = @_;
    unlink glob("$dir{$n}/*.sock");
    my $out = `$PresenceDeploy::NGINX -p $dir{$n}/ -c $dir{$n}/nginx.conf 2>&1`;
    ok($? == 0, "node $n started") or diag($out);
    my $t = time();
    ok(pump_until(10, sub { ready($n) }), "node $n ready (caught up)");
    diag(sprintf "node %s: started to ready in %.2f s", $n, time() - $t);
    $live{$n} = 1;
}

sub master_of {
    my ($n) = @_;
    my ($pidfile) = slurp("$dir{$n}/nginx.conf") =~ /^pid\s+(\S+);/m;
    my $pid = eval { slurp($pidfile) } // '';
    chomp $pid;
    return ($pid, $pidfile);
}


# the streams: a watcher's, through the LB, with its snapshot

my @streams;    # { w, file, pid, opened, snap => { id => [status, seq] } }
my $nstream = 0;

sub open_stream {
    my ($w) = @_;
    my ($t) = pipeline($PLB, [['POST', '/v1/events/ticket', $w]]);
    my ($ticket) = $t->[2] =~ /"ticket":"([^"]+)"/;
    unless ($ticket) {
        diag("watcher $w: no ticket ($t->[0] $t->[2])");
        return;
    }
    my $file = "$root/sse-" . ++$nstream . ".out";
    my $pid;
    {
        local $ENV{TEST_NGINX_SERVER_PORT} = $PLB;
        $pid = sse_start("/v1/events?ids=" . join(',', @{ $watch{$w} })
                         . "&ticket=$ticket", $file);
    }
    # the snapshot after the stream is open (API.md: open, then fetch)
    my ($s) = pipeline($PLB, [['GET', '/v1/status?ids='
                               . join(',', @{ $watch{$w} }), $w]]);
    my %snap;
    while ($s->[2] =~ /\{"id":(\d+),"status":"(\w+)","last_seen":(?:\d+|null),"seq":(\d+)/g) {
        $snap{$1} = [$2, $3];
    }
    my (undef, $status) = sse_read($file);
    my $node = upstream_of(slurp($file) =~ s/^\d+ //mgr);
    diag("watcher $w: the stream answered " . ($status // 'nothing'))
        unless ($status // '') =~ / 200 /;
    push @streams, { w => $w, file => $file, pid => $pid, opened => time(),
                     snap => \%snap, open => 1, node => $node,
                     ok => ($status // '') =~ / 200 / ? 1 : 0 };
}

# streams whose node went away are opened again (as a client would)
sub reopen_streams {
    for my $s (grep { $_->{open} } @streams) {
        next unless waitpid($s->{pid}, POSIX::WNOHANG()) == $s->{pid};
        $s->{open} = 0;
        $s->{closed} = time();
        open_stream($s->{w});
    }
}

END {
    local $?;
    sse_stop($_->{pid}) for grep { $_->{open} } @streams;
    for my $n (@nodes, 'lb') {
        nginx_stop($dir{$n}) if $dir{$n} && -e "$dir{$n}/nginx.conf";
    }
}


# 1. three nodes, the LB, warm-up

ok(kafka_produce($topic, ['0', '{"hello":"world"}']), "this run's topic made");
node_conf($_) for @nodes;
start_node($_) for qw(a b c);
lb_conf();
nginx_start($dir{lb}, $PLB);
ok(1, "LB started on $PLB");

# the probe must not see a user its ring does not reach: warm the users
$u{$_}{hb} = 1 for @steady, grep { rand() < 0.3 } @others;
pump();
open_stream($_) for @watchers;
is(scalar(grep { $_->{ok} } @streams), $W, "$W streams open");
workload(3);
check('warm-up');


# 2. the steady workload

workload(10);
check('steady');


# 3. kill -9 of node b: its users that keep heartbeating move (no
# offline), those that go quiet with it go offline everywhere within
# timeout + 1 s, one offline event each

my @of_b = grep { $u{$_}{owner} eq 'b' && $u{$_}{hb} && !$u{$_}{bad} } @ids;
my @quiet = grep { !$u{$_}{steady} && !$u{$_}{inv} && rand() < 0.5 } @of_b;
my @movers = grep { my $q = $_; !grep { $_ == $q } @quiet } @of_b;
cmp_ok(scalar @quiet, '>=', 5, "node b owns users that will go quiet")
    or diag(scalar(@of_b) . " users of b");
sub kill9 {
    my ($n) = @_;
    my ($master, $pidfile) = master_of($n);
    my @workers = grep { /^\d+$/ } split /\s+/,
                  `ps -o pid= --ppid $master 2>/dev/null`;
    kill 'KILL', $master, @workers;
    unlink $pidfile;
    delete $live{$n};
}
for (@quiet) {
    $u{$_}{hb} = 0;
    $frozen{$_} = 1;
}
my $t_kill = time();
kill9('b');
# their clients notice and reconnect at once: through the LB, elsewhere
pump(@movers);
my $off;
pump_until($CL_TIMEOUT + 4, sub {
    for my $n (sort keys %live) {
        my $st = read_node($n, \@quiet);
        return 0 if grep { ($st->{$_}[0] // '') ne 'offline' } @quiet;
    }
    return $off = time() - $t_kill;
});
diag(sprintf "kill -9 of b: %d users moved, %d went quiet: offline on "
             . "every node %.2f s after the kill (timeout %d s)",
             scalar @movers, scalar @quiet, $off // -1, $CL_TIMEOUT);
ok(defined $off, "b's quiet users offline on every live node");

# their last_seen: the last heartbeat b took, as the refreshes logged it
# (at most refresh= old), not the moment they came online
{
    my ($ok, $n, @age, @bad) = (0, 0);
    for my $nd (sort keys %live) {
        my $st = read_node($nd, \@quiet);
        for my $id (@quiet) {
            my $ls = $st->{$id}[2] // 'null';
            $n++;
            my $age = $ls eq 'null' ? 1e9 : $u{$id}{sent} - $ls / 1000;
            push @age, $age;
            # the last refresh saw the heartbeat before it: refresh= and
            # one heartbeat interval at most, the log's lag beside
            if ($age >= -0.05 && $age <= $REFRESH + 1.2 * $HB_EVERY + 0.3) {
                $ok++;
            } else {
                push @bad, "$nd $id last_seen $ls, last heartbeat "
                           . int($u{$id}{sent} * 1000);
            }
        }
    }
    diag(sprintf "b's quiet users offline with last_seen %.0f ms (p50) .. "
                 . "%.0f ms (max) before their last heartbeat (refresh %d s)",
                 1000 * pct(0.5, @age), 1000 * pct(1, @age), $REFRESH);
    is($ok, $n, "their last_seen within refresh= and a heartbeat interval "
                . "of their last heartbeat")
        or diag(join "\n", @bad[0 .. ($#bad > 9 ? 9 : $#bad)]);
}
my %where = map { $_ => $u{$_}{owner} } @movers;
cmp_ok($off // 99, '<=', $CL_TIMEOUT + 1, "within timeout + 1 s");
is(scalar(grep { $where{$_} ne 'b' && $where{$_} ne '' } @movers),
   scalar @movers, "b's other users answered elsewhere");
my $t_kill_done = time() + 1;
workload(2);
reopen_streams();
check('kill');
delete $frozen{$_} for @quiet;


# 4. b again (a new zone, read from the log), taken back into the ring
# once ready, as a readiness probe would

lb_conf();
lb_reload();
start_node('b');
lb_conf();
lb_reload();
workload(4);
reopen_streams();
check('restart');


# 5. b killed again and started at once, within the cluster timeout (its
# liveness key never expires, no other node writes its users): its users
# come back from the log; those that keep heartbeating show no change
# (wherever the LB sends them), those that went quiet with the restart go
# offline once a heartbeat timeout passed since b was ready again

my @of_b2 = grep { $u{$_}{owner} eq 'b' && $u{$_}{hb} && !$u{$_}{bad} } @ids;
my @quiet2 = grep { !$u{$_}{steady} && !$u{$_}{inv} && rand() < 0.5 } @of_b2;
my %q2 = map { $_ => 1 } @quiet2;
my @stay2 = grep { !$q2{$_} } @of_b2;
cmp_ok(scalar @quiet2, '>=', 5, "node b owns users that will go quiet");
for (@quiet2) {
    $u{$_}{hb} = 0;
    $frozen{$_} = 1;
}
# and those that went quiet before, whose timeout b had not reached
my @late2 = grep { $u{$_}{owner} eq 'b' && !$u{$_}{hb}
                   && !defined expected($_, time()) } @ids;
my $t_kill2 = time();
kill9('b');
start_node('b');
my $t_ready2 = time();
$u{$_}{until} = $t_ready2 + $HB_TIMEOUT + 1.5 for @late2;
diag(sprintf "b killed and ready again in %.2f s (timeout %d s)",
             $t_ready2 - $t_kill2, $CL_TIMEOUT);
cmp_ok($t_ready2 - $t_kill2, '<', $CL_TIMEOUT, "within the cluster timeout");
$u{$_}{until} = $t_ready2 + $HB_TIMEOUT + 1.5 for @quiet2;
pump(@stay2);
workload($HB_TIMEOUT);
my $off2;
pump_until(4, sub {
    for my $n (sort keys %live) {
        my $st = read_node($n, \@quiet2);
        return 0 if grep { ($st->{$_}[0] // '') ne 'offline' } @quiet2;
    }
    return $off2 = time() - $t_ready2;
});
diag(sprintf "b restarted: %d users stayed, %d went quiet: offline on every "
             . "node %.2f s after b was ready (heartbeat timeout %d s)",
             scalar @stay2, scalar @quiet2, $off2 // -1, $HB_TIMEOUT);
ok(defined $off2, "b's quiet users offline on every node");
cmp_ok($off2 // 99, '<=', $HB_TIMEOUT + 1.5, "within the heartbeat timeout "
       . "+ 1.5 s of b's restart");
my $t_kill2_done = time() + 1;
workload(1);
reopen_streams();
check('quick restart');
delete $frozen{$_} for @quiet2;


# 5. a 4th node, d, into the ring; 6. out again: stopped, then the LB

start_node('d');
lb_conf();
lb_reload();
workload(4);
cmp_ok(scalar(grep { $u{$_}{owner} eq 'd' && $u{$_}{hb} } @ids), '>', 0,
       "node d owns users");
check('add d');

my @of_d = grep { $u{$_}{owner} eq 'd' && $u{$_}{hb} } @ids;
my ($dmaster) = master_of('d');
kill 'QUIT', $dmaster;
pump_until(10, sub { !kill 0, $dmaster });
ok(!kill(0, $dmaster), "node d stopped");
delete $live{d};
pump(@of_d);    # their connections closed: they reconnect at once
lb_conf();
lb_reload();
workload(3);
reopen_streams();
check('remove d');


# 7. the end: no more ops; every quiet user timed out; the streams

my $until = time() + $HB_TIMEOUT + 2;
pump(), sleep(0.05) while time() < $until;
check('final');

is($seq_back, 0, "no node ever said a lower seq of a user than before")
    or diag(join "\n", @seq_back[0 .. ($#seq_back > 9 ? 9 : $#seq_back)]);

sleep(0.5);
my ($back, $steady_off, $final_wrong, $final_n, %quiet_off) = (0, 0, 0, 0);
my %is_quiet = map { $_ => 1 } @quiet;
my @steady_off;
for my $s (@streams) {
    my ($ev) = sse_read($s->{file});
    my (%last, %state);
    $state{$_} = $s->{snap}{$_} for keys %{ $s->{snap} };
    for my $e (@$ev) {
        next unless $e->{data} =~ /"id":(\d+),"status":"(\w+)".*"seq":(\d+)/;
        my ($id, $status, $seq) = ($1, $2, $3);
        $back++, diag("stream $s->{file}: user $id seq $last{$id} then $seq")
            if defined $last{$id} && $seq <= $last{$id};
        $last{$id} = $seq;
        if ($status eq 'offline' && $u{$id}{steady}) {
            $steady_off++;
            push @steady_off, "$id at " . ($e->{t} / 1000 - $t_start);
        }
        $quiet_off{"$s->{file} $id"}++
            if $status eq 'offline' && $is_quiet{$id}
               && $e->{t} / 1000 >= $t_kill && $e->{t} / 1000 <= $t_kill_done;
        $quiet_off{"2 $s->{file} $id"}++
            if $status eq 'offline' && $q2{$id}
               && $e->{t} / 1000 >= $t_kill2
               && $e->{t} / 1000 <= $t_kill2_done;
        $state{$id} = [$status, $seq]
            if !$state{$id} || $seq > $state{$id}[1];
    }
    next unless $s->{open};
    my $now = time();
    for my $id (@{ $watch{$s->{w}} }) {
        my $want = expected($id, $now) // next;
        $final_n++;
        $final_wrong++, diag("stream of $s->{w}: user $id ends "
                             . ($state{$id}[0] // 'unknown') . ", model $want")
            if ($state{$id}[0] // 'offline') ne $want;
    }
}
is($back, 0, "in every stream, a user's seq only grows");
is($steady_off, 0, "no offline event for a user online through the moves")
    or diag("@steady_off[0 .. ($#steady_off > 9 ? 9 : $#steady_off)]");
is($final_wrong, 0, "every open stream ends in the model's state "
                    . "($final_n users)");

# b's quiet users: one offline event in each stream open through the kill
my ($through, $once) = (0, 0);
for my $s (grep { $_->{opened} < $t_kill && $_->{node} ne 'b' } @streams) {
    for my $id (grep { $is_quiet{$_} } @{ $watch{$s->{w}} }) {
        $through++;
        my $n = $quiet_off{"$s->{file} $id"} // 0;
        $n == 1 ? $once++ : diag("stream $s->{file} on $s->{node}: user $id "
                                 . "went quiet with b, $n offline events");
    }
}
is($once, $through, "one offline event each for b's quiet users "
                    . "($through in streams open through the kill)");

($through, $once) = (0, 0);
for my $s (grep { $_->{opened} < $t_kill2 && $_->{node} ne 'b'
                  && (!$_->{closed} || $_->{closed} > $t_kill2) } @streams) {
    for my $id (grep { $q2{$_} } @{ $watch{$s->{w}} }) {
        $through++;
        my $n = $quiet_off{"2 $s->{file} $id"} // 0;
        $n == 1 ? $once++ : diag("stream $s->{file} on $s->{node}: user $id "
                                 . "went quiet with b's restart, $n offline "
                                 . "events");
    }
}
is($once, $through, "one offline event each for the users that went quiet "
                    . "with b's restart ($through in streams open through it)");

diag(sprintf "all steps: staleness over %d reads p50 %.0f ms, p99 %.0f ms, "
             . "max %.0f ms; %d heartbeats, %d ops, %d failed (a node "
             . "gone); %.0f s", scalar @all_stale, 1000 * pct(0.5, @all_stale),
             1000 * pct(0.99, @all_stale), 1000 * pct(1, @all_stale),
             $stats{heartbeats}, $stats{ops}, $stats{failed},
             time() - $t_start);

done_testing();
