package PresenceStores;

# Helpers of the write-behind tests: HTTP calls of the running nginx, what
# PostgreSQL and Redis hold, and polling with a deadline.  Used from
# "--- init" sections, which run after nginx started and before the
# block's requests, so a block checks what the blocks before it did.
# wait_for, metric and the nginx starter are PresenceNginx's.

use strict;
use warnings;

use HTTP::Tiny;
use Time::HiRes qw(time sleep);
use PresenceTest qw(bearer token);
use PresenceNginx qw(wait_for metric children);

our @EXPORT = qw(api heartbeat self_status wait_for pg_value pg_state
                 redis_cli redis_state metric nginx_kill9 nginx_start now
                 nap redis_stop redis_start pg_states redis_states
                 stream_query);
use Exporter 'import';

my $http = HTTP::Tiny->new(timeout => 5, keep_alive => 0);

sub port { $ENV{TEST_NGINX_SERVER_PORT} || 1984 }

# api(METHOD, path, uid[, body]) -> [status, body]
sub api {
    my ($method, $path, $uid, $body) = @_;
    my %h = (headers => { Authorization => 'Bearer ' . token($uid) });
    $h{content} = $body if defined $body;
    my $r = $http->request($method, 'http://127.0.0.1:' . port() . $path, \%h);
    return [$r->{status}, $r->{content}];
}

sub heartbeat { api('POST', '/v1/heartbeat', $_[0])->[0] }

# [status, last_seen, seq] of a user as nginx has it (its own status)
sub self_status {
    my ($uid) = @_;
    my $r = api('GET', "/v1/status/$uid", $uid);
    $r->[1] =~ /"status":"(\w+)","last_seen":(\d+|null),"seq":(\d+)/
        or return undef;
    return [$1, $2 eq 'null' ? '' : $2, $3];
}

sub pg_value {
    my ($sql) = @_;
    local $ENV{PGCONNECT_TIMEOUT} = 3;
    my $v = `psql -X -A -t -q -c "$sql" "$PresenceTest::PG_DSN" 2>/dev/null`;
    chomp $v;
    return $v;
}

# "status,last_seen_ms" of a user in PostgreSQL
sub pg_state {
    my ($uid) = @_;
    return pg_value("SELECT status || ',' || coalesce(round(extract(epoch "
                    . "FROM last_seen) * 1000)::bigint::text, '') FROM users "
                    . "WHERE user_id = $uid");
}

# { id => "status,last_seen_ms" } of many users, one query
sub pg_states {
    my @ids = @_;
    my %st = map { split /\|/, $_, 2 } split /\n/, pg_value(
        "SELECT user_id || '|' || status || ',' || coalesce(round(extract("
        . "epoch FROM last_seen) * 1000)::bigint::text, '') FROM users "
        . "WHERE user_id IN (" . join(',', @ids) . ")");
    return \%st;
}

# { id => "status,last_seen,seq" } of many users, one pipeline
sub redis_states {
    my @ids = @_;
    my $port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
    open my $out, '-|', 'sh', '-c', '{ ' . join('', map {
        "echo 'HMGET presence:$_ status last_seen seq'; " } @ids)
        . "} | redis-cli -p $port" or die "redis-cli: $!";
    my @v = <$out>;
    close $out;
    chomp @v;
    my %st;
    for my $id (@ids) { $st{$id} = join ',', splice @v, 0, 3 }
    return \%st;
}

sub redis_cli {
    my $port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
    my $args = join ' ', map { "'$_'" } @_;
    my $v = `redis-cli -p $port --no-raw $args 2>/dev/null`;
    chomp $v;
    return $v;
}

# "status,last_seen,seq" of a user in Redis
sub redis_state {
    my ($uid) = @_;
    my $port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
    my @v = `redis-cli -p $port HMGET presence:$uid status last_seen seq 2>/dev/null`;
    chomp @v;
    return join ',', @v;
}

sub redis_stop {
    system('util/services.sh', 'redis-stop') == 0 or die "redis-stop failed";
}

sub redis_start {
    system('util/services.sh', 'redis-start') == 0 or die "redis-start failed";
}

sub pids {
    my $pidfile = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/nginx.pid";
    open my $in, '<', $pidfile or return;
    my $master = <$in>;
    chomp $master;
    return ($master, children($master));
}

# the whole nginx, master and workers, killed at once: no exit handler runs
sub nginx_kill9 {
    my @p = pids() or die "no nginx to kill";
    kill 'KILL', @p;
    wait_for(5, sub { !grep { kill 0, $_ } @p }) or die "nginx survived kill -9";
    unlink "$ENV{TEST_NGINX_SERVER_ROOT}/logs/nginx.pid";
}

# the same nginx.conf again, as the test harness had started it
sub nginx_start {
    PresenceNginx::nginx_start(
        prefix => $ENV{TEST_NGINX_SERVER_ROOT}, secs => 5,
        ready => sub { defined metric('presence_tracked_users') });
}

# The query-string credential of an event stream of the token's owner, as
# API.md has it: a stream ticket from POST /v1/events/ticket ("ticket=...").
# PRESENCE_STREAM_TOKEN=1 uses "token=" instead (a tree without tickets).
sub stream_query {
    my ($url, $token) = @_;
    return "token=$token" if $ENV{PRESENCE_STREAM_TOKEN};
    my $r = $http->post("$url/v1/events/ticket",
                        { headers => { Authorization => "Bearer $token" } });
    my ($t) = ($r->{content} // '') =~ /"ticket":"([^"]+)"/;
    $t //= 'none';
    $t =~ s/([^A-Za-z0-9._~-])/sprintf('%%%02X', ord $1)/ge;
    return "ticket=$t";
}

sub now { time }

sub nap { sleep $_[0] }

# "--- init" code runs in Test::Nginx::Util: these and Test::More's there
for my $name (@EXPORT) {
    no strict 'refs';
    *{"Test::Nginx::Util::$name"} = \&{$name};
}
for my $name (qw(ok is isnt like is_deeply diag cmp_ok)) {
    no strict 'refs';
    *{"Test::Nginx::Util::$name"} = \&{"Test::More::$name"}
        unless defined &{"Test::Nginx::Util::$name"};
}

1;
