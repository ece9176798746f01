package PresenceLoad;

# Helpers of the tests that put nginx under load (t/050-reliability.t,
# t/051-soak.t): an nginx with a master and 2 workers of its own (in
# $TEST_NGINX_SERVROOT-<name of the file>, e.g. servroot-soak, on
# $TEST_NGINX_SERVER_PORT, $TEST_NGINX_BINARY),
# wrk driven by t/lib/load.lua, a pipelined status reader, and what /proc
# says about the workers.  These scenarios are not request/answer pairs,
# so they are plain Test::More files; they need no Test::Nginx.  nginx is
# started, stopped and read (/metrics) by PresenceNginx.

use strict;
use warnings;

use Cwd ();
use Digest::SHA qw(hmac_sha256);
use File::Path ();
use IO::Socket::INET;
use MIME::Base64 qw(encode_base64url);
use POSIX ();
use Time::HiRes qw(sleep time);
use PresenceNginx qw(wait_for metrics children);

our @EXPORT = qw(start_nginx stop_nginx reload workers master nginx_log
                 http metrics statuses write_tokens wrk_start wrk_wait
                 worker_conns memory wait_for $PORT $SERVROOT $SECRET);
use Exporter 'import';

our $SECRET = 'presence-test-secret-0123456789';
our $PORT = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
# a server root of its own beside Test::Nginx's: this nginx's files and
# the tests' output (tokens, wrk's) would make the next Test::Nginx file
# bail out ("Can't remove t/servroot (not empty?)")
our $SERVROOT = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('.') . '/t/servroot')
                . '-' . ($0 =~ m{(?:^|/)\d+-([\w-]+)\.t$} ? $1 : 'load');
our $BINARY = $PresenceNginx::NGINX;
our $MODULES = Cwd::abs_path($ENV{TEST_NGINX_MODULE_DIR} || 'build/modules');
our $LUA = Cwd::abs_path('t/lib/load.lua');

my $master;

sub master { return $master }

sub pid_alive {
    my ($pid) = @_;
    return $pid && kill 0, $pid;
}

# a file's content, undef when it cannot be read
sub read_file { PresenceNginx::slurp(@_) }

# Starts nginx with this http{} content (the listen port is $PORT); dies
# when it does not answer within 10 s.  A leftover nginx of the servroot
# is stopped first.
sub start_nginx {
    my ($http, %o) = @_;

    my $old = read_file("$SERVROOT/logs/nginx.pid");
    if ($old && $old =~ /^(\d+)/ && pid_alive($1)) {
        $master = $1;
        stop_nginx();
    }

    File::Path::rmtree($SERVROOT);
    File::Path::make_path("$SERVROOT/conf", "$SERVROOT/logs",
                          "$SERVROOT/html");

    my $workers = $o{workers} || 2;
    open my $fh, '>', "$SERVROOT/conf/nginx.conf" or die "conf: $!";
    # as root, the workers run as util/services.sh's unprivileged user
    my $user = $> == 0 ? 'user ' . ($ENV{TEST_NGINX_WORKER_USER} || 'presence')
                         . ';' : '';
    print $fh <<CONF;
$user
load_module $MODULES/ngx_http_presence_module.so;
worker_processes $workers;
master_process on;
daemon on;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $SERVROOT/tmp;
$http
}
CONF
    close $fh;

    $master = PresenceNginx::nginx_start(
        prefix => $SERVROOT, conf => 'conf/nginx.conf', port => $PORT,
        ready => sub { metrics($PORT) && children($_[0]) == $workers });

    return $master;
}

sub stop_nginx {
    PresenceNginx::nginx_stop($master);
}

# wrk clients still running when a test dies would load the next test
my %wrk;

END {
    kill 'TERM', keys %wrk;
    stop_nginx();
}

# The master's children, sorted.
sub workers {
    return () unless $master;
    my @pids = children($master);
    return @pids;             # a count in scalar context
}

# nginx -s reload, then waits until the workers are all new and the old
# ones gone (so their connections closed); returns the new workers.
sub reload {
    my %old = map { $_ => 1 } workers();
    my $n = keys %old;

    my $cmd = "'$BINARY' -p '$SERVROOT/' -c conf/nginx.conf -s reload 2>&1";
    my $out = `$cmd`;
    die "nginx -s reload failed: $?: $out" if $?;

    wait_for(15, sub {
        my @w = workers();
        return @w == $n && !grep { $old{$_} } @w;
    }) or return ();

    return workers();
}

sub nginx_log {
    return read_file("$SERVROOT/logs/error.log") // '';
}

# One request on its own connection: (status, body).
sub http {
    my ($method, $path, %h) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $PORT,
                                  Timeout => 5)
        or return (0, "connect: $!");
    my $body = delete $h{body} // '';
    my $head = "$method $path HTTP/1.1\r\nHost: localhost\r\n"
             . "Connection: close\r\nContent-Length: " . length($body) . "\r\n";
    $head .= "$_: $h{$_}\r\n" for sort keys %h;
    print $s "$head\r\n$body";

    local $/;
    my $resp = <$s> // '';
    my ($code) = $resp =~ m{^HTTP/1\.\d (\d{3})};
    my ($b) = $resp =~ /\r\n\r\n(.*)\z/s;
    return ($code // 0, $b // '');
}

# The status of each id, as the user itself sees it, through a location
# with presence_identity $http_x_user_id: GETs $prefix/{id}, pipelined on
# connections, 500 at a time.  Returns { id => { status, seq, code } }.
sub statuses {
    my ($ids, $prefix) = @_;
    my %st;
    my @ids = @$ids;

    # a connection per batch: nginx closes one after keepalive_requests
    while (my @batch = splice @ids, 0, 500) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $PORT, Timeout => 10)
            or die "connect: $!";
        binmode $s;

        print $s join '', map {
            "GET $prefix/$_ HTTP/1.1\r\nHost: localhost\r\nX-User-Id: $_\r\n\r\n"
        } @batch;

        my $buf = '';
        for my $id (@batch) {
            my ($code, $body) = read_response($s, \$buf);
            my %e = (code => $code);
            if ($code == 200 && $body =~ /"status":"(\w+)".*"seq":(\d+)/) {
                @e{qw(status seq)} = ($1, $2);
            }
            $st{$id} = \%e;
        }
    }

    return \%st;
}

sub read_response {
    my ($s, $buf) = @_;

    until ($$buf =~ /\r\n\r\n/) {
        sysread($s, $$buf, 65536, length $$buf) or die "status read: $!";
    }
    $$buf =~ s/^(.*?)\r\n\r\n//s;
    my $head = $1;
    my ($code) = $head =~ m{^HTTP/1\.1 (\d+)};
    my ($len) = $head =~ /^Content-Length: (\d+)/mi;
    $len //= 0;
    while (length $$buf < $len) {
        sysread($s, $$buf, 65536, length $$buf) or die "status read: $!";
    }
    return ($code, substr($$buf, 0, $len, ''));
}

# "id token" lines for ids $from..$to: HS256 tokens as util/token makes
# them (no exp: they outlive any run).
sub write_tokens {
    my ($file, $from, $to) = @_;
    my $h = encode_base64url('{"alg":"HS256","typ":"JWT"}');
    open my $fh, '>', $file or die "$file: $!";
    for my $id ($from .. $to) {
        my $p = encode_base64url(qq({"sub":"$id"}));
        print $fh "$id $h.$p.", encode_base64url(hmac_sha256("$h.$p", $SECRET)),
                  "\n";
    }
    close $fh;
}

# Starts wrk with t/lib/load.lua in the background: connections,
# seconds, tokens (a file), and LOAD_* settings (rate, steady, ...; see
# load.lua).  Returns a handle for wrk_wait.
sub wrk_start {
    my (%o) = @_;

    my $out = "$SERVROOT/wrk-" . ($o{name} || 'load') . '.out';
    my %env = (LOAD_TOKENS => $o{tokens}, LOAD_SECONDS => $o{seconds},
               map { ('LOAD_' . uc($_) => $o{env}{$_}) } keys %{ $o{env} || {} });

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        @ENV{keys %env} = values %env;
        open STDOUT, '>', $out or POSIX::_exit(127);
        open STDERR, '>&', \*STDOUT;
        no warnings 'exec';
        exec 'wrk', '-t1', "-c$o{connections}", "-d$o{seconds}s",
             '--timeout', '5s', '-s', $LUA, "http://127.0.0.1:$PORT/";
        POSIX::_exit(127);
    }

    $wrk{$pid} = 1;
    return { pid => $pid, out => $out, name => $o{name} };
}

# Waits for wrk; returns its counts: sent answered ok hb bad connect read
# write timeout seconds, lost (sent - answered), errors (the socket
# errors), and out (its whole output).
sub wrk_wait {
    my ($w) = @_;
    waitpid $w->{pid}, 0;
    delete $wrk{ $w->{pid} };
    my $out = read_file($w->{out}) // '';
    my %r = (out => $out, rc => $? >> 8, name => $w->{name});

    my ($line) = $out =~ /^RESULT (.*)$/m or return \%r;
    @r{qw(sent answered ok hb bad connect read write timeout seconds)}
        = split ' ', $line;
    # wrk calls request() once to check the script before it starts
    $r{sent}--;
    $r{lost} = $r{sent} - $r{answered};
    $r{errors} = $r{connect} + $r{read} + $r{write} + $r{timeout};
    return \%r;
}

# TCP connections that process $pid holds on $PORT (listeners excepted).
sub worker_conns {
    my ($pid) = @_;

    my %inodes;
    for my $fd (glob "/proc/$pid/fd/*") {
        my $l = readlink $fd or next;
        $inodes{$1} = 1 if $l =~ /^socket:\[(\d+)\]$/;
    }

    my $n = 0;
    for my $table ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $fh, '<', $table or next;
        <$fh>;
        while (<$fh>) {
            my @f = split ' ';
            # sl local rem st ... inode (field 9)
            my ($lport) = $f[1] =~ /:([0-9A-F]{4})$/ or next;
            next unless hex($lport) == $PORT && $f[3] ne '0A';
            $n++ if $inodes{ $f[9] };
        }
    }
    return $n;
}

# Memory of the master and the workers, in kB: rss (VmRSS summed),
# shmem (RssShmem summed: pages of the zones the processes touched),
# dirty (Private_Dirty of the workers summed: their own heaps), and per
# process "pid:VmRSS".
sub memory {
    my %m = (rss => 0, shmem => 0, dirty => 0, each => []);
    for my $pid ($master, workers()) {
        my $st = read_file("/proc/$pid/status") or next;
        my ($rss) = $st =~ /^VmRSS:\s+(\d+)/m;
        my ($shm) = $st =~ /^RssShmem:\s+(\d+)/m;
        $m{rss} += $rss // 0;
        $m{shmem} += $shm // 0;
        push @{ $m{each} }, "$pid:" . ($rss // 0);
        next if $pid == $master;
        my $sm = read_file("/proc/$pid/smaps_rollup") // '';
        my ($d) = $sm =~ /^Private_Dirty:\s+(\d+)/m;
        $m{dirty} += $d // 0;
    }
    return \%m;
}

1;
