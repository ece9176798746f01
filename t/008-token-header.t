# A token is HS256 only: a token whose header part is empty has no "alg"
# and is refused, also as the first token a worker sees (its cache of the
# last verified header starts empty).

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

no_shuffle();

run_tests();

__DATA__

=== TEST 1: a signed token with an empty header part (".payload.sig") is 401, first and after a good token
--- config
    # api
--- request eval
["POST /v1/heartbeat", "GET /v1/status/7", "POST /v1/heartbeat",
 "POST /v1/heartbeat", "GET /v1/status/8"]
--- more_headers eval
[bearer(7, header => ''), bearer(7, header => ''), bearer(8),
 bearer(7, header => ''), bearer(8, header => '')]
--- error_code eval
[401, 401, 204, 401, 401]
--- response_headers eval
[("WWW-Authenticate: Bearer") x 2, "", ("WWW-Authenticate: Bearer") x 2]
--- response_body_like eval
[(error_like('unauthorized')) x 2, qr/^$/, (error_like('unauthorized')) x 2]
