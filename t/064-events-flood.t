# A flood of event-stream opens crashes no worker (issue 10, item 7):
# 2,000 concurrent GET /v1/events, good stream tickets and bad ones
# (forged, none, another user's ids, bad ids), against conf/nginx.conf as
# util/run.sh renders it, run as make run runs it (as root: workers as the
# unprivileged user, the unix sockets of the access check in the private
# runtime folder).  nchan 1.3.6 crashes a worker when its authorize
# request fails (a proxy_pass to a socket the workers cannot reach): no
# "exited on signal" in the error log, the workers' pids unchanged, every
# open answered.  The rate limits are left out here (t/063 tests them):
# the flood is about the access check, not the limits.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Cwd ();
use HTTP::Tiny ();
use IO::Select ();
use IO::Socket::INET ();
use Time::HiRes ();
use PresenceTest qw(token psql);
use PresenceDeploy;
use PresenceStores qw(stream_query);

my $P = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-flood';
my $url = "http://127.0.0.1:$P";
my $N = $ENV{PRESENCE_FLOOD_STREAMS} || 2000;

system('rm', '-rf', $root);

# users 907001..907020 subscribe to 907100; 907200 to nobody
my $sql = "DELETE FROM users WHERE user_id BETWEEN 907000 AND 907999;\n"
        . "INSERT INTO users (user_id, user_name) VALUES "
        . join(', ', map { "($_, 't064-$_')" } 907001 .. 907020, 907100, 907200)
        . ";\nINSERT INTO users_subscribers (user_id, user_id_t) VALUES "
        . join(', ', map { "($_, 907100)" } 907001 .. 907020) . ";\n";
psql($sql);

render_conf(dir => $root, port => $P, pg_dsn => $PresenceTest::PG_DSN,
            strip => qr/^\s*limit_(?:req|conn)\s/m, connections => 8192);
nginx_start($root, $P);
my ($master) = slurp("$root/nginx.pid") =~ /(\d+)/;

sub workers {
    my @pids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $in, '<', $stat or next;
        my $s = <$in> // next;
        my ($pid, $ppid) = $s =~ /^(\d+) \(.*\) \S+ (\d+)/s or next;
        push @pids, $pid if $ppid == $master;
    }
    return join ' ', sort { $a <=> $b } @pids;
}

# the workers settled (and every one answering) before the flood
my $http = HTTP::Tiny->new(timeout => 5);
$http->get("$url/metrics") for 1 .. 4;
my $before = workers();
like($before, qr/^\d+ \d+$/, "two workers ($before)");

# the good ones' tickets first (a ticket opens its owner's streams)
my @req;
my $good = 0;
for my $i (0 .. $N - 1) {
    my $uid = 907001 + $i % 20;
    my $kind = $i % 5;
    my $q;
    if ($kind <= 1) {                   # good
        $q = "ids=907100&" . stream_query($url, token($uid));
        $good++;
    } elsif ($kind == 2) {              # forged
        $q = "ids=907100&ticket=forged$i";
    } elsif ($kind == 3) {              # none, or an id not subscribed to
        $q = $i % 2 ? "ids=907100" : "ids=907200&" . stream_query($url, token($uid));
    } else {                            # bad ids
        $q = "ids=0,abc&ticket=x$i";
    }
    push @req, [$kind, "GET /v1/events?$q HTTP/1.1\r\nHost: localhost\r\n"
                       . "Accept: text/event-stream\r\n\r\n"];
}

# all of them at once
my (@socks, %info);
my $t0 = Time::HiRes::time();
for my $r (@req) {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$P", Timeout => 5)
        or last;
    $s->blocking(0);
    syswrite($s, $r->[1]);
    push @socks, $s;
    $info{fileno $s} = { kind => $r->[0], buf => '' };
}
is(scalar @socks, $N, "$N streams opened at once");

# every one answers: 200 and an open stream for the good, 4xx for the bad
my $sel = IO::Select->new(@socks);
my %pending = map { fileno($_) => 1 } @socks;
my $end = Time::HiRes::time() + 30;
while (%pending && Time::HiRes::time() < $end) {
    for my $s ($sel->can_read(0.2)) {
        my $i = $info{fileno $s};
        my $n = sysread($s, $i->{buf}, 4096, length $i->{buf});
        if ($i->{buf} =~ /\r\n\r\n/ || !$n) {
            delete $pending{fileno $s};
            $sel->remove($s);
        }
    }
}
my $took = Time::HiRes::time() - $t0;
is(scalar(keys %pending), 0, sprintf("every open answered (%.1f s)", $took));

my (%by, @wrong);
for my $s (@socks) {
    my $i = $info{fileno $s};
    my ($code) = $i->{buf} =~ m{^HTTP/1\.1 (\d+)};
    $code //= 0;
    $by{$i->{kind}}{$code}++;
    my $want = $i->{kind} <= 1 ? qr/^200$/ : qr/^4\d\d$/;
    push @wrong, "kind $i->{kind}: $code" unless $code =~ $want;
}
is(scalar @wrong, 0, "good tickets open their streams (200), bad ones are 4xx")
    or diag(join ', ', @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)]);
diag(join '; ', map { my $k = $_; "kind $k: "
     . join(' ', map { "$_ x$by{$k}{$_}" } sort keys %{ $by{$k} }) } sort keys %by);

is(workers(), $before, "the workers' pids are unchanged");
my $r = $http->get("$url/metrics");
is($r->{status}, 200, "nginx answers after the flood");

close $_ for @socks;
nginx_stop($root);

my $log = slurp("$root/error.log");
my @crash = $log =~ /^(.*exited on signal.*)$/mg;
ok(!@crash, "no worker exited on a signal") or diag(join "\n", @crash[0 .. 4]);
my @alert = $log =~ /^(.*\[(?:alert|crit|emerg)\].*)$/mg;
ok(!@alert, "no alert in the error log")
    or diag(join "\n", grep { defined } @alert[0 .. 4]);
psql("DELETE FROM users WHERE user_id BETWEEN 907000 AND 907999;");

done_testing();
