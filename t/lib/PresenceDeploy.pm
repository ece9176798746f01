package PresenceDeploy;

# The shipped configurations of docker/ made runnable on this machine: the
# container's paths become a directory of the test, host names of the
# compose network become 127.0.0.1 and the test's ports, the module is the
# one of build/modules.  Used by t/060-deploy.t (nginx -t of each) and
# t/061-two-node.t (two nodes and the load balancer, really started, by
# PresenceNginx).

use strict;
use warnings;

use Cwd ();
use File::Path ();
use IO::Socket::INET ();
use IO::Socket::UNIX ();
use Time::HiRes ();
use PresenceTest ();
use PresenceNginx ();

our @EXPORT = qw(render_node render_lb render_conf nginx_start nginx_stop
                 unix_get slurp module_has);
use Exporter 'import';

our $NGINX = $PresenceNginx::NGINX;
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

# Whether the module of $MODULE_DIR has the directive or variable $name
# (its name is a string of the .so).
sub module_has {
    my ($name) = @_;
    my $so = eval { slurp("$MODULE_DIR/ngx_http_presence_module.so") } // '';
    return $so =~ /\0\Q$name\E\0/ ? 1 : 0;
}

# docker/nginx-node.conf (or $o{src}) in $dir: API on 127.0.0.1:$o{port},
# metrics and health on the unix socket $dir/metrics.sock (or on
# 127.0.0.1:$o{metrics_port}); $o{timeout} replaces the 30s heartbeat
# timeout; $o{node} names it in the cluster (presence_cluster node=),
# else it runs alone (the line is left out: the tests that want a
# cluster add their own).  Returns the file.
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
    # the test Redis's requirepass (util/services.sh); none: no AUTH
    my $rpw = $o{redis_password} // $ENV{TEST_NGINX_REDIS_PASSWORD} // '';
    if ($rpw eq '') {
        $conf =~ s{ password=\@REDIS_PASSWORD\@}{}g;
        $conf =~ s{^\s*nchan_redis_password\s+\@REDIS_PASSWORD\@;\n}{}mg;
    }
    $conf =~ s{\@REDIS_PASSWORD\@}{$rpw}g;
    $conf =~ s{\@KAFKA_OPTIONS\@}{$o{kafka_options} // ''}ge;
    if (defined $o{node}) {
        $conf =~ s{\@NODE\@}{$o{node}}g;
    } else {
        $conf =~ s{^\s*presence_cluster\s[^\n]*\n}{}mg;
        $conf =~ s{\@NODE\@}{node}g;
    }
    # a module without the cluster core (before it was merged): /healthz
    # says ok, as it did before it had a readiness
    $conf =~ s{presence_health;}{default_type text/plain; return 200 "ok\\n";}g
        unless module_has('presence_health');
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
    # where nginx_start asks /nchan_status whether nchan reached Redis
    spew("$dir/metrics.addr", $metrics);
    $conf =~ s{presence_heartbeat_timeout\s+30s;}{presence_heartbeat_timeout $o{timeout};}
        if $o{timeout};
    $conf =~ s{worker_processes\s+auto;}{worker_processes 2;};
    $conf =~ s{worker_connections\s+\d+;}{worker_connections 1024;};
    $conf =~ s{worker_rlimit_nofile\s+\d+;}{};

    die "placeholder left: $1" if $conf =~ /(\@[A-Z_]+\@)/;

    PresenceTest::write_shipped($dir);
    spew("$dir/nginx.conf", as_root($conf));
    return "$dir/nginx.conf";
}

# conf/nginx.conf in $dir as util/run.sh renders it (prefix $dir, on
# 127.0.0.1:$o{port}, the test's stores; $o{strip} a regex of lines to
# leave out): returns the file.
sub render_conf {
    my (%o) = @_;
    my $dir = $o{dir};

    File::Path::make_path("$dir/logs", "$dir/tmp");
    spew("$dir/secret", $SECRET);
    # the gateway location's key (conf/nginx.conf: presence_gateway_secret_file)
    spew("$dir/gateway-secret", 'presence-test-gateway-0123456789');
    my $conf = slurp('conf/nginx.conf');
    my %v = (MODULE_DIR => $MODULE_DIR, PREFIX => $dir,
             PG_DSN => $o{pg_dsn}, PORT => $o{port},
             HTML => Cwd::abs_path('conf/html'),
             REDIS_PORT => $ENV{TEST_NGINX_REDIS_PORT} || 56379,
             REDIS_PASSWORD => $ENV{TEST_NGINX_REDIS_PASSWORD} || '',
             KAFKA_BROKERS => $ENV{TEST_NGINX_KAFKA_BROKERS}
                              || '127.0.0.1:9092');
    $conf =~ s/ password=\@REDIS_PASSWORD\@// if $v{REDIS_PASSWORD} eq '';
    $conf =~ s/\@(\w+)\@/$v{$1} \/\/ die "conf\/nginx.conf: \@$1\@ unknown"/ge;
    $conf =~ s/^[^\n]*(?:$o{strip})[^\n]*\n//mg if $o{strip};
    $conf =~ s{worker_processes\s+auto;}{worker_processes 2;};
    $conf =~ s{worker_connections\s+\d+;}{worker_connections $o{connections};}
        if $o{connections};
    $conf =~ s{^error_log\s+\S+\s+\w+;}{error_log $dir/error.log info;}m;
    $conf =~ s{^pid\s+\S+;}{pid $dir/nginx.pid;}m;
    PresenceTest::write_shipped($dir);
    spew("$dir/nginx.conf", as_root($conf));
    return "$dir/nginx.conf";
}

# Run as root (make test is), the workers run as the unprivileged user of
# util/services.sh (TEST_NGINX_WORKER_USER, "presence"), never root: the
# test's folders are in its private runtime folder, where they reach the
# unix sockets and nobody else does.
sub as_root {
    my ($conf) = @_;
    my $user = $ENV{TEST_NGINX_WORKER_USER} || 'presence';
    return $> == 0 ? "user $user;\n$conf" : $conf;
}

# docker/nginx-lb.conf in $dir: on 127.0.0.1:$o{port}, the nodes
# presence1, presence2, ... at 127.0.0.1:$o{nodes}[0], [1], ... (the LB's
# other nodes left out); $o{fail_timeout} replaces the time a failed node
# is left out.  The module and the tokens' key are the test's.
sub render_lb {
    my (%o) = @_;
    my $dir = $o{dir};

    File::Path::make_path("$dir/tmp");
    spew("$dir/secret", $SECRET);
    my $conf = slurp($o{src} || 'docker/nginx-lb.conf');

    $conf =~ s{/usr/lib/nginx/modules/ngx_http_presence_module\.so}
              {$MODULE_DIR/ngx_http_presence_module.so}g;
    $conf =~ s{/run/secrets/presence_secret}{$dir/secret}g;
    # a module without the cluster core: the same variable's older name
    $conf =~ s{\$presence_user\b}{\$presence_caller}g
        unless module_has('presence_user');
    $conf =~ s{/var/lib/presence}{$dir}g;
    $conf =~ s{^error_log\s+stderr\s+\w+;}{error_log $dir/error.log info;}m;
    $conf =~ s{listen\s+8080\b[^;]*;}{listen 127.0.0.1:$o{port};}
        or die "no listen 8080 in the LB config";
    for my $i (1 .. @{ $o{nodes} }) {
        my $port = $o{nodes}[$i - 1];
        $conf =~ s{server\s+presence$i:8080}{server 127.0.0.1:$port}
            or die "no presence$i in the LB config";
    }
    $conf =~ s{^\s*server\s+presence\d+:8080\b[^\n]*\n}{}mg;
    $conf =~ s{worker_processes\s+auto;}{worker_processes 2;};
    $conf =~ s{worker_connections\s+\d+;}{worker_connections 1024;};
    $conf =~ s{fail_timeout=\w+}{fail_timeout=$o{fail_timeout}}g
        if $o{fail_timeout};

    spew("$dir/nginx.conf", as_root($conf));
    return "$dir/nginx.conf";
}

# Starts nginx (daemon) with $dir/nginx.conf; dies unless it answers on
# $port within 5 s.  A node of render_node() whose nchan runs in Redis
# mode is ready once its workers are logged in to Redis (/nchan_status on
# its metrics address: no unhealthy upstream; up to 5 s more), or the
# first events it publishes could be refused (503) meanwhile.
sub nginx_start {
    my ($dir, $port) = @_;
    PresenceNginx::nginx_start(prefix => $dir, conf => "$dir/nginx.conf",
                               port => $port, secs => 5);

    my $metrics = -e "$dir/metrics.addr" ? slurp("$dir/metrics.addr") : '';
    return 1 unless $metrics && slurp("$dir/nginx.conf") =~ /^\s*nchan_redis_pass\s/m;
    PresenceNginx::wait_for(5, sub {
        my (undef, $body) = PresenceNginx::nginx_get($metrics, '/nchan_status');
        return $body =~ /^redis connected servers: [1-9]/m
               && $body =~ /^redis unhealthy upstreams: 0$/m;
    });
    return 1;
}

sub nginx_stop {
    my ($dir) = @_;
    my ($pidfile) = slurp("$dir/nginx.conf") =~ /^pid\s+(\S+);/m;
    my $pid = eval { slurp($pidfile) } or return;
    chomp $pid;
    PresenceNginx::nginx_stop($pid, secs => 5);
}

# GET $path over the unix socket $sock: (status, body).
sub unix_get {
    my ($sock, $path) = @_;
    return PresenceNginx::nginx_get("unix:$sock", $path);
}

1;
