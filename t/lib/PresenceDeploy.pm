package PresenceDeploy;

# The shipped configurations of docker/ made runnable on this machine: the
# container's paths become a directory of the test, host names of the
# compose network become 127.0.0.1 and the test's ports, the module is the
# one of build/modules.  Used by t/060-deploy.t (nginx -t of each) and
# t/061-two-node.t (two nodes and the load balancer, really started).

use strict;
use warnings;

use Cwd ();
use File::Path ();
use IO::Socket::INET ();
use IO::Socket::UNIX ();
use Time::HiRes ();

our @EXPORT = qw(render_node render_lb nginx_start nginx_stop unix_get
                 slurp);
use Exporter 'import';

our $NGINX = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
our $MODULE_DIR = Cwd::abs_path($ENV{TEST_NGINX_MODULE_DIR}
                                || 'build/modules');
our $SECRET = 'presence-test-secret-0123456789';

sub slurp {
    my ($file) = @_;
    open my $in, '<', $file or die "$file: $!";
    local $/;
    return scalar <$in>;
}

sub spew {
    my ($file, $text) = @_;
    open my $out, '>', $file or die "$file: $!";
    print $out $text;
    close $out or die "$file: $!";
}

# docker/nginx-node.conf (or $o{src}) in $dir: API on 127.0.0.1:$o{port},
# metrics and health on the unix socket $dir/metrics.sock (or on
# 127.0.0.1:$o{metrics_port}); $o{timeout} replaces the 30s heartbeat
# timeout.  Returns the file.
sub render_node {
    my (%o) = @_;
    my $dir = $o{dir};

    File::Path::make_path("$dir/tmp");
    spew("$dir/secret", $SECRET);

    my $conf = slurp($o{src} || 'docker/nginx-node.conf');

    $conf =~ s{/usr/lib/nginx/modules/ngx_http_presence_module\.so}
              {$MODULE_DIR/ngx_http_presence_module.so}g;
    $conf =~ s{/run/secrets/presence_secret}{$dir/secret}g;
    $conf =~ s{/var/lib/presence}{$dir}g;
    $conf =~ s{/usr/share/presence/html}{Cwd::abs_path('conf/html')}ge;
    $conf =~ s{^error_log\s+stderr\s+\w+;}{error_log $dir/error.log info;}m;
    $conf =~ s{\@PG_DSN\@}{$o{pg_dsn}}g;
    $conf =~ s{\@REDIS_ADDR\@}{127.0.0.1:$o{redis_port}}g;
    # the test broker (util/services.sh kafka-start), else no Kafka
    if ($o{kafka} || $ENV{TEST_NGINX_KAFKA_BROKERS}) {
        $conf =~ s{\@KAFKA\@}{$o{kafka} || $ENV{TEST_NGINX_KAFKA_BROKERS}}ge;
    } else {
        $conf =~ s{^(\s*presence_kafka\s)}{#$1}mg;
        $conf =~ s{\@KAFKA\@}{127.0.0.1:9092}g;
    }
    $conf =~ s{listen\s+8080\b[^;]*;}{listen 127.0.0.1:$o{port};}
        or die "no listen 8080 in the node config";
    my $metrics = $o{metrics_port} ? "127.0.0.1:$o{metrics_port}"
                                   : "unix:$dir/metrics.sock";
    $conf =~ s{listen\s+9145\b[^;]*;}{listen $metrics;}
        or die "no listen 9145 in the node config";
    $conf =~ s{presence_heartbeat_timeout\s+30s;}{presence_heartbeat_timeout $o{timeout};}
        if $o{timeout};
    $conf =~ s{worker_processes\s+auto;}{worker_processes 2;};
    $conf =~ s{worker_connections\s+\d+;}{worker_connections 1024;};
    $conf =~ s{worker_rlimit_nofile\s+\d+;}{};

    die "placeholder left: $1" if $conf =~ /(\@[A-Z_]+\@)/;

    spew("$dir/nginx.conf", as_root($conf));
    return "$dir/nginx.conf";
}

# Run as root (make test is), the workers run as root too, as the test
# runner has them: a checkout in a private folder (CI's) is out of reach of
# nobody, and with it the unix sockets of the node.
sub as_root {
    my ($conf) = @_;
    return $> == 0 ? "user root;\n$conf" : $conf;
}

# docker/nginx-lb.conf in $dir: on 127.0.0.1:$o{port}, the nodes
# presence1 and presence2 at 127.0.0.1:$o{nodes}[0] and [1]; $o{fail_timeout}
# replaces the time a failed node is left out.
sub render_lb {
    my (%o) = @_;
    my $dir = $o{dir};

    File::Path::make_path("$dir/tmp");
    my $conf = slurp($o{src} || 'docker/nginx-lb.conf');

    $conf =~ s{/var/lib/presence}{$dir}g;
    $conf =~ s{^error_log\s+stderr\s+\w+;}{error_log $dir/error.log info;}m;
    $conf =~ s{listen\s+8080\b[^;]*;}{listen 127.0.0.1:$o{port};}
        or die "no listen 8080 in the LB config";
    for my $i (1, 2) {
        my $port = $o{nodes}[$i - 1];
        $conf =~ s{server\s+presence$i:8080}{server 127.0.0.1:$port}
            or die "no presence$i in the LB config";
    }
    $conf =~ s{worker_processes\s+auto;}{worker_processes 2;};
    $conf =~ s{worker_connections\s+\d+;}{worker_connections 1024;};
    $conf =~ s{fail_timeout=\w+}{fail_timeout=$o{fail_timeout}}g
        if $o{fail_timeout};

    spew("$dir/nginx.conf", as_root($conf));
    return "$dir/nginx.conf";
}

# Starts nginx (daemon) with $dir/nginx.conf; dies unless it answers on
# $port within 5 s.
sub nginx_start {
    my ($dir, $port) = @_;
    my $out = `$NGINX -p $dir/ -c $dir/nginx.conf 2>&1`;
    die "nginx in $dir did not start: $out" if $?;
    for (1 .. 100) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port");
        return 1 if $s;
        Time::HiRes::sleep(0.05);
    }
    die "nginx in $dir does not listen on $port";
}

sub nginx_stop {
    my ($dir) = @_;
    my ($pidfile) = slurp("$dir/nginx.conf") =~ /^pid\s+(\S+);/m;
    my $pid = eval { slurp($pidfile) } or return;
    chomp $pid;
    kill 'QUIT', $pid;
    for (1 .. 100) {
        return unless kill 0, $pid;
        Time::HiRes::sleep(0.05);
    }
    kill 'KILL', $pid;
}

# GET $path over the unix socket $sock: (status, body).
sub unix_get {
    my ($sock, $path) = @_;
    my $s = IO::Socket::UNIX->new(Peer => $sock) or return (0, '');
    print $s "GET $path HTTP/1.0\r\nHost: localhost\r\n\r\n";
    local $/;
    my $res = <$s> // '';
    my ($status) = $res =~ m{^HTTP/1\.\d (\d+)};
    my (undef, $body) = split /\r\n\r\n/, $res, 2;
    return ($status // 0, $body // '');
}

1;
