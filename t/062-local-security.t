# make run and make test keep the machine closed to its other local users
# (issue 10, item 7): nginx's workers never run as root; the unix sockets
# (nginx makes them with mode 0666) lie in a private runtime folder that
# only the workers' user and the master reach; PostgreSQL takes no
# connection without the random password (scram, no trust, its socket in a
# private folder); Redis none without its random requirepass.  "Another
# local user" is nobody (runuser), which owns nothing of ours.  Then make
# run from a copy of the checkout in a private (0700) home folder: workers
# not root, the demo page and an event stream work.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Cwd ();
use File::Path ();
use File::Temp ();
use HTTP::Tiny ();
use IO::Socket::INET ();
use Time::HiRes ();
use PresenceTest ();
use PresenceDeploy;
use PresenceStores qw(stream_query);

my $P = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-local';
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
my $dsn = $PresenceTest::PG_DSN;
my $http = HTTP::Tiny->new(timeout => 5);

my $other = 'nobody';
my $as_root = $> == 0;

# a command as the other local user: its exit status (0: it worked)
sub as_other {
    my (@cmd) = @_;
    return system('runuser', '-u', $other, '--', 'env', '-u',
                  'REDISCLI_AUTH', '-u', 'PGPASSFILE', '-u', 'PGPASSWORD',
                  @cmd) >> 8;
}

sub mode_owner {
    my ($path) = @_;
    my @st = lstat $path or return ('', '');
    return (sprintf('%04o', $st[2] & 07777), scalar getpwuid($st[4]));
}

# the uids of a master's workers, once they all left root (a worker
# forked a moment ago is root until it sets its user: up to 3 s)
sub worker_uids {
    my ($master) = @_;
    my @uids;
    for (1 .. 60) {
        @uids = worker_uids_now($master);
        last if @uids && !grep { $_ == 0 } @uids;
        Time::HiRes::sleep(0.05);
    }
    return @uids;
}

sub worker_uids_now {
    my ($master) = @_;
    my @uids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $in, '<', $stat or next;
        my $s = <$in> // next;
        my ($pid, $ppid) = $s =~ /^(\d+) \(.*\) \S+ (\d+)/s or next;
        next unless $ppid == $master;
        open my $st, '<', "/proc/$pid/status" or next;
        local $/;
        my ($uid) = <$st> =~ /^Uid:\s+(\d+)/m;
        push @uids, $uid;
    }
    return @uids;
}

SKIP: {
    skip "the other user's view needs root (runuser)", 1 unless $as_root;

    # 1. PostgreSQL

    my ($pg_port) = $dsn =~ /port=(\d+)/;
    my ($db) = $dsn =~ /dbname=(\S+)/;
    unlike($dsn, qr/\bpassword=/, "the conninfo holds no password");
    my ($passfile) = $dsn =~ /\bpassfile=(\S+)/;
    ok($passfile, "the conninfo names a passfile");
    my ($mode, $owner) = mode_owner($passfile // '');
    is($mode, '0600', "the passfile is mode 0600");
    is($owner, $ENV{TEST_NGINX_WORKER_USER} || 'presence',
       "owned by the workers' user");

    for my $user (qw(presence postgres)) {
        isnt(as_other('psql', '-X', '-w', '-c', 'SELECT 1',
                      "host=127.0.0.1 port=$pg_port dbname=$db user=$user"),
             0, "$other cannot log in as $user over TCP without a password");
        isnt(as_other('psql', '-X', '-w', '-c', 'SELECT 1',
                      "host=127.0.0.1 port=$pg_port dbname=$db user=$user "
                      . "password=presence"),
             0, "nor with the old fixed password");
    }
    my $sockdir = $ENV{PRESENCE_PG_SOCKET_DIR} // '';
    ok(-S "$sockdir/.s.PGSQL.$pg_port", "PostgreSQL's socket is in $sockdir");
    unlike($sockdir, qr{^/tmp/}, "not in a predictable /tmp folder");
    isnt(as_other('psql', '-X', '-w', '-c', 'SELECT 1',
                  "host=$sockdir port=$pg_port dbname=$db user=postgres"),
         0, "$other cannot reach the unix socket");
    ($mode) = mode_owner($sockdir);
    is($mode, '0700', "its folder is private");
    my $hba = `cat '$sockdir/data/pg_hba.conf'`;
    my @rules = grep { /\S/ && !/^\s*#/ } split /\n/, $hba;
    ok(@rules && !grep({ /\btrust\b/ } @rules), "pg_hba.conf: no trust")
        or diag($hba);
    ok(!grep({ !/scram-sha-256\s*$/ } @rules), "pg_hba.conf: scram only")
        or diag(join "\n", @rules);
    is(`psql -X -At -c 'SELECT current_user' '$dsn' 2>&1`, "presence\n",
       "with the passfile it connects");

    # 2. Redis

    like(`runuser -u $other -- env -u REDISCLI_AUTH redis-cli -p $redis_port ping 2>&1`,
         qr/NOAUTH/, "${other}'s Redis command is refused without the password");
    like(`runuser -u $other -- env -u REDISCLI_AUTH redis-cli -p $redis_port --no-auth-warning -a presence ping 2>&1`,
         qr/WRONGPASS|invalid|NOAUTH/i, "and with a guessed one");
    ok(length($ENV{TEST_NGINX_REDIS_PASSWORD} // '') >= 32,
       "make test's Redis has a random password");
    my $pw = $ENV{TEST_NGINX_REDIS_PASSWORD} // '';
    my @ps = grep { /redis-server/ } `ps -eo args`;
    ok(@ps && !grep({ length $pw && /\Q$pw\E/ } @ps),
       "the password is on no command line");

    # 3. the tests' nginx: workers not root, sockets private

    my $dir = "$root/node";
    render_node(dir => $dir, port => $P, pg_dsn => $dsn,
                redis_port => $redis_port);
    nginx_start($dir, $P);
    my ($master) = slurp("$dir/nginx.pid") =~ /(\d+)/;
    my @uids = worker_uids($master);
    ok(@uids && !grep({ $_ == 0 } @uids), "the tests' workers are not root")
        or diag("uids: @uids");
    my ($status) = unix_get("$dir/metrics.sock", '/healthz');
    is($status, 200, "the node's unix socket answers its master's user");
    # (503 until nchan's Redis connection is up)
    my $r;
    for (1 .. 60) {
        $r = $http->get("http://127.0.0.1:$P/v1/events?ids=2",
                        { headers => { Accept => 'text/event-stream' } });
        last if $r->{status} != 503;
        Time::HiRes::sleep(0.05);
    }
    is($r->{status}, 401,
       "the event stream's check reaches the check's unix socket (401)")
        or diag($r->{content});
    isnt(as_other('curl', '-s', '-o', '/dev/null', '--max-time', '3',
                  '--unix-socket', "$dir/metrics.sock", 'http://x/healthz'),
         0, "$other cannot connect to the node's unix socket");
    isnt(as_other('curl', '-s', '-o', '/dev/null', '--max-time', '3',
                  '--unix-socket', "$dir/publish.sock",
                  '-d', '{}', 'http://x/internal/publish/presence.1'),
         0, "nor to the publisher's");
    nginx_stop($dir);
    my $crashes = () = slurp("$dir/error.log") =~ /exited on signal/g;
    is($crashes, 0, "no worker crashed");
}

# 4. make run from a copy of the checkout in a private home folder, on
# ports of this test

SKIP: {
    skip "make run as root from a private home", 1 unless $as_root;

    my $home = File::Temp::tempdir("presence-t062-XXXXXX",
                                   DIR => $ENV{HOME} || '/root',
                                   CLEANUP => 0);
    chmod 0700, $home;
    my $co = "$home/checkout";
    mkdir $co or die "$co: $!";
    # the tracked files and the build (so nothing is compiled again)
    system("git ls-files -z | xargs -0 cp --parents -t '$co' 2>/dev/null") == 0
        or system("tar cf - --exclude=./.run --exclude=./build --exclude='./t/servroot*' . "
                  . "| tar xf - -C '$co'") == 0
        or die "copy: $?";
    system('cp', '-a', 'build', "$co/build") == 0 or die "copy build: $?";
    system('chmod', '-R', 'go-rwx', $co);

    my $port = $P + 10;
    local %ENV = (%ENV, PRESENCE_PORT => $port, PRESENCE_PG_PORT => $P + 11,
                  PRESENCE_REDIS_PORT => $P + 12);
    delete @ENV{qw(PRESENCE_PG_DB PRESENCE_KAFKA_DIR REDISCLI_AUTH)};

    my $out = `cd '$co' && util/run.sh 2>&1`;
    is($?, 0, "make run works from $co (mode 0700)") or diag($out);
    like($out, qr{POST /v1/heartbeat as user 1: 204}, "its first heartbeat");

    my %env = map { /^export (\w+)=(.*)$/ ? ($1, $2) : () }
              split /\n/, `cd '$co' && util/services.sh env`;
    s/\\(.)/$1/g for values %env;
    my $run = $env{PRESENCE_RUN_DIR} // '';
    unlike($run, qr{^\Q$co\E}, "its runtime folder is outside the checkout");
    my ($mode, $owner) = mode_owner($run);
    is("$mode $owner", '0700 presence',
       "the runtime folder: 0700, the workers' user's");
    ($mode, $owner) = mode_owner("$run/secret");
    is($mode, '0600', "the tokens' key is mode 0600");

    my ($master) = (eval { slurp("$run/logs/nginx.pid") } // '') =~ /(\d+)/;
    my @uids = worker_uids($master // 0);
    my $uid = getpwnam('presence');
    ok(@uids && !grep({ $_ != $uid } @uids),
       "make run's workers run as presence") or diag("uids: @uids");
    like(slurp("$run/nginx.conf"), qr/^user\s+presence;/m, "user presence;");

    my $url = "http://127.0.0.1:$port";
    my $r = $http->get("$url/");
    ok($r->{status} == 200 && $r->{content} =~ /<html/i, "the demo page")
        or diag("$r->{status} $r->{content}");

    isnt(as_other('curl', '-s', '-o', '/dev/null', '--max-time', '3',
                  '--unix-socket', "$run/publish.sock", '-d', '{}',
                  'http://x/internal/publish/presence.1'),
         0, "$other cannot reach make run's publisher socket");

    # an event stream: a subscribes to b, b comes online
    my @u;
    for my $name ("t062a$$", "t062b$$") {
        my $res = $http->post("$url/v1/users",
                              { content => qq({"name":"$name"}) });
        my ($id) = $res->{content} =~ /"id":(\d+)/;
        my ($token) = $res->{content} =~ /"token":"([^"]+)"/;
        push @u, [$id, $token];
    }
    ok($u[0][1] && $u[1][1], "two users signed up") or diag(join ' ', map { $_->[0] // '' } @u);
    my $sub = $http->request('PUT', "$url/v1/subscriptions/$u[1][0]",
        { headers => { Authorization => "Bearer $u[0][1]" } });
    like($sub->{status}, qr/^20[01]$/, "a subscribes to b");

    my $q = stream_query($url, $u[0][1]);
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 3);
    print $s "GET /v1/events?ids=$u[1][0]&$q HTTP/1.1\r\nHost: x\r\n"
           . "Accept: text/event-stream\r\n\r\n";
    my $got = '';
    my $end = Time::HiRes::time() + 5;
    my $beat = 0;
    while (Time::HiRes::time() < $end) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        if (select($rin, undef, undef, 0.1)) {
            sysread($s, $got, 65536, length $got) or last;
        }
        if (!$beat && $got =~ /^HTTP\/1\.1 200/ && $got =~ /\r\n\r\n/) {
            $http->post("$url/v1/heartbeat",
                        { headers => { Authorization => "Bearer $u[1][1]" } });
            $beat = 1;
        }
        last if $got =~ /"id":$u[1][0],"status":"online"/;
    }
    like($got, qr/"id":$u[1][0],"status":"online"/,
         "the stream carries b's online event") or diag($got);
    close $s;

    $out = `cd '$co' && util/stop.sh 2>&1`;
    is($?, 0, "make stop") or diag($out);
    my $crashes = () = (eval { slurp("$run/logs/error.log") } // '')
                       =~ /exited on signal/g;
    is($crashes, 0, "no worker crashed");

    # the copy's private folders go with it
    my $base = $run =~ s{/run$}{}r;
    File::Path::remove_tree($base) if $base =~ m{^/var/tmp/presence-\w+$};
    File::Path::remove_tree($home);
}

done_testing();
