# Bad tokens, bad ids and wrong methods get the errors of API.md.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: no token, not a bearer token
--- config
    # api
--- request eval
["POST /v1/heartbeat", "POST /v1/heartbeat", "GET /v1/status/7"]
--- more_headers eval
["", "Authorization: Basic Zm9vOmJhcg==", "Authorization: Bearer"]
--- error_code eval
[401, 401, 401]
--- response_headers eval
["WWW-Authenticate: Bearer", "WWW-Authenticate: Bearer", "WWW-Authenticate: Bearer"]
--- response_body_like eval
[(error_like("unauthorized")) x 3]



=== TEST 2: wrong secret, tampered payload, expired, not yet valid, alg none
--- config
    # api
--- request eval
[("POST /v1/heartbeat") x 9]
--- more_headers eval
my $good = PresenceTest::token(7);
my ($h, $p, $s) = split /\./, $good;
my ($h2, $p2) = split /\./, PresenceTest::token(8);
[bearer(7, secret => "another-secret-0123456789"),
 "Authorization: Bearer $h.$p2.$s",
 bearer(7, exp => time() - 10),
 bearer(7, nbf => time() + 3600),
 bearer(7, alg => "none"),
 "Authorization: Bearer $h.$p.",
 "Authorization: Bearer $h.$p",
 "Authorization: Bearer " . ("a" x 5000),
 "Authorization: Bearer $h.$p.$s" . "x"]
--- error_code eval
[(401) x 9]
--- response_body_like eval
[(error_like("unauthorized")) x 9]



=== TEST 3: subjects that are not user ids
--- config
    # api
--- request eval
[("POST /v1/heartbeat") x 7]
--- more_headers eval
[bearer(0), bearer(-1), bearer("abc"), bearer("2147483648"), bearer("07"),
 bearer(7, sub => 7), bearer(7, payload => '{"exp":9999999999}')]
--- error_code eval
[(401) x 7]



=== TEST 4: a valid token with a future exp, and the largest id, are accepted
--- config
    # api
--- request eval
["POST /v1/heartbeat", "GET /v1/status/7", "POST /v1/heartbeat"]
--- more_headers eval
[bearer(7, exp => time() + 3600), bearer(7, exp => time() + 3600),
 bearer(2147483647)]
--- error_code eval
[204, 200, 204]



=== TEST 5: bad ids in the path are 400
--- config
    # api
--- request eval
["GET /v1/status/0", "GET /v1/status/-1", "GET /v1/status/abc",
 "GET /v1/status/99999999999", "GET /v1/status/", "GET /v1/status/2147483648",
 "GET /v1/status/7/x", "GET /v1/status/7%2C8", "GET /v1/status/+7",
 "GET /v1/status/007"]
--- more_headers eval
bearer(7)
--- error_code eval
[(400) x 10]
--- response_body_like eval
[(error_like("bad_request")) x 10]



=== TEST 6: bad id lists are 400, 1000 ids are fine, 1001 are not
--- config
    # api
--- request eval
["GET /v1/status?ids=", "GET /v1/status", "GET /v1/status?ids=1,,2",
 "GET /v1/status?ids=1,", "GET /v1/status?ids=a", "GET /v1/status?ids=0",
 "GET /v1/status?ids=" . CORE::join(",", 1 .. 1001),
 "GET /v1/status?ids=" . CORE::join(",", 1 .. 1000),
 "GET /v1/status?ids=5%2C7"]
--- more_headers eval
bearer(7)
--- error_code eval
[400, 400, 400, 400, 400, 400, 400, 200, 200]
--- response_body_like eval
[(qr/"code":"bad_request"/) x 7, qr/^\{"statuses":\[\{"id":1,"error":"not_subscribed"\},.*\{"id":1000,"error":"not_subscribed"\}\]\}$/,
 qr/^\{"statuses":\[\{"id":5,"error":"not_subscribed"\},\{"id":7,"status":"offline","last_seen":null,"seq":0\}\]\}$/]



=== TEST 7: wrong methods are 405 with Allow
--- config
    # api
--- request eval
["GET /v1/heartbeat", "PUT /v1/heartbeat\n{}", "DELETE /v1/status/7",
 "POST /v1/status\n{}", "DELETE /v1/status", "POST /metrics"]
--- more_headers eval
bearer(7)
--- error_code eval
[405, 405, 405, 405, 405, 405]
--- response_headers eval
["Allow: POST", "Allow: POST", "Allow: GET, HEAD", "Allow: GET, HEAD, PUT",
 "Allow: GET, HEAD, PUT", "Allow: GET, HEAD"]
--- response_body_like eval
[(error_like("method_not_allowed")) x 6]



=== TEST 8: unknown paths under a handler's prefix are 404
--- config
    # api
--- request
GET /v1/statuses
--- more_headers eval
bearer(7)
--- error_code: 404
--- response_body_like: "code":"not_found"



=== TEST 9: presence_identity takes the caller from a variable
--- config
    location = /v1/heartbeat {
        presence_identity $http_x_user_id;
        presence_heartbeat;
    }
    location /v1/status {
        presence_identity $http_x_user_id;
        presence_status;
    }
--- request eval
["POST /v1/heartbeat", "GET /v1/status/12", "POST /v1/heartbeat",
 "POST /v1/heartbeat"]
--- more_headers eval
["X-User-Id: 12", "X-User-Id: 12", "X-User-Id: 12abc", ""]
--- error_code eval
[204, 200, 401, 401]
--- response_body_like eval
[qr/^$/, qr/^\{"id":12,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/"unauthorized"/, qr/"unauthorized"/]



=== TEST 10: the identity set nearest to the location wins
--- http_config
    presence_zone name=presence size=4m;
    presence_identity $http_x_user_id;
--- config
    location = /v1/heartbeat {
        presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
        presence_heartbeat;
    }
--- request eval
["POST /v1/heartbeat", "POST /v1/heartbeat"]
--- more_headers eval
["X-User-Id: 12", bearer(12)]
--- error_code eval
[401, 204]



=== TEST 11: a secret from a file, trailing newline ignored
--- http_config
    presence_zone name=presence size=4m;
    presence_auth_secret_file ../html/secret;
--- config
    # api
--- user_files eval
">>> secret\n$PresenceTest::SECRET\n"
--- request
POST /v1/heartbeat
--- more_headers eval
bearer(7)
--- error_code: 204
