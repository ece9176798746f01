# Users in PostgreSQL: create, read, search.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: create a user: 201 with id, name, created_at and a working token
--- config
    # pg api
--- init
pg_reset();
--- request eval
["POST /v1/users\n{\"name\": \"alice\"}", "GET /v1/users/100001"]
--- more_headers eval
["Content-Type: application/json", bearer(100001)]
--- error_code eval
[201, 200]
--- response_body_like eval
[qr/^\{"id":100001,"name":"alice","created_at":(\d{13}),"token":"[\w-]+\.[\w-]+\.[\w-]{43}"\}$/,
 qr/^\{"id":100001,"name":"alice","created_at":\d{13},"status":"offline","last_seen":null\}$/]



=== TEST 2: the token handed out is the user's: its heartbeat works
--- config
    # pg api
--- init
pg_reset();
--- request eval
["POST /v1/users\n{\"name\": \"bob\"}"]
--- error_code: 201
--- response_body_like: "id":100001,"name":"bob",.*"token":"[^"]+"



=== TEST 3: a taken name is 409, case-insensitively
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice']]);
--- request eval
["POST /v1/users\n{\"name\": \"alice\"}", "POST /v1/users\n{\"name\": \"ALICE\"}",
 "POST /v1/users\n{\"name\": \"Alice\"}", "POST /v1/users\n{\"name\": \"alice2\"}"]
--- error_code eval
[409, 409, 409, 201]
--- response_body_like eval
[(error_like("conflict")) x 3, qr/"name":"alice2"/]



=== TEST 4: 50 concurrent creates of one name: exactly one 201, 49 409
--- config
    # pg api
--- init
pg_reset();
my $port = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
my @out;
for my $i (1 .. 50) {
    open my $fh, '-|', 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}',
        '-X', 'POST', '--data-binary', '{"name":"zed"}',
        "http://127.0.0.1:$port/v1/users" or die "curl: $!";
    push @out, $fh;
}
my %codes;
$codes{ scalar readline($_) // 'none' }++ for @out;
close $_ for @out;
Test::More::is($codes{201}, 1, "50 concurrent creates: one 201");
Test::More::is($codes{409}, 49, "50 concurrent creates: 49 409");
--- request
GET /v1/users?q=zed
--- more_headers eval
bearer(1)
--- error_code: 200
--- response_body_like: ^\{"users":\[\{"id":\d+,"name":"zed","subscribed":false\}\]\}$



=== TEST 5: quotes, SQL, emoji, 255 characters round-trip
--- config
    # pg api
--- init
pg_reset();
--- request eval
use utf8;
["POST /v1/users\n{\"name\": \"o'brien \\\"q\\\"\"}",
 "POST /v1/users\n{\"name\": \"'; DROP TABLE users; --\"}",
 "POST /v1/users\n{\"name\": \"chat \xf0\x9f\x98\xba \xc3\xa9t\xc3\xa9\"}",
 "POST /v1/users\n{\"name\": \"" . ("\xc3\xa9" x 255) . "\"}",
 "GET /v1/users/100001", "GET /v1/users/100002", "GET /v1/users/100003",
 "GET /v1/users/100004"]
--- more_headers eval
bearer(100001)
--- error_code eval
[201, 201, 201, 201, 200, 200, 200, 200]
--- response_body_like eval
[qr/"name":"o'brien \\"q\\""/, qr/"name":"'; DROP TABLE users; --"/,
 qr/"name":"chat \xf0\x9f\x98\xba \xc3\xa9t\xc3\xa9"/,
 qr/"name":"(\xc3\xa9){255}"/,
 qr/^\{"id":100001,"name":"o'brien \\"q\\"","created_at":\d+,"status":"offline","last_seen":null\}$/,
 qr/^\{"id":100002,"name":"'; DROP TABLE users; --","created_at":\d+\}$/,
 qr/^\{"id":100003,"name":"chat \xf0\x9f\x98\xba \xc3\xa9t\xc3\xa9","created_at":\d+\}$/,
 qr/^\{"id":100004,"name":"(\xc3\xa9){255}","created_at":\d+\}$/]



=== TEST 6: bad names and bodies are 400, big bodies 413, nothing written
--- config
    # pg api
--- init
pg_reset();
--- request eval
["POST /v1/users\n{\"name\": \"\"}",
 "POST /v1/users\n{\"name\": \"" . ("a" x 256) . "\"}",
 "POST /v1/users\n{\"name\": \"tab\\there\"}",
 "POST /v1/users\n{\"name\": \"nul\\u0000\"}",
 "POST /v1/users\n{\"name\": \"c1\\u0085\"}",
 "POST /v1/users\n{\"name\": 12}",
 "POST /v1/users\n{\"nom\": \"x\"}",
 "POST /v1/users\n{\"name\": \"x\"",
 "POST /v1/users\n{\"name\": \"\xff\"}",
 "POST /v1/users\n{\"name\": \"" . ("a" x 5000) . "\"}",
 "GET /v1/users?q=a"]
--- more_headers eval
bearer(1)
--- error_code eval
[400, 400, 400, 400, 400, 400, 400, 400, 400, 413, 200]
--- response_body_like eval
[(qr/"code":"bad_request"/) x 9, qr/"code":"payload_too_large"/,
 qr/^\{"users":\[\]\}$/]



=== TEST 7: GET /v1/users/{id}: 404 when unknown, 400 when not an id, 401 without token
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice']]);
--- request eval
["GET /v1/users/1002", "GET /v1/users/abc", "GET /v1/users/0", "GET /v1/users/1001"]
--- more_headers eval
[bearer(1001), bearer(1001), bearer(1001), ""]
--- error_code eval
[404, 400, 400, 401]
--- response_body_like eval
[qr/"code":"not_found"/, qr/"code":"bad_request"/, qr/"code":"bad_request"/,
 qr/"code":"unauthorized"/]



=== TEST 8: search by substring (3+ characters) or prefix (1-2), case-insensitively, ordered by name, limit, LIKE's wildcards literal
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'Malice'], [1003, 'bob'],
                   [1004, 'ALIBABA'], [1005, 'al_x'], [1006, 'al%y'],
                   [1007, '_under'], [1008, '%pct']]);
--- request eval
["GET /v1/users?q=ali", "GET /v1/users?q=ALI&limit=2", "GET /v1/users?q=_",
 "GET /v1/users?q=%25", "GET /v1/users?q=zzz", "GET /v1/users?q=al_",
 "GET /v1/users?q=al%25", "GET /v1/users?q=MA", "GET /v1/users?q=a"]
--- more_headers eval
bearer(1003)
--- error_code eval
[200, 200, 200, 200, 200, 200, 200, 200, 200]
--- response_body eval
['{"users":[{"id":1004,"name":"ALIBABA","subscribed":false},{"id":1001,"name":"alice","subscribed":false},{"id":1002,"name":"Malice","subscribed":false}]}',
 '{"users":[{"id":1004,"name":"ALIBABA","subscribed":false},{"id":1001,"name":"alice","subscribed":false}]}',
 '{"users":[{"id":1007,"name":"_under","subscribed":false}]}',
 '{"users":[{"id":1008,"name":"%pct","subscribed":false}]}',
 '{"users":[]}',
 '{"users":[{"id":1005,"name":"al_x","subscribed":false}]}',
 '{"users":[{"id":1006,"name":"al%y","subscribed":false}]}',
 '{"users":[{"id":1002,"name":"Malice","subscribed":false}]}',
 '{"users":[{"id":1006,"name":"al%y","subscribed":false},{"id":1005,"name":"al_x","subscribed":false},{"id":1004,"name":"ALIBABA","subscribed":false},{"id":1001,"name":"alice","subscribed":false}]}']



=== TEST 9: search shows status only where subscribed
--- config
    # pg api
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'alina'], [1003, 'bob']],
         subs => [[1003, 1001]]);
--- request eval
["POST /v1/heartbeat", "POST /v1/heartbeat", "GET /v1/users?q=ali"]
--- more_headers eval
[bearer(1001), bearer(1002), bearer(1003)]
--- error_code eval
[204, 204, 200]
--- response_body_like eval
[qr/^$/, qr/^$/,
 qr/^\{"users":\[\{"id":1001,"name":"alice","subscribed":true,"status":"online","last_seen":\d{13}\},\{"id":1002,"name":"alina","subscribed":false\}\]\}$/]



=== TEST 10: bad search parameters
--- config
    # pg api
--- init
pg_reset();
--- request eval
["GET /v1/users", "GET /v1/users?q=", "GET /v1/users?q=a&limit=0",
 "GET /v1/users?q=a&limit=101", "GET /v1/users?q=a&limit=x",
 "GET /v1/users?q=a&limit=100", "DELETE /v1/users"]
--- more_headers eval
bearer(1)
--- error_code eval
[400, 400, 400, 400, 400, 200, 405]
--- response_headers eval
["", "", "", "", "", "", "Allow: GET, HEAD, POST"]
