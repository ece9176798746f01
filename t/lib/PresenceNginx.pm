package PresenceNginx;

# One nginx starter, stopper, /metrics reader and poll with a deadline for
# the tests that start an nginx of their own (PresenceLoad, PresenceStores,
# PresenceDeploy and the files using them): the nginx the Test::Nginx
# harness starts is the harness's business, these are for the rest.
#
#   nginx_start(prefix => $dir[, conf => $file][, port => $p]
#               [, ready => sub { ... }][, secs => 10])
#       nginx -p $dir/ -c $file (default $dir/conf/nginx.conf), a daemon;
#       waits for its pid file (the conf's "pid", else logs/nginx.pid), for
#       $p to accept connections and for ready->($master) to be true, each
#       within secs; returns the master's pid, or stops it and dies saying
#       what did not happen
#   nginx_stop($pid[, secs => 15])
#       QUIT, then KILL of the master and its workers after secs
#   children($pid)      the processes whose parent is $pid, sorted (a count
#                       in scalar context)
#   nginx_get($where, $path)
#       (status, body) of GET $path on its own connection; $where is a
#       port, host:port or unix:/path (default TEST_NGINX_SERVER_PORT)
#   metrics($where)     { name => value } of GET /metrics, undef unless 200
#   metric($name[, $where])   one of them, undef when absent
#   wait_for($secs, sub { ... })
#       polls every 50 ms until the sub returns true or secs pass;
#       returns its last value

use strict;
use warnings;

use IO::Socket::INET ();
use IO::Socket::UNIX ();
use Time::HiRes qw(sleep time);

our @EXPORT = qw(nginx_start nginx_stop children nginx_get metrics metric
                 wait_for);
use Exporter 'import';

our $NGINX = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';

sub port { $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984 }

sub wait_for {
    my ($secs, $cond) = @_;
    my $end = time + $secs;
    my $v;
    until (($v = $cond->()) || time > $end) {
        sleep 0.05;
    }
    return $v;
}

sub slurp {
    my ($file) = @_;
    open my $in, '<', $file or return undef;
    local $/;
    return scalar <$in>;
}

sub connect_to {
    my ($where) = @_;
    $where //= port();
    return IO::Socket::UNIX->new(Peer => $1) if $where =~ /^unix:(.+)$/;
    $where = "127.0.0.1:$where" if $where =~ /^\d+$/;
    return IO::Socket::INET->new(PeerAddr => $where, Timeout => 5);
}

sub nginx_get {
    my ($where, $path) = @_;
    my $s = connect_to($where) or return (0, '');
    print $s "GET $path HTTP/1.0\r\nHost: localhost\r\n\r\n";
    local $/;
    # bounded: a node whose workers all died (its master holds the
    # socket, nobody answers) is a failed check, not a hung test
    my $res = eval {
        local $SIG{ALRM} = sub { die "timeout\n" };
        alarm 10;
        my $r = <$s>;
        alarm 0;
        $r;
    } // '';
    alarm 0;
    my ($status) = $res =~ m{^HTTP/1\.\d (\d+)};
    my (undef, $body) = split /\r\n\r\n/, $res, 2;
    return ($status // 0, $body // '');
}

sub metrics {
    my ($where) = @_;
    my ($status, $body) = nginx_get($where, '/metrics');
    return undef unless $status == 200;
    my %m = $body =~ /^([^#\s]\S*) (\S+)$/mg;
    return \%m;
}

sub metric {
    my ($name, $where) = @_;
    my $m = metrics($where) or return undef;
    return $m->{$name};
}

sub children {
    my ($parent) = @_;
    my @pids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        my $s = slurp($stat) or next;
        # pid (comm) state ppid
        my ($pid, $ppid) = $s =~ /^(\d+) \(.*\) \S+ (\d+)/s or next;
        push @pids, $pid if $ppid == $parent;
    }
    @pids = sort { $a <=> $b } @pids;
    return @pids;             # a count in scalar context
}

sub nginx_start {
    my (%o) = @_;
    my $prefix = $o{prefix} or die "nginx_start: no prefix";
    my $conf = $o{conf} // "$prefix/conf/nginx.conf";
    $conf = "$prefix/$conf" unless $conf =~ m{^/};
    my $secs = $o{secs} || 10;

    my ($pidfile) = (slurp($conf) // '') =~ /^\s*pid\s+(\S+);/m;
    $pidfile //= 'logs/nginx.pid';
    $pidfile = "$prefix/$pidfile" unless $pidfile =~ m{^/};

    my $out = `'$NGINX' -p '$prefix/' -c '$conf' 2>&1`;
    die "nginx in $prefix did not start: $out" if $?;

    my $master = wait_for($secs, sub {
        my $p = slurp($pidfile);
        return $p && $p =~ /^(\d+)/ ? $1 : undef;
    }) or die "nginx in $prefix wrote no pid file ($pidfile)";

    # an nginx that is not ready is stopped: it would hold the port
    my $fail = sub { nginx_stop($master); die "nginx in $prefix @_\n" };
    $fail->("does not listen on $o{port}")
        if $o{port} && !wait_for($secs, sub { connect_to($o{port}) });
    $fail->("is not ready within $secs s")
        if $o{ready} && !wait_for($secs, sub { $o{ready}->($master) });

    return $master;
}

sub nginx_stop {
    my ($master, %o) = @_;
    return unless $master && kill 0, $master;
    my @w = children($master);
    kill 'QUIT', $master;
    return if wait_for($o{secs} || 15, sub { !kill 0, $master });
    kill 'KILL', $master, @w;
}

1;
