package PresenceMass;

# The mass-expiry scenarios of the event publisher (t/024, t/025): an nginx
# of its own (2 workers, nchan, the module, the test PostgreSQL) on
# TEST_NGINX_SERVER_PORT, users heartbeating by the ten thousand through
# pipelined keep-alive requests, a sample of them each followed by an
# event stream of its own (the nchan wiring of t/lib/PresenceTest.pm's
# events_publisher and events_locations), and what
# /metrics, /nchan_status and the error log say.  Plain Test::More files
# use it; it needs no Test::Nginx block.

use strict;
use warnings;

use Cwd ();
use Digest::SHA qw(hmac_sha256);
use IO::Socket::INET ();
use MIME::Base64 qw(encode_base64url);
use POSIX ();
use Time::HiRes qw(sleep time);
use PresenceTest qw(token ticket pg_reset events_publisher events_locations);
use PresenceSSE qw(sse_start sse_stop sse_read);
use PresenceDeploy qw(nginx_start nginx_stop);
use PresenceNginx qw(children metrics nginx_get wait_for);

our @EXPORT = qw(mass_start mass_heartbeats mass_workers mass_metrics
                 mass_wait mass_streams mass_nchan mass_log mass_stop);
use Exporter 'import';

my $BATCH = 1000;                 # pipelined heartbeats per connection
my $CLIENTS = 2;                  # processes sending them
my $WATCHER = 900_001;            # the watcher of sample user i: + i

my $P = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
$ENV{TEST_NGINX_SERVER_PORT} = $P;          # of sse_start

my @running;

END {
    for my $m (@running) {
        kill 'CONT', mass_workers($m);
        sse_stop($_) for @{ $m->{sse} };
        nginx_stop($m->{root});
    }
}

# the wiring's lines one level deeper (inside http {})
sub indent {
    my ($text) = @_;
    $text =~ s/^(?=.)/    /mg;
    return $text;
}

sub slurp {
    my ($path) = @_;
    open my $in, '<', $path or return '';
    local $/;
    return scalar <$in>;
}

# Starts nginx and opens the streams.  Options: name (of the servroot),
# users, first (id), sample, timeout (s), nchan (nchan_shared_memory_size),
# workers (2), queue (of presence_publish), nobody (1: the publisher's
# socket is one nobody listens on).
sub mass_start {
    my (%o) = @_;

    my $m = { workers => 2, %o, sse => [] };
    my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
               . "-$o{name}";
    $m->{root} = $root;

    system('rm', '-rf', $root);
    mkdir $root or die "$root: $!";
    mkdir "$root/logs" or die "$root/logs: $!";

    my $user = $> == 0
        ? 'user ' . ($ENV{TEST_NGINX_WORKER_USER} || 'presence') . ';' : '';
    my $modules = Cwd::abs_path($ENV{TEST_NGINX_MODULE_DIR}
                                || 'build/modules');
    my $secret = $PresenceTest::SECRET;
    my $dsn = $PresenceTest::PG_DSN;
    my $sock = "$root/logs/publish.sock";
    my $publisher = indent(events_publisher(sock => $sock, queue => $o{queue},
                                            nobody => $o{nobody}));
    my $events = indent(events_locations(sock => $sock));

    open my $fh, '>', "$root/nginx.conf" or die "conf: $!";
    print $fh <<CONF;
$user
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
load_module $modules/ngx_http_presence_module.so;
worker_processes $m->{workers};
master_process on;
daemon on;
pid $root/logs/nginx.pid;
error_log $root/logs/error.log warn;
events { worker_connections 1024; }

http {
    access_log off;
    client_body_temp_path $root/tmp;
    proxy_temp_path $root/tmp;

    nchan_shared_memory_size $o{nchan};

    presence_zone name=presence size=32m;
    presence_heartbeat_timeout $o{timeout}s;
    presence_auth_secret $secret;
    presence_postgres "$dsn" pool=2 timeout=3s;
$publisher
    server {
        listen 127.0.0.1:$P;
        keepalive_requests 100000;

        location = /v1/heartbeat { presence_heartbeat; }
        location = /metrics { presence_metrics; }
        location = /nchan_status { nchan_stub_status; }

$events    }
}
CONF
    close $fh;

    my $n = $o{sample};
    my @sample = map { $o{first} + int(($_ + 0.5) * $o{users} / $n) }
                 0 .. $n - 1;
    $m->{sample} = \@sample;

    pg_reset(users => [(map { [$_, "u$_"] } @sample),
                       (map { [$WATCHER + $_, "w$_"] } 0 .. $n - 1)],
             subs => [map { [$WATCHER + $_, $sample[$_]] } 0 .. $n - 1]);

    push @running, $m;
    nginx_start($root, $P);

    # the streams, open before any heartbeat
    for my $i (0 .. $n - 1) {
        push @{ $m->{sse} }, sse_start("/v1/events?ids=$sample[$i]&ticket="
                                       . ticket($WATCHER + $i),
                                       "$root/sse-$i.out");
    }

    $m->{open} = grep { ((sse_read("$root/sse-$_.out"))[1] // '')
                        =~ m{^HTTP/1.1 200} } 0 .. $n - 1;
    return $m;
}

# One heartbeat of every user, pipelined; returns (204s, seconds).
sub mass_heartbeats {
    my ($m) = @_;

    my $h = encode_base64url('{"alg":"HS256","typ":"JWT"}');
    my $end = $m->{first} + $m->{users};
    my $t0 = time;
    my @clients;

    for my $c (0 .. $CLIENTS - 1) {
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            my $ok = 0;
            for (my $id = $m->{first} + $c * $BATCH; $id < $end;
                 $id += $CLIENTS * $BATCH)
            {
                my $last = ($id + $BATCH < $end ? $id + $BATCH : $end) - 1;
                my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$P",
                                              Timeout => 10)
                    or POSIX::_exit(1);
                my $req = '';
                for my $u ($id .. $last) {
                    my $p = encode_base64url(qq({"sub":"$u"}));
                    my $t = "$h.$p." . encode_base64url(
                        hmac_sha256("$h.$p", $PresenceTest::SECRET));
                    $req .= "POST /v1/heartbeat HTTP/1.1\r\nHost: localhost"
                          . "\r\nAuthorization: Bearer $t\r\n"
                          . "Content-Length: 0\r\n\r\n";
                }
                print $s $req;
                my ($buf, $n) = ('', 0);
                while ($n < $last - $id + 1) {
                    sysread($s, $buf, 65536, length $buf) or last;
                    while ($buf =~ s{^HTTP/1\.1 (\d+) [^\r]*\r\n.*?\r\n\r\n}{}s)
                    {
                        $n++;
                        $ok++ if $1 == 204;
                    }
                }
            }
            open my $out, '>', "$m->{root}/client-$c" or POSIX::_exit(1);
            print $out "$ok\n";
            close $out;
            POSIX::_exit(0);
        }
        push @clients, $pid;
    }

    waitpid $_, 0 for @clients;

    my $ok = 0;
    $ok += (slurp("$m->{root}/client-$_") =~ /^(\d+)/)[0] // 0
        for 0 .. $CLIENTS - 1;
    return ($ok, time - $t0);
}

sub mass_workers {
    my ($m) = @_;
    my ($master) = slurp("$m->{root}/logs/nginx.pid") =~ /^(\d+)/
        or return ();
    return children($master);
}

sub get {
    my ($path) = @_;
    return (nginx_get($P, $path))[1];
}

sub mass_metrics {
    return metrics($P) // {};
}

# nchan's figures, one line
sub mass_nchan {
    return join ', ', grep { /shared memory|channels|messages/ }
                      split /\n/, get('/nchan_status');
}

# Polls /metrics every 50 ms for up to $secs until $cond->(metrics);
# returns the last metrics.
sub mass_wait {
    my ($secs, $cond) = @_;
    my $m;
    wait_for($secs, sub { $cond->($m = mass_metrics()) });
    return $m;
}

# Closes the streams; returns the users whose stream did not get exactly
# "online/1 offline/2" (events repeated by a publisher retry counted once),
# with what it got.  With $by_seq, in the order of seq, as a client puts
# them (two workers' events of one user can cross when one is retried).
sub mass_streams {
    my ($m, $by_seq) = @_;
    sse_stop($_) for @{ $m->{sse} };
    $m->{sse} = [];

    my @bad;
    for my $i (0 .. $#{ $m->{sample} }) {
        my ($ev) = sse_read("$m->{root}/sse-$i.out");
        my (%seen, @got);
        for (map { $_->{data} } @$ev) {
            my $e = /"id":(\d+),"status":"(\w+)".*"seq":(\d+)/
                    ? "$1/$2/$3" : $_;
            push @got, $e unless $seen{$e}++;
        }
        if ($by_seq) {
            @got = sort { ($a =~ m{/(\d+)$})[0] <=> ($b =~ m{/(\d+)$})[0] }
                   @got;
        }
        my $u = $m->{sample}[$i];
        push @bad, "$u: @got" if "@got" ne "$u/online/1 $u/offline/2";
    }
    return \@bad;
}

# Stops this nginx and its streams (mass_start may then start another).
sub mass_stop {
    my ($m) = @_;
    sse_stop($_) for @{ $m->{sse} };
    $m->{sse} = [];
    nginx_stop($m->{root});
    @running = grep { $_ != $m } @running;
}

sub mass_log {
    my ($m) = @_;
    return slurp("$m->{root}/logs/error.log");
}

1;
