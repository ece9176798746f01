# conf/nginx.conf limits, per client address, what costs the service
# without a login or in bulk (issue 10, item 2): sign-ups (POST /v1/users),
# searches (GET /v1/users?q=) and event-stream opens (a rate with a burst)
# and open streams (limit_conn).  Past a limit: 429 with the API's JSON
# error, code "unavailable", and Retry-After; other requests and other
# addresses are not touched.  conf/nginx.conf rendered as util/run.sh
# does, really started.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Cwd ();
use HTTP::Tiny ();
use IO::Socket::INET ();
use Time::HiRes ();
use PresenceTest qw(token error_like psql);
use PresenceDeploy;
use PresenceStores qw(stream_query);

my $P = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-limits';
my $url = "http://127.0.0.1:$P";

system('rm', '-rf', $root);
psql("DELETE FROM users WHERE user_name LIKE 't063-%';");
render_conf(dir => $root, port => $P, pg_dsn => $PresenceTest::PG_DSN);
nginx_start($root, $P);

my $http = HTTP::Tiny->new(timeout => 5, keep_alive => 0);
# the same from another client address (127.0.0.2 reaches 127.0.0.1)
my $other = HTTP::Tiny->new(timeout => 5, keep_alive => 0,
                            local_address => '127.0.0.2');

sub limited_ok {
    my ($r, $what) = @_;
    is($r->{status}, 429, "$what: 429");
    like($r->{content} // '', error_like('unavailable'),
         "$what: the API's JSON error, code unavailable");
    like($r->{headers}{'content-type'} // '', qr{^application/json},
         "$what: application/json");
    is($r->{headers}{'retry-after'}, 1, "$what: Retry-After");
}

# 1. sign-ups: a burst from one address

{
    my (@codes, $last);
    for my $i (1 .. 30) {
        my $r = $http->post("$url/v1/users",
                            { content => qq({"name":"t063-$$-$i"}) });
        push @codes, $r->{status};
        $last = $r if $r->{status} == 429;
    }
    my $created = grep { $_ == 201 } @codes;
    my $limited = grep { $_ == 429 } @codes;
    ok($created >= 1 && $created <= 12,
       "a burst of 30 sign-ups: at most rate + burst are created ($created)")
        or diag("@codes");
    is($created + $limited, 30, "the others are 429") or diag("@codes");
    limited_ok($last // {}, 'a sign-up past the limit');

    my $r = $other->post("$url/v1/users",
                         { content => qq({"name":"t063-$$-other"}) });
    is($r->{status}, 201, "another address still signs up")
        or diag($r->{content});

    my $n = () = slurp("$root/error.log") =~ /limiting requests.*zone "presence_signup"/g;
    ok($n >= 1, "the error log says which zone limited");
}

# 2. searches, and what is not limited

{
    my $auth = { headers => { Authorization => 'Bearer ' . token(7) } };
    my (@codes, $last);
    for (1 .. 60) {
        my $r = $http->get("$url/v1/users?q=t063", $auth);
        push @codes, $r->{status};
        $last = $r if $r->{status} == 429;
    }
    my $ok = grep { $_ == 200 } @codes;
    my $limited = grep { $_ == 429 } @codes;
    ok($limited > 0 && $ok >= 20, "60 searches at once: the burst answers, "
       . "the rest is 429 ($ok, $limited)") or diag("@codes");
    limited_ok($last // {}, 'a search past the limit');

    my @other = map { $http->get("$url/v1/users/1", $auth)->{status} } 1 .. 40;
    ok(!grep({ $_ == 429 } @other), "GET /v1/users/{id} is not limited")
        or diag("@other");
    @other = map { $http->post("$url/v1/heartbeat", $auth)->{status} } 1 .. 40;
    ok(!grep({ $_ == 429 } @other), "nor heartbeats") or diag("@other");
}

# 3. event-stream opens (bad credentials: each open answers at once)

{
    my (@codes, $last);
    for (1 .. 60) {
        my $r = $http->get("$url/v1/events?ids=2&ticket=forged",
                           { headers => { Accept => 'text/event-stream' } });
        push @codes, $r->{status};
        $last = $r if $r->{status} == 429;
    }
    my $limited = grep { $_ == 429 } @codes;
    ok($limited > 0 && $limited < 60,
       "60 stream opens at once: the burst is checked, the rest is 429 ($limited)")
        or diag("@codes");
    limited_ok($last // {}, 'a stream open past the limit');
}

# 4. open streams at once, per address: limit_conn (the opens spread out
# under their rate); real streams of a user subscribed to another

{
    my ($max) = slurp("$root/nginx.conf")
                =~ /limit_conn\s+presence_stream_conns\s+(\d+);/;
    ok($max, "limit_conn on the streams ($max)");
    psql("DELETE FROM users WHERE user_id IN (906301, 906302);\n"
         . "INSERT INTO users (user_id, user_name) VALUES "
         . "(906301, 't063-a-$$'), (906302, 't063-b-$$');\n"
         . "INSERT INTO users_subscribers (user_id, user_id_t) "
         . "VALUES (906301, 906302);");
    Time::HiRes::sleep(4);      # the opens' bucket drains
    my (@s, @status);
    for my $i (1 .. $max + 1) {
        my $q = stream_query($url, token(906301));
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$P",
                                      Timeout => 3) or last;
        print $s "GET /v1/events?ids=906302&$q HTTP/1.1\r\nHost: x\r\n"
               . "Accept: text/event-stream\r\n\r\n";
        my $head = '';
        my $end = Time::HiRes::time() + 3;
        while ($head !~ /\r\n\r\n/ && Time::HiRes::time() < $end) {
            my $rin = '';
            vec($rin, fileno($s), 1) = 1;
            select($rin, undef, undef, 0.1) or next;
            sysread($s, $head, 4096, length $head) or last;
        }
        my ($code) = $head =~ m{^HTTP/1\.1 (\d+)};
        push @status, $code // 0;
        push @s, $s;
        Time::HiRes::sleep(0.22);
    }
    my $open = grep { $_ == 200 } @status;
    is($open, $max, "$max streams open at once from one address")
        or diag("@status");
    is($status[-1], 429, "the next one is 429") or diag("@status");
    close $_ for @s;
}

nginx_stop($root);
my $log = slurp("$root/error.log");
my $crashes = () = $log =~ /exited on signal/g;
is($crashes, 0, "no worker crashed");
psql("DELETE FROM users WHERE user_name LIKE 't063-%';");

done_testing();
