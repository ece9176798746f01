# The subscription cap under concurrent PUTs of one subscriber, and the
# paginated buddy list, followed cursor by cursor (a plain Test::More
# file: each request depends on the answers before it).  About 5 s.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);
use POSIX ();
use PresenceLoad;

my $CAP = 40;
my $DSN = $ENV{TEST_NGINX_PG_DSN}
    || 'host=127.0.0.1 port=55432 dbname=presence_test user=presence password=presence';

sub sql {
    my ($sql) = @_;
    local $ENV{PGCONNECT_TIMEOUT} = 5;
    my $out = `psql -X -A -t -q -v ON_ERROR_STOP=1 -c "$sql" "$DSN"`;
    die "psql failed on: $sql\n" if $?;
    chomp $out;
    return $out;
}

sub bearer {
    my ($id) = @_;
    my $h = encode_base64url('{"alg":"HS256","typ":"JWT"}');
    my $p = encode_base64url(qq({"sub":"$id"}));
    return ('Authorization' => "Bearer $h.$p."
                               . encode_base64url(hmac_sha256("$h.$p", $SECRET)));
}

# users 1..200, names in an order other than their ids'
sql("TRUNCATE users, users_subscribers RESTART IDENTITY CASCADE; "
    . "INSERT INTO users (user_id, user_name) "
    . "SELECT g, 'n' || lpad(((g * 37) % 211)::text, 3, '0') || '-' || g "
    . "FROM generate_series(1, 200) g;");

start_nginx(<<CONF);
    presence_zone name=presence size=4m;
    presence_heartbeat_timeout 500ms;
    presence_auth_secret $SECRET;
    presence_subscriptions_max $CAP;
    presence_postgres "$DSN" pool=4 timeout=3s;

    server {
        listen 127.0.0.1:$PORT;

        location /v1/status { presence_status; }
        location /v1/subscriptions { presence_subscriptions; }
        location = /metrics { presence_metrics; }
    }
CONF

# -- the cap, raced: user 1 holds CAP - 2, then 20 PUTs at once ---------

for my $round (1 .. 3) {
    sql("DELETE FROM users_subscribers WHERE user_id = 1; "
        . "INSERT INTO users_subscribers (user_id, user_id_t) "
        . "SELECT 1, g FROM generate_series(2, $CAP - 1) g;");

    my @targets = map { 100 + 20 * $round + $_ } 0 .. 19;
    pipe my $go_r, my $go_w or die "pipe: $!";
    my %kids;

    for my $t (@targets) {
        pipe my $r, my $w or die "pipe: $!";
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            close $r;
            close $go_w;
            sysread $go_r, my $x, 1;      # all start together
            my ($code) = http('PUT', "/v1/subscriptions/$t", bearer(1));
            print $w "$code\n";
            close $w;
            POSIX::_exit(0);              # not PresenceLoad's END: nginx stays
        }
        close $w;
        $kids{$pid} = $r;
    }

    close $go_r;
    close $go_w;                          # go

    my %codes;
    for my $pid (keys %kids) {
        my $fh = $kids{$pid};
        my $code = <$fh> // "0\n";
        chomp $code;
        $codes{$code}++;
        waitpid $pid, 0;
    }

    is_deeply(\%codes, { 201 => 2, 409 => 18 },
              "round $round: 20 concurrent PUTs at $CAP - 2: two 201, the rest 409");
    is(sql("SELECT count(*) FROM users_subscribers WHERE user_id = 1"), $CAP,
       "round $round: the subscriber holds exactly the cap");
}

# -- the same race, interleaved for sure: a transaction of psql takes the
# next to last place and holds it uncommitted while the module's PUT for
# the last place waits for the subscriber's row; the PUT must then see
# the committed subscription (a statement whose snapshot predates the
# lock would not, and would go over the cap)

sql("DELETE FROM users_subscribers WHERE user_id = 1; "
    . "INSERT INTO users_subscribers (user_id, user_id_t) "
    . "SELECT 1, g FROM generate_series(2, $CAP) g;");

my $holder = fork // die "fork: $!";
if ($holder == 0) {
    local $ENV{PGCONNECT_TIMEOUT} = 5;
    open my $fh, '|-', 'psql', '-X', '-q', '-o', '/dev/null', $DSN
        or POSIX::_exit(1);
    print $fh "BEGIN; SELECT * FROM presence_subscribe(1, 150, $CAP); "
            . "SELECT pg_sleep(1.5); COMMIT;\n";
    close $fh;
    POSIX::_exit($? ? 1 : 0);
}

# until the holder's row lock is there
wait_for(5, sub {
    sql("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a "
        . "ON a.pid = l.pid WHERE a.query LIKE '%pg_sleep%' "
        . "AND l.locktype = 'transactionid'") > 0
}) or diag('the holder took no lock');

my ($put) = http('PUT', '/v1/subscriptions/151', bearer(1));
waitpid $holder, 0;
is($?, 0, 'the holding transaction committed');
is($put, 409, 'a PUT that waited for the last place is 409 once it is taken');
is(sql("SELECT count(*) FROM users_subscribers WHERE user_id = 1"), $CAP,
   'and the subscriber holds exactly the cap');

# -- pagination: user 2 subscribes to 37 users, pages of 5 ---------------

sql("INSERT INTO users_subscribers (user_id, user_id_t) "
    . "SELECT 2, g FROM generate_series(3, 200, 5) g "
    . "UNION ALL SELECT 2, 1;");

my @want = split /\n/, sql("SELECT u.user_id || ' ' || u.user_name "
                           . "FROM users_subscribers s JOIN users u "
                           . "ON u.user_id = s.user_id_t WHERE s.user_id = 2 "
                           . "ORDER BY u.user_name, u.user_id");
is(scalar @want, 41, '41 subscriptions to list');

my (@got, $pages, $cursor, $bad);
$pages = 0;

for (;;) {
    my $path = '/v1/subscriptions?limit=5'
             . (defined $cursor ? "&cursor=$cursor" : '');
    my ($code, $body) = http('GET', $path, bearer(2));
    $pages++;

    if ($code != 200) {
        $bad = "$code $body";
        last;
    }

    my @page = $body =~ /\{"id":(\d+),"name":"([^"]*)","status"/g;
    while (my ($id, $name) = splice @page, 0, 2) {
        push @got, "$id $name";
    }

    if ($body =~ /,"next":null\}$/) {
        last;
    }

    unless ($body =~ /,"next":"([A-Za-z0-9_-]+)"\}$/) {
        $bad = "no next: $body";
        last;
    }

    $cursor = $1;
    last if $pages > 20;
}

ok(!defined $bad, 'every page is 200 with a next cursor or null')
    or diag($bad);
is_deeply(\@got, \@want, 'each subscription exactly once, in name order');
is($pages, 9, '41 in pages of 5: 9 pages, the last one with next null');

# a page ending exactly at the end: next may be null or lead to an empty page
my ($code, $body) = http('GET', '/v1/subscriptions?limit=41', bearer(2));
like($body, qr/,"next":null\}$/, 'one page of all: next is null');
my $n = () = $body =~ /"id":/g;
is($n, 41, 'and holds all 41');

done_testing();
