# Clients that vanish while their query is in flight: the answer, when it
# comes, must touch nothing of theirs (make test runs this file under
# AddressSanitizer too).  The users table is locked meanwhile, so the
# queries wait in PostgreSQL well past the clients' patience.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

our $LOCK_AND_ABANDON = <<'PERL';
pg_reset(users => [[1001, 'alice'], [1002, 'bob']], subs => [[1002, 1001]]);

# hold a lock on users for 1.5 s in the background
my $dsn = $PresenceTest::PG_DSN;
my $locker = fork();
if ($locker == 0) {
    exec 'psql', '-q', '-X', $dsn, '-c',
         'BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE; '
         . 'SELECT pg_sleep(1.5); COMMIT;';
}
select undef, undef, undef, 0.3;

my $port = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
my $tok = PresenceTest::token(1002);
my @pids;
for my $req (['-X', 'POST', '--data-binary', '{"name":"carol"}', '/v1/users'],
             ['-H', "Authorization: Bearer $tok", '/v1/users/1001'],
             ['-H', "Authorization: Bearer $tok", '/v1/users?q=al'],
             ['-H', "Authorization: Bearer $tok", '-X', 'PUT', '/v1/subscriptions/1001'],
             ['-H', "Authorization: Bearer $tok", '/v1/status/1001'])
{
    for (1 .. 4) {
        my @args = @$req;
        my $path = pop @args;
        my $pid = fork();
        if ($pid == 0) {
            exec 'curl', '-s', '-o', '/dev/null', '--max-time', '0.2', @args,
                 "http://127.0.0.1:$port$path";
        }
        push @pids, $pid;
    }
}
waitpid $_, 0 for @pids;
waitpid $locker, 0;
select undef, undef, undef, 0.5;
PERL

no_shuffle();
run_tests();

__DATA__

=== TEST 1: twenty clients gone mid-query; nginx answers the next ones
--- config
    # pg api
--- init eval: $::LOCK_AND_ABANDON
--- request eval
["GET /v1/users/1001", "GET /v1/users?q=carol", "GET /v1/status/1001"]
--- more_headers eval
bearer(1002)
--- error_code eval
[200, 200, 200]
--- response_body_like eval
[qr/"name":"alice"/, qr/^\{"users":\[\{"id":\d+,"name":"carol","subscribed":false\}\]\}$/,
 qr/"id":1001/]
--- no_error_log
[alert]
[crit]
[emerg]
AddressSanitizer
