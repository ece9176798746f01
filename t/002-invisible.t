# PUT /v1/status: appearing offline (invisible) and back online.  Going
# invisible while offline changes no visible status but the durable flag
# (issue 10 item 5): its seq moves by one, as for every change, so the
# stores are written, and no event is published.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: invisible while heartbeats go on; online again with a new seq
--- config
    # api
--- request eval
["POST /v1/heartbeat",
 "PUT /v1/status\n{\"status\": \"offline\"}",
 "POST /v1/heartbeat",
 "GET /v1/status/7",
 "PUT /v1/status\n{\"status\": \"online\"}",
 "GET /v1/status/7"]
--- more_headers eval
bearer(7)
--- error_code eval
[204, 200, 204, 200, 200, 200]
--- response_body_like eval
[qr/^$/,
 qr/^\{"id":7,"status":"offline","last_seen":(\d{13})(?{ $::hidden = $^N }),"seq":2\}$/,
 qr/^$/,
 qr/^\{"id":7,"status":"offline","last_seen":(??{ $::hidden }),"seq":2\}$/,
 qr/^\{"id":7,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["default"\]\}$/,
 qr/^\{"id":7,"status":"online","last_seen":\d{13},"seq":3,"activity":"active","devices":\["default"\]\}$/]



=== TEST 2: heartbeats of an invisible user do not make it online, even after a timeout
--- config
    # api
--- request eval
["PUT /v1/status\n{\"status\":\"offline\"}", pause(1.2),
 "POST /v1/heartbeat", "GET /v1/status/7"]
--- more_headers eval
bearer(7)
--- error_code eval
[200, 204, 204, 200]
--- response_body_like eval
[qr/^\{"id":7,"status":"offline","last_seen":null,"seq":1\}$/, qr/^$/, qr/^$/,
 qr/^\{"id":7,"status":"offline","last_seen":null,"seq":1\}$/]



=== TEST 3: online by hand counts as a heartbeat, and then times out
--- config
    # api
--- request eval
["PUT /v1/status\n{\"status\":\"online\"}", "GET /v1/status/7", pause(1.2),
 "GET /v1/status/7"]
--- more_headers eval
bearer(7)
--- error_code eval
[200, 200, 204, 200]
--- response_body_like eval
[qr/^\{"id":7,"status":"online","last_seen":(\d{13})(?{ $::on = $^N }),"seq":1,"activity":"active","devices":\["default"\]\}$/,
 qr/"status":"online"/, qr/^$/,
 qr/^\{"id":7,"status":"offline","last_seen":(??{ $::on }),"seq":2\}$/]



=== TEST 4: setting the status one already has changes nothing
--- config
    # api
--- request eval
["POST /v1/heartbeat", "PUT /v1/status\n{\"status\":\"online\"}",
 "PUT /v1/status\n{\"status\":\"offline\"}",
 "PUT /v1/status\n{\"status\":\"offline\"}"]
--- more_headers eval
bearer(7)
--- error_code eval
[204, 200, 200, 200]
--- response_body_like eval
[qr/^$/, qr/"status":"online".*"seq":1,"activity":"active","devices":\["default"\]\}$/, qr/"status":"offline".*"seq":2\}$/,
 qr/"status":"offline".*"seq":2\}$/]



=== TEST 5: bodies that are not {"status": "online"|"offline"} are 400
--- config
    # api
--- request eval
["PUT /v1/status\n{\"status\":\"away\"}",
 "PUT /v1/status\n{\"status\":1}",
 "PUT /v1/status\n{\"state\":\"online\"}",
 "PUT /v1/status\n[\"online\"]",
 "PUT /v1/status\n{\"status\":\"online\"",
 "PUT /v1/status\n{\"status\":\"online\",\"status\":\"offline\"}",
 "PUT /v1/status\n\"online\"",
 "PUT /v1/status\n{\"status\":\"onl\\u0000ine\"}",
 "PUT /v1/status\n{\"status\":\"\xff\xfe\"}",
 "PUT /v1/status"]
--- more_headers eval
bearer(7)
--- error_code eval
[400, 400, 400, 400, 400, 400, 400, 400, 400, 400]
--- response_body_like eval
[(error_like("bad_request")) x 10]



=== TEST 6: a body over 4 KiB is 413, with or without a length
--- config
    # api
--- request eval
["PUT /v1/status\n{\"status\":\"online\",\"pad\":\"" . ("x" x 5000) . "\"}",
 "PUT /v1/status\n" . do { my $b = "{\"status\":\"online\",\"pad\":\""
     . ("x" x 100000) . "\"}"; sprintf("%x\r\n%s\r\n0\r\n\r\n", length $b, $b) }]
--- more_headers eval
[bearer(7), bearer(7) . "\nTransfer-Encoding: chunked"]
--- error_code eval
[413, 413]
--- response_body_like eval
[error_like("payload_too_large"),
 error_like("payload_too_large")]



=== TEST 7: unknown fields are ignored; unicode in them is fine
--- config
    # api
--- request
PUT /v1/status
{"status": "online", "note": "en ligne \u00e9 \ud83d\ude00 😀"}
--- more_headers eval
bearer(7)
--- error_code: 200
--- response_body_like: ^\{"id":7,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$
